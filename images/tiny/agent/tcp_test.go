package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// listen gives a loopback listener and its port (the agent dials 127.0.0.1:port).
func listen(t *testing.T) (net.Listener, int) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, l.Addr().(*net.TCPAddr).Port
}

func endOf(t *testing.T, f frame) map[string]any {
	var end map[string]any
	if err := json.Unmarshal(f.payload, &end); err != nil {
		t.Fatal(err)
	}
	return end
}

// A refused port ends the stream at once with ECONNREFUSED, no OPENED.
func TestTCPRefused(t *testing.T) {
	l, port := listen(t)
	l.Close() // nobody listens there now
	h := newTestHost(t)
	_, end := h.run(1, fmt.Sprintf(`{"op":"tcp","port":%d}`, port), nil)
	if end["ok"] != false || end["code"] != "ECONNREFUSED" {
		t.Fatalf("got %v", end)
	}
	_, end = h.run(2, `{"op":"tcp","port":0}`, nil)
	if end["code"] != "INVALID" {
		t.Fatalf("port 0: %v", end)
	}
}

// Bytes both ways within credit, half-close both ways, END once both are done.
func TestTCPEchoHalfClose(t *testing.T) {
	l, port := listen(t)
	got := make(chan []byte, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c) // until the host's EOF 0 half-closes us
		got <- b
		_, _ = c.Write(append([]byte("echo:"), b...))
		c.(*net.TCPConn).CloseWrite()
		time.Sleep(50 * time.Millisecond)
	}()
	h := newTestHost(t)
	h.send(tOpen, 1, []byte(fmt.Sprintf(`{"op":"tcp","port":%d}`, port)))
	h.send(tCredit, 1, credit(1<<20))
	payload := bytes.Repeat([]byte("x"), 300_000) // more than the agent's input window: needs its top-ups
	sent, out, sawEOF := 0, []byte{}, false
	for {
		f := h.next()
		switch f.typ {
		case tCredit:
			n := int(uint32(f.payload[0])<<24 | uint32(f.payload[1])<<16 | uint32(f.payload[2])<<8 | uint32(f.payload[3]))
			for n > 0 && sent < len(payload) {
				k := n
				if k > 30_000 {
					k = 30_000
				}
				if k > len(payload)-sent {
					k = len(payload) - sent
				}
				h.send(tData, 1, []byte{0}, payload[sent:sent+k])
				sent, n = sent+k, n-k
			}
			if sent == len(payload) {
				h.send(tEOF, 1, []byte{0})
				sent++ // once
			}
		case tData:
			out = append(out, f.payload[1:]...)
		case tEOF:
			sawEOF = f.payload[0] == 1
		case tEnd:
			end := endOf(t, f)
			if end["ok"] != true || !sawEOF {
				t.Fatalf("end %v, eof %v", end, sawEOF)
			}
			if b := <-got; len(b) != len(payload) {
				t.Fatalf("guest got %d bytes", len(b))
			}
			if string(out) != "echo:"+string(payload) {
				t.Fatalf("host got %d bytes", len(out))
			}
			return
		}
	}
}

// A CANCEL closes the guest's socket and ends the stream CANCELLED.
func TestTCPCancelClosesSocket(t *testing.T) {
	l, port := listen(t)
	closed := make(chan struct{})
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, c) // returns when the agent closes its end
		close(closed)
	}()
	h := newTestHost(t)
	h.send(tOpen, 1, []byte(fmt.Sprintf(`{"op":"tcp","port":%d}`, port)))
	h.send(tCredit, 1, credit(1<<20))
	if f := h.next(); f.typ != tOpened {
		t.Fatalf("want OPENED, got %d", f.typ)
	}
	h.send(tCancel, 1)
	for {
		f := h.next()
		if f.typ == tEnd {
			if end := endOf(t, f); end["code"] != "CANCELLED" {
				t.Fatalf("got %v", end)
			}
			break
		}
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("the guest's socket stayed open after CANCEL")
	}
}

// A guest server that resets the connection ends the stream with ECONNRESET.
func TestTCPReset(t *testing.T) {
	l, port := listen(t)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		c.(*net.TCPConn).SetLinger(0) // close with RST
		c.Close()
	}()
	h := newTestHost(t)
	h.send(tOpen, 1, []byte(fmt.Sprintf(`{"op":"tcp","port":%d}`, port)))
	h.send(tCredit, 1, credit(1<<20))
	for {
		f := h.next()
		if f.typ == tCredit {
			h.send(tData, 1, []byte{0}, []byte("hello"))
		}
		if f.typ == tEnd {
			if end := endOf(t, f); end["code"] != "ECONNRESET" && end["code"] != "EPIPE" {
				t.Fatalf("got %v", end)
			}
			return
		}
	}
}
