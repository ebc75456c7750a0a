package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"
)

// openPty opens a pseudo-terminal pair the way posix_openpt/unlockpt/ptsname do; with cred,
// the slave is the user's (and group tty's), as login would make it, so the process may
// reopen /dev/tty and set its modes.
func openPty(rows, cols uint16, cred *syscall.Credential) (master, slave *os.File, err error) {
	master, err = os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	var n uint32
	err = ioctl(master, syscall.TIOCSPTLCK, unsafe.Pointer(new(int32)))
	if err == nil {
		err = ioctl(master, syscall.TIOCGPTN, unsafe.Pointer(&n))
	}
	if err == nil {
		slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	}
	if err == nil && cred != nil {
		_ = slave.Chown(int(cred.Uid), ttyGid()) // best effort: the process can run without it
	}
	if err == nil {
		err = setWinsize(master, rows, cols)
	}
	if err != nil {
		master.Close()
		if slave != nil {
			slave.Close()
		}
		return nil, nil, err
	}
	return master, slave, nil
}

// ioctl goes through SyscallConn: File.Fd would switch the master to blocking mode.
func ioctl(f *os.File, req uintptr, arg unsafe.Pointer) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var errno syscall.Errno
	err = rc.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall(syscall.SYS_IOCTL, fd, req, uintptr(arg))
	})
	if err != nil {
		return err
	}
	if errno != 0 {
		return errno
	}
	return nil
}

type winsize struct{ Row, Col, X, Y uint16 }

func setWinsize(f *os.File, rows, cols uint16) error {
	if rows == 0 {
		rows = 24
	}
	if cols == 0 {
		cols = 80
	}
	ws := winsize{Row: rows, Col: cols}
	return ioctl(f, syscall.TIOCSWINSZ, unsafe.Pointer(&ws))
}

// resizeHandler applies the host's {"type":"resize"} MSGs to the master.
func resizeHandler(master *os.File) func([]byte) {
	return func(b []byte) {
		var m struct {
			Type string `json:"type"`
			Rows uint16 `json:"rows"`
			Cols uint16 `json:"cols"`
		}
		if json.Unmarshal(b, &m) == nil && m.Type == "resize" {
			_ = setWinsize(master, m.Rows, m.Cols)
		}
	}
}

// ttyGid is group tty's gid from /etc/group, -1 (unchanged) if there is none.
func ttyGid() int {
	b, _ := os.ReadFile("/etc/group")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Split(l, ":"); len(f) >= 3 && f[0] == "tty" {
			if g, err := strconv.Atoi(f[2]); err == nil {
				return g
			}
		}
	}
	return -1
}
