package main

import (
	"errors"
	"os"
	"sync"
	"syscall"
	"time"
)

// drainGrace: after a process exits, how long its output is still read. A background child
// that inherited the pipe would otherwise keep the END from coming.
const drainGrace = 250 * time.Millisecond

func (s *session) opExec(st *stream, r *request) {
	if len(r.Cmd) == 0 || r.Cmd[0] == "" || r.TimeoutMs < 0 {
		st.fail("INVALID", "exec: cmd must be a non-empty argv")
		return
	}
	env := mergeEnv(os.Environ(), r.Env)
	cred, userEnv, err := lookupUser(r.User)
	if err != nil {
		st.fail("INVALID", "exec: "+err.Error())
		return
	}
	env = mergeEnv(env, userEnv)
	if r.Pty != nil && envGet(env, "TERM") == "" {
		env = append(env, "TERM=xterm")
	}
	if r.Detach && s.procs.detachedRunning() >= maxDetached {
		st.fail("BUSY", "exec: 64 detached processes are running")
		return
	}
	errCh := byte(2)
	if r.Pty != nil {
		errCh = 1
	}
	path, code := findExecutable(r.Cmd[0], envGet(env, "PATH"), r.Cwd)
	if code != 0 {
		execFailed(st, errCh, r.Cmd[0], code)
		return
	}
	if r.Cwd != "" {
		if fi, err := os.Stat(r.Cwd); err != nil || !fi.IsDir() {
			st.fail(errCodeOr(err, "NOT_DIR"), "exec: cwd "+r.Cwd+" is not a directory")
			return
		}
	}
	p, stdin, master, err := s.startProc(st, r, path, env, cred)
	if err != nil {
		if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.ENOEXEC) || errors.Is(err, syscall.EPERM) {
			execFailed(st, errCh, r.Cmd[0], 126)
			return
		}
		st.fail(errCode(err), "exec: "+err.Error())
		return
	}
	st.opened()
	st.msg(map[string]any{"type": "started", "pid": p.pid})
	if r.Detach {
		st.end(map[string]any{"ok": true, "pid": p.pid})
		return
	}
	if stdin != nil {
		go feedInput(st, stdin, master != nil)
	}
	var timeout <-chan time.Time
	if r.TimeoutMs > 0 {
		if r.TimeoutMs > 1<<40 { // beyond any real run; keeps the Duration from overflowing
			r.TimeoutMs = 1 << 40
		}
		t := time.NewTimer(time.Duration(r.TimeoutMs) * time.Millisecond)
		defer t.Stop()
		timeout = t.C
	}
	stop := st.done
	for waiting := true; waiting; {
		select {
		case <-p.done:
			waiting = false
		case <-timeout:
			p.mu.Lock()
			p.timedOut = !p.exited // one that exited and is draining keeps its own status
			p.mu.Unlock()
			p.kill()
			waiting = false
		case <-stop:
			if st.isGone() && !st.isCancelled() {
				stop = nil // a new session: the process runs on, its timeout still holds
				p.mu.Lock()
				p.orphaned = true // and counts as detached from now on
				p.mu.Unlock()
				continue
			}
			p.mu.Lock()
			p.cancelled = !p.exited
			p.mu.Unlock()
			p.kill()
			waiting = false
		}
	}
	<-p.done
	st.eof(1)
	if master == nil {
		st.eof(2)
	}
	st.end(p.exitResult())
}

// execFailed reports a command that could not run as a shell would: 127 or 126 and one line.
func execFailed(st *stream, ch byte, name string, code int) {
	st.opened()
	what := "not found"
	if code == 126 {
		what = "permission denied"
	}
	if st.data(ch, []byte("forky-agent: "+name+": "+what+"\n")) == errGone {
		return
	}
	st.eof(1)
	if ch == 2 {
		st.eof(2)
	}
	st.end(map[string]any{"ok": true, "exitCode": code, "signal": nil, "timedOut": false, "cancelled": st.isCancelled()})
}

