package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"sync"
)

// inputWindow is the input credit the agent grants a stream that takes input.
const inputWindow = 256 * 1024

var (
	errGone      = errors.New("stream gone")
	errCancelled = errors.New("stream cancelled")
)

// stream is one OPEN's state. Its work runs in its own goroutine(s); the port reader only
// queues input and credit here, so it never blocks on a stream.
type stream struct {
	s     *session
	id    uint32
	epoch uint64

	mu        sync.Mutex
	cond      *sync.Cond
	credit    int64 // DATA bytes the host lets us send
	gone      bool  // a new session started: send nothing more
	cancelled bool
	ended     bool
	done      chan struct{} // closed on cancel, reset or end
	in        [][]byte
	inBytes   int
	inEOF     bool
	onMsg     func([]byte) // host → agent MSG (resize)
}

func newStream(s *session, id uint32, epoch uint64) *stream {
	st := &stream{s: s, id: id, epoch: epoch, done: make(chan struct{})}
	st.cond = sync.NewCond(&st.mu)
	return st
}

// closeDone must be called with mu held.
func (st *stream) closeDone() {
	select {
	case <-st.done:
	default:
		close(st.done)
	}
	st.in, st.inBytes = nil, 0 // input nobody will read
	st.cond.Broadcast()
}

func (st *stream) cancel() {
	st.mu.Lock()
	st.cancelled = true
	st.closeDone()
	st.mu.Unlock()
}

func (st *stream) kill() {
	st.mu.Lock()
	st.gone = true
	st.closeDone()
	st.mu.Unlock()
}

func (st *stream) isCancelled() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.cancelled
}

func (st *stream) isGone() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.gone || st.ended
}

// stopErr must be called with mu held.
func (st *stream) stopErr() error {
	if st.gone || st.ended {
		return errGone
	}
	if st.cancelled {
		return errCancelled
	}
	return nil
}

func (st *stream) send(typ byte, parts ...[]byte) {
	if st.isGone() {
		return
	}
	st.s.sendFrame(st.epoch, typ, st.id, parts...)
}

// data sends bytes on a channel within the host's credit, waiting for more as needed; it gives
// up (errGone/errCancelled) if the stream stops meanwhile.
func (st *stream) data(ch byte, b []byte) error {
	for len(b) > 0 {
		st.mu.Lock()
		for st.credit <= 0 && st.stopErr() == nil {
			st.cond.Wait()
		}
		if err := st.stopErr(); err != nil {
			st.mu.Unlock()
			return err
		}
		n := len(b)
		if n > chunkSize {
			n = chunkSize
		}
		if int64(n) > st.credit {
			n = int(st.credit)
		}
		st.credit -= int64(n)
		st.mu.Unlock()
		st.s.sendFrame(st.epoch, tData, st.id, []byte{ch}, b[:n])
		b = b[n:]
	}
	return nil
}

func (st *stream) addCredit(n uint32) {
	st.mu.Lock()
	st.credit += int64(n)
	if st.credit > 1<<40 { // a host bug must not overflow us
		st.credit = 1 << 40
	}
	st.cond.Broadcast()
	st.mu.Unlock()
}

// pushInput queues channel-0 bytes; more than the window we granted is dropped (the host
// must not send it).
func (st *stream) pushInput(b []byte) {
	st.mu.Lock()
	if !st.inEOF && st.inBytes+len(b) <= inputWindow {
		st.in = append(st.in, b)
		st.inBytes += len(b)
		st.cond.Broadcast()
	}
	st.mu.Unlock()
}

func (st *stream) inputEOF() {
	st.mu.Lock()
	st.inEOF = true
	st.cond.Broadcast()
	st.mu.Unlock()
}

// readInput returns the next input chunk, io.EOF after the host's EOF 0, or a stop error.
func (st *stream) readInput() ([]byte, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for len(st.in) == 0 && !st.inEOF && st.stopErr() == nil {
		st.cond.Wait()
	}
	if err := st.stopErr(); err != nil {
		return nil, err
	}
	if len(st.in) == 0 {
		return nil, io.EOF
	}
	b := st.in[0]
	st.in[0] = nil
	st.in = st.in[1:]
	st.inBytes -= len(b)
	return b, nil
}

func (st *stream) grant(n int) {
	if n <= 0 {
		return
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], uint32(n))
	st.send(tCredit, b[:])
}

func (st *stream) opened()     { st.send(tOpened) }
func (st *stream) eof(ch byte) { st.send(tEOF, []byte{ch}) }
func (st *stream) msg(v any)   { st.send(tMsg, mustJSON(v)) }
func (st *stream) fail(code, message string) {
	if len(message) > 4096 { // the host takes at most 8192
		message = message[:4096] + "…"
	}
	st.end(map[string]any{"ok": false, "code": code, "message": message})
}

// end sends the END once and forgets the stream.
func (st *stream) end(v any) {
	st.mu.Lock()
	if st.ended || st.gone {
		st.mu.Unlock()
		return
	}
	st.s.sendFrame(st.epoch, tEnd, st.id, mustJSON(v))
	st.ended = true
	st.closeDone()
	st.mu.Unlock()
	st.s.forget(st)
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		b, _ = json.Marshal(map[string]any{"ok": false, "code": "IO", "message": "encode: " + err.Error()})
	}
	return b
}
