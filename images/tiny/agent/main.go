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
	signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)

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
