package main

import (
	"os"
	"sync"
	"sync/atomic"
	"syscall"
)

const (
	maxDetached = 64
	keepExited  = 64
	maxBufMem   = 8 << 20 // all processes' buffers: the oldest exited ones go first
)

// proc is a process the agent started; its pid is also its process group id.
type proc struct {
	pid       int
	cmd       []string
	detached  bool
	pty       bool
	startedAt int64
	ring      *ring
	master    *os.File      // a PTY's master, for its foreground group; nil without a PTY
	done      chan struct{} // closed once it exited and its output is drained
	draining  atomic.Bool   // it exited: its output is read until the pipes are idle

	mu        sync.Mutex
	running   bool
	exited    bool // reaped (running stays true while its output drains)
	orphaned  bool // a foreground process whose session was replaced: runs on as if detached
	exitCode  int
	sig       string // the signal that killed it, "" if none
	timedOut  bool
	cancelled bool
}

func (p *proc) exitResult() map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	var sig any
	if p.sig != "" {
		sig = p.sig
	}
	return map[string]any{"ok": true, "exitCode": p.exitCode, "signal": sig, "timedOut": p.timedOut, "cancelled": p.cancelled}
}

type procTable struct {
	mu     sync.Mutex
	byPid  map[int]*proc
	exited []*proc
}

func newProcTable() *procTable { return &procTable{byPid: map[int]*proc{}} }

func (t *procTable) add(p *proc) {
	t.mu.Lock()
	t.byPid[p.pid] = p
	t.mu.Unlock()
}

func (t *procTable) get(pid int) *proc {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.byPid[pid]
}

func (t *procTable) detachedRunning() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, p := range t.byPid {
		p.mu.Lock()
		if (p.detached || p.orphaned) && p.running {
			n++
		}
		p.mu.Unlock()
	}
	return n
}

// markExited keeps the newest exited processes listed, forgetting the oldest beyond 64.
func (t *procTable) markExited(p *proc) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.exited = append(t.exited, p)
	for len(t.exited) > keepExited {
		old := t.exited[0]
		t.exited[0] = nil
		t.exited = t.exited[1:]
		if t.byPid[old.pid] == old {
			delete(t.byPid, old.pid)
		}
	}
	total := 0
	for _, q := range t.byPid {
		total += q.ring.memory()
	}
	for _, old := range t.exited {
		if total <= maxBufMem {
			break
		}
		total -= old.ring.memory()
		old.ring.discard()
	}
}

func (t *procTable) running(filter func(*proc) bool) []*proc {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []*proc
	for _, p := range t.byPid {
		p.mu.Lock()
		if p.running && filter(p) {
			out = append(out, p)
		}
		p.mu.Unlock()
	}
	return out
}

func (t *procTable) killAll() {
	for _, p := range t.running(func(*proc) bool { return true }) {
		p.kill()
	}
}

var signals = map[string]syscall.Signal{
	"TERM": syscall.SIGTERM, "KILL": syscall.SIGKILL, "INT": syscall.SIGINT, "HUP": syscall.SIGHUP,
	"QUIT": syscall.SIGQUIT, "USR1": syscall.SIGUSR1, "USR2": syscall.SIGUSR2, "STOP": syscall.SIGSTOP,
	"CONT": syscall.SIGCONT,
}

// signalName names a signal as the spec's END does ("KILL"), beyond the ones a host may send.
func signalName(sig syscall.Signal) string {
	for n, s := range signals {
		if s == sig {
			return n
		}
	}
	extra := map[syscall.Signal]string{syscall.SIGSEGV: "SEGV", syscall.SIGABRT: "ABRT", syscall.SIGPIPE: "PIPE",
		syscall.SIGALRM: "ALRM", syscall.SIGBUS: "BUS", syscall.SIGFPE: "FPE", syscall.SIGILL: "ILL",
		syscall.SIGTRAP: "TRAP", syscall.SIGSYS: "SYS", syscall.SIGXCPU: "XCPU", syscall.SIGXFSZ: "XFSZ"}
	if n, ok := extra[sig]; ok {
		return n
	}
	return "SIG" + itoa(int(sig))
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	neg := n < 0
	if neg {
		n = -n
	}
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}

// opSignal signals the whole process group of a process the agent started (its children too),
// or any other pid directly.
func (s *session) opSignal(st *stream, r *request) {
	sig, ok := signals[r.Signal]
	if !ok || r.Pid <= 0 {
		st.fail("INVALID", "signal: pid and one of the named signals are required")
		return
	}
	target := r.Pid
	if p := s.procs.get(r.Pid); p != nil {
		p.mu.Lock()
		running := p.running && !p.exited
		p.mu.Unlock()
		if !running {
			st.fail("NOT_FOUND", "process has exited")
			return
		}
		if err := p.signal(sig); err != nil {
			st.fail(errCode(err), "signal: "+err.Error())
			return
		}
		st.end(map[string]any{"ok": true})
		return
	}
	if err := syscall.Kill(target, sig); err != nil {
		st.fail(errCode(err), "signal: "+err.Error())
		return
	}
	st.end(map[string]any{"ok": true})
}

// opAttach replays a process's buffer, then follows it live when asked.
func (s *session) opAttach(st *stream, r *request) {
	p := s.procs.get(r.Pid)
	if p == nil {
		st.fail("NOT_FOUND", "no such process")
		return
	}
	st.opened()
	first := p.ring.read(0, 0)
	stop := first.total // without follow: what the buffer holds now
	var off int64
	for {
		rr := p.ring.read(off, chunkSize)
		if !r.Follow && rr.next > stop {
			keep := stop - (rr.next - int64(len(rr.b)))
			if keep < 0 {
				keep = 0
			}
			rr.b = rr.b[:keep]
			rr.next = stop
		}
		if rr.lost > 0 {
			st.msg(map[string]any{"type": "dropped", "bytes": rr.lost})
		}
		off = rr.next
		if len(rr.b) > 0 {
			if err := st.data(rr.ch, rr.b); err != nil {
				if err == errCancelled {
					st.end(map[string]any{"ok": true})
				}
				return
			}
			continue
		}
		if !r.Follow {
			st.end(map[string]any{"ok": true})
			return
		}
		if rr.closed {
			st.end(p.exitResult())
			return
		}
		select {
		case <-rr.wake:
		case <-st.done:
			if st.isCancelled() && !st.isGone() {
				st.end(map[string]any{"ok": true})
			}
			return
		}
	}
}
