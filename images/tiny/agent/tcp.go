package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"syscall"
	"time"
)

// dialTimeout bounds the connect to a guest port: a port nobody answers on must not hold a stream.
// 15 s, not less: a server whose listen backlog is full drops SYNs, and Linux sends them again after
// 1, 3 and 7 s (busybox httpd's backlog is 9: 100 connections at once failed at 5 s).
const dialTimeout = 15 * time.Second

// netCode maps a socket error to an errno-like code the host passes on (PROTOCOL.md, tcp).
func netCode(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.ECONNREFUSED:
			return "ECONNREFUSED"
		case syscall.ECONNRESET:
			return "ECONNRESET"
		case syscall.EPIPE:
			return "EPIPE"
		case syscall.ETIMEDOUT:
			return "ETIMEDOUT"
		case syscall.EHOSTUNREACH:
			return "EHOSTUNREACH"
		case syscall.ENETUNREACH:
			return "ENETUNREACH"
		case syscall.EADDRNOTAVAIL:
			return "EADDRNOTAVAIL"
		case syscall.ECONNABORTED:
			return "ECONNABORTED"
		}
	}
	if errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) {
		return "ETIMEDOUT"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "ETIMEDOUT"
	}
	return "IO"
}

// dialGuest connects to 127.0.0.1:port, then [::1]:port (a server may listen on one only),
// within one deadline; a cancel of the stream stops the attempt.
func dialGuest(st *stream, port int) (*net.TCPConn, error) {
	ctx, stop := context.WithTimeout(context.Background(), dialTimeout)
	defer stop()
	go func() {
		select {
		case <-st.done:
			stop()
		case <-ctx.Done():
		}
	}()
	var d net.Dialer
	p := strconv.Itoa(port)
	var first error
	for _, host := range []string{"127.0.0.1", "::1"} {
		c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, p))
		if err == nil {
			tc := c.(*net.TCPConn)
			// A bounded receive buffer: left to autotune (up to tcp_rmem's 6 MiB) while the stream
			// waits for credit, this hop's buffers took the guest's whole TCP budget (tcp_mem, 19 MiB
			// in a 256 MiB guest) at 100 forwards, and the kernel reset the guest server's sockets.
			_ = tc.SetReadBuffer(guestReadBuffer)
			return tc, nil
		}
		if first == nil {
			first = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, first
}

// guestReadBuffer is the receive buffer of the agent's socket to a guest port: a few DATA frames,
// enough for the stream's pace (its window is 256 KiB of credit, sent as it is read).
const guestReadBuffer = 64 * 1024

// opTCP carries one TCP connection to a guest port (PROTOCOL.md, tcp): DATA 0 from the host is
// written to the socket, what the socket sends goes out as DATA 1, each within its credit; an
// EOF either way is a half-close. END comes once both directions are done, or at the first
// error (the socket then closes).
func opTCP(st *stream, r *request) {
	if r.Port < 1 || r.Port > 65535 {
		st.fail("INVALID", "tcp: port must be 1 to 65535")
		return
	}
	c, err := dialGuest(st, r.Port)
	if err != nil {
		if st.isCancelled() {
			st.fail("CANCELLED", "tcp cancelled")
			return
		}
		st.fail(netCode(err), fmt.Sprintf("tcp: connect to port %d in the guest: %v", r.Port, err))
		return
	}
	// A cancel, or a new session, closes the socket: that unblocks both directions.
	go func() {
		<-st.done
		c.Close()
	}()
	defer c.Close()
	st.opened()
	fromGuest := make(chan error, 1)
	go func() { fromGuest <- tcpToHost(st, c) }()
	toGuest := make(chan error, 1)
	go func() { toGuest <- tcpFromHost(st, c) }()
	var first error
	for left := 2; left > 0; left-- {
		var e error
		select {
		case e = <-fromGuest:
		case e = <-toGuest:
		}
		if e != nil {
			first = e
			break
		}
	}
	switch {
	case st.isCancelled():
		st.fail("CANCELLED", "tcp cancelled")
	case first == errGone:
		// A new session: this stream says nothing more.
	case first != nil:
		st.fail(netCode(first), fmt.Sprintf("tcp: port %d in the guest: %v", r.Port, first))
	default:
		st.end(map[string]any{"ok": true})
	}
}

// tcpToHost sends what the guest's socket says, as DATA 1, then EOF 1 when it half-closes.
func tcpToHost(st *stream, c *net.TCPConn) error {
	buf := make([]byte, chunkSize)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if e := st.data(1, buf[:n]); e != nil {
				return e
			}
		}
		if err == io.EOF {
			st.eof(1)
			return nil
		}
		if err != nil {
			return stopOr(st, err)
		}
	}
}

// tcpFromHost writes the host's DATA 0 to the socket, granting credit as it goes; the host's
// EOF 0 half-closes the socket (the guest's server reads EOF and may still answer).
func tcpFromHost(st *stream, c *net.TCPConn) error {
	st.grant(inputWindow)
	for {
		b, err := st.readInput()
		if err == io.EOF {
			return stopOr(st, c.CloseWrite())
		}
		if err != nil {
			return err
		}
		if _, err := c.Write(b); err != nil {
			return stopOr(st, err)
		}
		st.grant(len(b))
	}
}

// stopOr gives the stream's own stop (cancel, new session) over the socket error it caused.
func stopOr(st *stream, err error) error {
	if err == nil {
		return nil
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if e := st.stopErr(); e != nil {
		return e
	}
	return err
}
