package main

import (
	"log"
	"syscall"
	"time"
)

// vport is a virtio-serial port. With no host connected, read returns 0 (and poll says
// POLLHUP) at once, and write blocks until one connects. Read therefore never reports EOF: it
// waits calmly for the next host, who starts over with a HELLO.
type vport struct {
	fd int
}

const retryPause = 100 * time.Millisecond

// openPort opens the port, waiting for it to appear (udev-less guests link it late).
func openPort(path string) *vport {
	logged := false
	for {
		fd, err := syscall.Open(path, syscall.O_RDWR|syscall.O_CLOEXEC, 0)
		if err == nil {
			return &vport{fd: fd}
		}
		if !logged {
			log.Printf("waiting for %s: %v", path, err)
			logged = true
		}
		time.Sleep(retryPause)
	}
}

func (p *vport) Read(b []byte) (int, error) {
	for {
		n, err := syscall.Read(p.fd, b)
		if n > 0 {
			return n, nil
		}
		if err == syscall.EINTR {
			continue
		}
		// 0: no host connected. EAGAIN/other errors: the device is in a transient state.
		time.Sleep(retryPause)
	}
}

func (p *vport) Write(b []byte) (int, error) {
	for {
		n, err := syscall.Write(p.fd, b)
		if err == syscall.EINTR || err == syscall.EAGAIN {
			if err == syscall.EAGAIN {
				time.Sleep(10 * time.Millisecond)
			}
			continue
		}
		if err != nil {
			return 0, err
		}
		return n, nil
	}
}
