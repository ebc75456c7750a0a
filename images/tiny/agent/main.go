// forky-agent: the guest agent of Forky Pig VMs. It speaks libs/agent/PROTOCOL.md on a
// virtio-serial port (or, for host-side tests, on a unix socket it connects to).
package main

import (
	"errors"
	"flag"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const defaultPort = "/dev/virtio-ports/org.forky.agent.0"

func main() {
	port := flag.String("port", defaultPort, "virtio-serial port to serve")
	connect := flag.String("connect", "", "unix socket to connect to instead of a port (exits when it closes)")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("forky-agent: ")
	// The guest may have 128 MiB: collect early, stay small.
	debug.SetGCPercent(50)
	debug.SetMemoryLimit(32 << 20)
	setupSignals()

	s := newSession()
	if *connect != "" {
		c, err := net.Dial("unix", *connect)
		if err != nil {
			log.Fatal(err)
		}
		go s.writer(c, func(error) { shutdown(s) })
		err = s.readLoop(c)
		if !errors.Is(err, io.EOF) {
			log.Print(err)
		}
		shutdown(s)
	}
	p := openPort(*port)
	go s.writer(p, func(err error) {
		log.Printf("write: %v", err)
		time.Sleep(100 * time.Millisecond) // the frame is lost; the host's next HELLO recovers
	})
	err := s.readLoop(p)
	log.Fatalf("read: %v", err)
}

// shutdown ends a --connect run: nothing the agent started outlives the test that started it.
func shutdown(s *session) {
	s.procs.killAll()
	os.Exit(0)
}

// setupSignals catches (and drops) the signals the agent must survive instead of ignoring
// them: an ignored disposition survives exec into every child, a caught one is reset to
// default. Whatever the agent inherited as ignored (init runs it as a background job, which
// ignores INT and QUIT) is caught too, so children never start with it ignored.
func setupSignals() {
	sigs := []os.Signal{syscall.SIGHUP, syscall.SIGPIPE, syscall.SIGINT, syscall.SIGQUIT}
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if !strings.HasPrefix(l, "SigIgn:") {
				continue
			}
			mask, _ := strconv.ParseUint(strings.TrimSpace(l[len("SigIgn:"):]), 16, 64)
			for n := 1; n < 32; n++ {
				if mask&(1<<(n-1)) != 0 && n != int(syscall.SIGKILL) && n != int(syscall.SIGSTOP) {
					sigs = append(sigs, syscall.Signal(n))
				}
			}
		}
	}
	c := make(chan os.Signal, 16)
	signal.Notify(c, sigs...)
	go func() {
		for range c {
		}
	}()
}
