package main

import (
	"encoding/binary"
	"encoding/json"
	"net"
	"testing"
	"time"
)

// testHost plays the host's end of a session over an in-memory connection.
type testHost struct {
	t   *testing.T
	c   net.Conn
	fr  *frameReader
	out chan []byte // one writer keeps the frames in order (net.Pipe writes block)
	s   *session
}

func newTestHost(t *testing.T) *testHost {
	a, b := net.Pipe()
	s := newSession()
	go s.writer(a, func(error) {})
	go func() { _ = s.readLoop(a) }()
	t.Cleanup(func() { s.procs.killAll(); a.Close(); b.Close() })
	h := &testHost{t: t, s: s, c: b, fr: newFrameReader(b), out: make(chan []byte, 64)}
	go func() {
		for buf := range h.out {
			_, _ = b.Write(buf)
		}
	}()
	h.out <- make([]byte, hdrLen+maxPayload) // as a real host does; the agent resyncs
	h.send(tHello, 0, []byte(`{"v":1,"session":"0123456789abcdef0123456789abcdef"}`))
	f := h.next()
	if f.typ != tHelloAck {
		t.Fatalf("want HELLO_ACK, got %d", f.typ)
	}
	return h
}

func (h *testHost) send(typ byte, id uint32, parts ...[]byte) {
	buf, _ := encodeFrame(typ, id, parts...)
	h.out <- append([]byte(nil), buf...)
}

func (h *testHost) next() frame {
	_ = h.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := h.fr.next()
	if err != nil {
		h.t.Fatal(err)
	}
	return f
}

func credit(n uint32) []byte {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], n)
	return b[:]
}

// run opens a stream, grants a window and collects it until its END.
func (h *testHost) run(id uint32, req string, input []byte) (out map[byte]string, end map[string]any) {
	h.send(tOpen, id, []byte(req))
	h.send(tCredit, id, credit(1<<20))
	out = map[byte]string{}
	for {
		f := h.next()
		switch f.typ {
		case tData:
			out[f.payload[0]] += string(f.payload[1:])
		case tCredit:
			if input != nil {
				h.send(tData, id, []byte{0}, input)
				h.send(tEOF, id, []byte{0})
				input = nil
			}
		case tEnd:
			if err := json.Unmarshal(f.payload, &end); err != nil {
				h.t.Fatal(err)
			}
			return out, end
		}
	}
}

func TestSessionExec(t *testing.T) {
	h := newTestHost(t)
	out, end := h.run(1, `{"op":"exec","cmd":["sh","-c","echo out; echo err >&2; exit 3"]}`, nil)
	if out[1] != "out\n" || out[2] != "err\n" || end["exitCode"] != 3.0 {
		t.Fatalf("got %q %v", out, end)
	}
	out, end = h.run(2, `{"op":"exec","cmd":["cat"],"stdin":true}`, []byte("piped"))
	if out[1] != "piped" || end["exitCode"] != 0.0 {
		t.Fatalf("stdin: %q %v", out, end)
	}
	out, end = h.run(3, `{"op":"exec","cmd":["no-such-command-here"]}`, nil)
	if out[2] != "forky-agent: no-such-command-here: not found\n" || end["exitCode"] != 127.0 {
		t.Fatalf("127: %q %v", out, end)
	}
	_, end = h.run(4, `{"op":"exec","cmd":["sleep","5"],"timeoutMs":100}`, nil)
	if end["exitCode"] != 124.0 || end["timedOut"] != true {
		t.Fatalf("timeout: %v", end)
	}
	_, end = h.run(5, `{"op":"nope"}`, nil)
	if end["code"] != "INVALID" {
		t.Fatalf("bad op: %v", end)
	}
	h.send(tPing, 0, []byte("abc"))
	if f := h.next(); f.typ != tPong || string(f.payload) != "abc" {
		t.Fatalf("pong: %+v", f)
	}
}
