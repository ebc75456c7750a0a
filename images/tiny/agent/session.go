package main

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// maxStreams: hostd keeps each VM under 64 streams, 256 TCP connections and 16 one-shot calls.
const maxStreams = 512

var helloZeros = make([]byte, hdrLen+maxPayload)

type outFrame struct {
	buf   []byte
	epoch uint64
}

// session owns the port: one writer goroutine serialises every frame; the read loop dispatches.
// A HELLO starts a new epoch; frames queued for an older one are dropped unsent.
type session struct {
	out     chan outFrame
	epoch   atomic.Uint64
	mu      sync.Mutex
	hello   bool
	streams map[uint32]*stream
	procs   *procTable
}

func newSession() *session {
	return &session{out: make(chan outFrame, 64), streams: map[uint32]*stream{}, procs: newProcTable()}
}

// sendFrame never sends a payload the host would take for garbage: an oversized END becomes
// an IO failure, anything else oversized is dropped.
func (s *session) sendFrame(epoch uint64, typ byte, id uint32, parts ...[]byte) {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if n > maxPayload {
		log.Printf("stream %d: frame type %d of %d bytes not sent", id, typ, n)
		if typ != tEnd {
			return
		}
		parts = [][]byte{mustJSON(map[string]any{"ok": false, "code": "IO", "message": "reply too large"})}
	}
	buf, _ := encodeFrame(typ, id, parts...)
	s.out <- outFrame{buf: buf, epoch: epoch}
}

// writer writes frames. Small ones (CREDIT, MSG, END…) are batched while more are queued, so
// they cost no write call of their own; a big one goes out as it is, without a copy.
func (s *session) writer(w io.Writer, onErr func(error)) {
	batch := make([]byte, 0, portWrite)
	flush := func() {
		if len(batch) > 0 {
			if err := writeFull(w, batch); err != nil {
				onErr(err)
			}
			batch = batch[:0]
		}
	}
	for f := range s.out {
		if f.epoch == s.epoch.Load() {
			big := len(f.buf) >= cap(batch)/2
			if big || len(batch)+len(f.buf) > cap(batch) {
				flush() // in order: what is batched goes first
			}
			if big {
				if err := writeFull(w, f.buf); err != nil {
					onErr(err)
				}
			} else {
				batch = append(batch, f.buf...)
			}
		}
		recycle(f.buf)
		if len(s.out) == 0 {
			flush()
		}
	}
}

