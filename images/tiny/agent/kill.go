package main

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
	"time"
	"unsafe"
)

// kill SIGKILLs what the process started: its group and, for a PTY, its whole session (an
// interactive shell gives each job a group of its own). A reaped process is left alone: its
// pid may already be another's.
func (p *proc) kill() {
	p.mu.Lock()
	exited := p.exited
	p.mu.Unlock()
	if exited {
		return
	}
	_ = syscall.Kill(-p.pid, syscall.SIGKILL)
	if p.pty {
		killSession(p.pid)
	}
}

// signal sends sig to the process's group and, for a PTY, to the terminal's foreground group
// (the job the user would hit with ^C), or kills the whole session for KILL.
func (p *proc) signal(sig syscall.Signal) error {
	if sig == syscall.SIGKILL && p.pty {
		p.kill()
		return nil
	}
	err := syscall.Kill(-p.pid, sig)
	if p.master != nil {
		var fg int32
		if ioctl(p.master, syscall.TIOCGPGRP, unsafe.Pointer(&fg)) == nil && fg > 0 && int(fg) != p.pid {
			if e := syscall.Kill(-int(fg), sig); e == nil {
				err = nil
			}
		}
	}
	return err
}

// killSession SIGKILLs every live process of session sid, scanning again for ones forked
// meanwhile, a bounded number of times.
func killSession(sid int) {
	for round := 0; round < 20; round++ {
		if sessionMembers(sid, func(pid int) { _ = syscall.Kill(pid, syscall.SIGKILL) }) == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sessionMembers calls fn for each non-zombie process whose session id (field 6 of
// /proc/PID/stat) is sid and says how many there were.
func sessionMembers(sid int, fn func(int)) int {
	d, err := os.Open("/proc")
	if err != nil {
		return 0
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	n := 0
	for _, name := range names {
		pid, err := strconv.Atoi(name)
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + name + "/stat")
		i := bytes.LastIndexByte(b, ')')
		if err != nil || i < 0 {
			continue
		}
		f := bytes.Fields(b[i+1:]) // state, ppid, pgrp, session…
		if len(f) < 4 || string(f[0]) == "Z" || string(f[3]) != strconv.Itoa(sid) {
			continue
		}
		fn(pid)
		n++
	}
	return n
}
