package main

import (
	"os"
	"sync"
	"time"
)

// feedInput copies the host's channel-0 bytes to the process, granting credit as it goes.
func feedInput(st *stream, w *os.File, pty bool) {
	if !pty { // a PTY's master is also its output: reap closes it
		defer w.Close()
	}
	// A process that does not read would keep Write blocked for good: once the stream is done
	// its stdin closes; a PTY's master only stops taking input, after a moment for the ^D.
	go func() {
		<-st.done
		if pty {
			_ = w.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		} else {
			w.Close()
		}
	}()
	st.grant(inputWindow)
	for {
		b, err := st.readInput()
		if err != nil {
			// EOF, or the stream gone with its session (stdin closes): a terminal gets ^D.
			if err != errCancelled && pty {
				_, _ = w.Write([]byte{4}) // ^D: a terminal's end of input
			}
			return
		}
		if _, err := w.Write(b); err != nil {
			return
		}
		st.grant(len(b))
	}
}

// collect reads one output channel into the ring and, for a foreground process, to the stream
// (within its credit: a host that stops reading stops the process).
func collect(p *proc, fg *stream, ch byte, f *os.File, wg *sync.WaitGroup) {
	defer wg.Done()
	buf := make([]byte, chunkSize)
	grace := drainGrace
	for {
		// After the exit the grace is spent only in Read, not waiting for the host's credit
		// (the tail would be lost), and not renewed (a chatty background child would hold
		// the END for good).
		draining := p.draining.Load()
		t0 := time.Now()
		if draining {
			_ = f.SetReadDeadline(t0.Add(grace))
		}
		n, err := f.Read(buf)
		if draining {
			grace -= time.Since(t0)
		}
		if n > 0 {
			p.ring.write(ch, buf[:n])
			if fg != nil && fg.data(ch, buf[:n]) != nil {
				fg = nil // the stream stopped: the ring alone gets the rest
			}
		}
		if err != nil {
			return // EOF, EIO (a PTY whose last slave closed) or the drain deadline
		}
	}
}