func writeFull(w io.Writer, b []byte) error {
	for len(b) > 0 {
		n, err := w.Write(b)
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// readLoop dispatches frames until the reader fails.
func (s *session) readLoop(r io.Reader) error {
	fr := newFrameReader(r)
	for {
		f, err := fr.next()
		if err != nil {
			return err
		}
		s.dispatch(f)
	}
}

func (s *session) dispatch(f frame) {
	switch f.typ {
	case tHello:
		s.onHello(f)
		return
	case tPing:
		if len(f.payload) <= 64 {
			s.sendFrame(s.epoch.Load(), tPong, f.id, f.payload)
		}
		return
	}
	s.mu.Lock()
	hello := s.hello
	st := s.streams[f.id]
	s.mu.Unlock()
	if !hello || f.id == 0 {
		return
	}
	if f.typ == tOpen {
		if st == nil {
			s.open(f.id, f.payload)
		}
		return
	}
	if st == nil {
		return // a stream that ended or never was: ignored
	}
	switch f.typ {
	case tData:
		if len(f.payload) > 1 && f.payload[0] == 0 {
			st.pushInput(f.payload[1:])
		}
	case tEOF:
		if len(f.payload) == 1 && f.payload[0] == 0 {
			st.inputEOF()
		}
	case tCredit:
		if len(f.payload) == 4 {
			st.addCredit(binary.BigEndian.Uint32(f.payload))
		}
	case tMsg:
		st.mu.Lock()
		h := st.onMsg
		st.mu.Unlock()
		if h != nil {
			h(f.payload)
		}
	case tCancel:
		st.cancel()
	}
}

func isHex32(s string) bool {
	if len(s) != 32 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// onHello ends every earlier stream silently, kills foreground processes, then answers.
func (s *session) onHello(f frame) {
	var h struct {
		V       int    `json:"v"`
		Session string `json:"session"`
	}
	if f.id != 0 || json.Unmarshal(f.payload, &h) != nil || h.V != 1 || !isHex32(h.Session) {
		return
	}
	s.mu.Lock()
	old := s.streams
	s.streams = map[uint32]*stream{}
	s.hello = true
	epoch := s.epoch.Add(1)
	s.mu.Unlock()
	for _, st := range old {
		// Its goroutine closes files and watches when it sees done; a process it ran goes on
		// as if detached (stdin closed, output to its buffer only, its timeout still holding).
		st.kill()
	}
	// The zeros complete whatever frame an older agent (a snapshot's parent) was writing.
	s.out <- outFrame{buf: helloZeros, epoch: epoch}
	ack := map[string]any{"v": 1, "session": h.Session, "agent": "forky-agent/1", "pid": os.Getpid()}
	s.sendFrame(epoch, tHelloAck, 0, mustJSON(ack))
}

func (s *session) forget(st *stream) {
	s.mu.Lock()
	if s.streams[st.id] == st {
		delete(s.streams, st.id)
	}
	s.mu.Unlock()
}

func (s *session) open(id uint32, payload []byte) {
	s.mu.Lock()
	st := newStream(s, id, s.epoch.Load())
	if len(s.streams) >= maxStreams {
		s.mu.Unlock()
		st.fail("BUSY", fmt.Sprintf("at most %d streams", maxStreams))
		return
	}
	s.streams[id] = st
	s.mu.Unlock()
	go s.run(st, payload)
}

// request holds every op's fields; each op reads the ones it names.
type request struct {
	Op        string            `json:"op"`
	Cmd       []string          `json:"cmd"`
	Env       map[string]string `json:"env"`
	Cwd       string            `json:"cwd"`
	User      json.RawMessage   `json:"user"`
	Stdin     bool              `json:"stdin"`
	TimeoutMs int64             `json:"timeoutMs"`
	Detach    bool              `json:"detach"`
	Pty       *struct {
		Rows uint16 `json:"rows"`
		Cols uint16 `json:"cols"`
	} `json:"pty"`
	Pid       int     `json:"pid"`
	Follow    bool    `json:"follow"`
	Signal    string  `json:"signal"`
	Path      string  `json:"path"`
	Offset    int64   `json:"offset"`
	Length    *int64  `json:"length"`
	Mode      string  `json:"mode"`
	Perm      *uint32 `json:"perm"`
	Parents   bool    `json:"parents"`
	Recursive bool    `json:"recursive"`
	From      string  `json:"from"`
	To        string  `json:"to"`
	Port      int     `json:"port"`
}

func (s *session) run(st *stream, payload []byte) {
	defer func() {
		if r := recover(); r != nil {
			log.Printf("stream %d: internal error: %v\n%s", st.id, r, debug.Stack())
			st.fail("IO", fmt.Sprint("internal error: ", r))
		}
	}()
	var r request
	if err := json.Unmarshal(payload, &r); err != nil {
		st.fail("INVALID", "request: "+err.Error())
		return
	}
	switch r.Op {
	case "exec":
		s.opExec(st, &r)
	case "attach":
		s.opAttach(st, &r)
	case "ps":
		s.opPs(st)
	case "signal":
		s.opSignal(st, &r)
	case "read":
		opRead(st, &r)
	case "write":
		opWrite(st, &r)
	case "list":
		opList(st, &r)
	case "stat":
		opStat(st, &r)
	case "mkdir":
		opMkdir(st, &r)
	case "remove":
		opRemove(st, &r)
	case "rename":
		opRename(st, &r)
	case "watch":
		opWatch(st, &r)
	case "tcp":
		opTCP(st, &r)
	default:
		st.fail("INVALID", fmt.Sprintf("unknown op %q", r.Op))
	}
}

func nowMs() int64 { return time.Now().UnixMilli() }