// startProc starts the process in its own group (its own session with a PTY) and the
// goroutines that collect its output and its exit.
func (s *session) startProc(st *stream, r *request, path string, env []string, cred *syscall.Credential) (p *proc, stdin, master *os.File, err error) {
	attr := &syscall.SysProcAttr{Setpgid: true, Credential: cred}
	var files []*os.File
	var outs []*os.File // parent's read ends
	var closeAfter []*os.File
	defer func() {
		for _, f := range closeAfter {
			f.Close()
		}
		if err != nil {
			for _, f := range outs {
				f.Close()
			}
			if stdin != nil {
				stdin.Close()
			}
		}
	}()
	if r.Pty != nil {
		m, sl, e := openPty(r.Pty.Rows, r.Pty.Cols, cred)
		if e != nil {
			return nil, nil, nil, e
		}
		master = m
		closeAfter = append(closeAfter, sl)
		files = []*os.File{sl, sl, sl}
		outs = []*os.File{m}
		attr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0, Credential: cred}
		if r.Stdin && !r.Detach {
			stdin = m
		}
	} else {
		in, e := os.Open(os.DevNull)
		if e != nil {
			return nil, nil, nil, e
		}
		if r.Stdin && !r.Detach {
			in.Close()
			var w *os.File
			if in, w, e = os.Pipe(); e != nil {
				return nil, nil, nil, e
			}
			stdin = w
		}
		closeAfter = append(closeAfter, in)
		files = []*os.File{in}
		for i := 0; i < 2; i++ {
			rd, wr, e := os.Pipe()
			if e != nil {
				return nil, nil, nil, e
			}
			outs = append(outs, rd)
			closeAfter = append(closeAfter, wr)
			files = append(files, wr)
		}
	}
	proc0, err := os.StartProcess(path, r.Cmd, &os.ProcAttr{Dir: r.Cwd, Env: env, Files: files, Sys: attr})
	if err != nil {
		return nil, nil, nil, err
	}
	p = &proc{pid: proc0.Pid, cmd: r.Cmd, detached: r.Detach, pty: r.Pty != nil, startedAt: nowMs(),
		ring: newRing(), done: make(chan struct{}), running: true, master: master}
	s.procs.add(p)
	var fg *stream
	if !r.Detach {
		fg = st
	}
	if master != nil && fg != nil {
		st.mu.Lock()
		st.onMsg = resizeHandler(master)
		st.mu.Unlock()
	}
	var wg sync.WaitGroup
	for i, f := range outs {
		wg.Add(1)
		go collect(p, fg, byte(i+1), f, &wg)
	}
	go s.reap(p, proc0, outs, &wg)
	return p, stdin, master, nil
}

func (s *session) reap(p *proc, pr *os.Process, outs []*os.File, wg *sync.WaitGroup) {
	state, err := pr.Wait()
	p.mu.Lock()
	p.exited = true // from here on its pid may be reused: nothing signals it
	p.mu.Unlock()
	p.draining.Store(true)
	for _, f := range outs {
		_ = f.SetReadDeadline(time.Now().Add(drainGrace))
	}
	wg.Wait()
	for _, f := range outs {
		f.Close()
	}
	p.mu.Lock()
	p.running = false
	if err == nil {
		ws, _ := state.Sys().(syscall.WaitStatus)
		if ws.Signaled() {
			p.exitCode = 128 + int(ws.Signal())
			p.sig = signalName(ws.Signal())
		} else {
			p.exitCode = ws.ExitStatus()
		}
	} else {
		p.exitCode = 255
	}
	if p.timedOut {
		p.exitCode = 124
	} else if p.cancelled {
		p.exitCode = 137
	}
	p.mu.Unlock()
	p.ring.close()
	s.procs.markExited(p)
	close(p.done)
}
