package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// rehello starts a new session on the same connection and waits for its ack.
func (h *testHost) rehello() {
	h.send(tHello, 0, []byte(`{"v":1,"session":"fedcba9876543210fedcba9876543210"}`))
	for h.next().typ != tHelloAck {
	}
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	return !strings.HasPrefix(s[strings.LastIndexByte(s, ')')+2:], "Z")
}

// #2: children start with default dispositions, even if the agent inherited ignored ones.
func TestChildSignalsDefault(t *testing.T) {
	signal.Ignore(syscall.SIGINT, syscall.SIGQUIT) // as a background job of init would have them
	setupSignals()
	h := newTestHost(t)
	out, _ := h.run(1, `{"op":"exec","cmd":["grep","SigIgn","/proc/self/status"]}`, nil)
	if !strings.Contains(out[1], "SigIgn:\t0000000000000000") {
		t.Fatalf("child ignores signals: %q", out[1])
	}
}

// #3: a PTY exec's timeout kills its whole session, jobs in their own groups included.
func TestPtyTimeoutKillsSession(t *testing.T) {
	h := newTestHost(t)
	out, end := h.run(1, `{"op":"exec","cmd":["sh","-c","set -m; sleep 60 & echo BG=$!; wait"],"pty":{},"timeoutMs":500}`, nil)
	m := regexp.MustCompile(`BG=(\d+)`).FindStringSubmatch(out[1])
	if m == nil || end["timedOut"] != true {
		t.Fatalf("got %q %v", out, end)
	}
	pid, _ := strconv.Atoi(m[1])
	time.Sleep(100 * time.Millisecond)
	if alive(pid) {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("job %d of the PTY session survived the timeout", pid)
	}
}

// #3: a signal reaches the terminal's foreground job too.
func TestPtySignalForeground(t *testing.T) {
	h := newTestHost(t)
	h.send(tOpen, 1, []byte(`{"op":"exec","cmd":["sh","-c","trap 'echo trapped' INT; set -m; sleep 60; echo rc=$?"],"pty":{},"timeoutMs":5000}`))
	h.send(tCredit, 1, credit(1<<20))
	var pid int
	out := ""
	for {
		f := h.next()
		if f.typ == tMsg && f.id == 1 {
			var m map[string]any
			_ = json.Unmarshal(f.payload, &m)
			if m["type"] == "started" {
				pid = int(m["pid"].(float64))
				time.Sleep(300 * time.Millisecond)
				h.send(tOpen, 2, []byte(fmt.Sprintf(`{"op":"signal","pid":%d,"signal":"INT"}`, pid)))
			}
		}
		if f.typ == tData && f.id == 1 {
			out += string(f.payload[1:])
		}
		if f.typ == tEnd && f.id == 1 {
			break
		}
	}
	if !strings.Contains(out, "rc=130") {
		t.Fatalf("foreground job not interrupted: %q", out)
	}
}

func heldMem(r *ring) int {
	n := 0
	for _, c := range r.chunks {
		n += cap(c.b) + 48
	}
	return n
}

// #4: small writes alternating between channels must not multiply the ring's memory.
func TestRingMemoryBounded(t *testing.T) {
	r := newRing()
	b := []byte("0123456789")
	for i := 0; i < 300000; i++ {
		r.write(byte(1+i%2), b)
	}
	if m := heldMem(r); m > 2*ringSize {
		t.Fatalf("ring holds %d bytes of memory", m)
	}
	rr := r.read(r.total-10, 100)
	if string(rr.b) != "0123456789" {
		t.Fatalf("tail %q", rr.b)
	}
}

// #5: exited processes' buffers are capped in total.
func TestExitedBuffersCapped(t *testing.T) {
	tb := newProcTable()
	big := make([]byte, chunkSize)
	for i := 0; i < 64; i++ {
		p := &proc{pid: 100000 + i, ring: newRing(), done: make(chan struct{})}
		for n := 0; n < ringSize; n += len(big) {
			p.ring.write(1, big)
		}
		tb.add(p)
		tb.markExited(p)
	}
	total := 0
	for _, p := range tb.byPid {
		total += heldMem(p.ring)
	}
	if total > 9<<20 {
		t.Fatalf("exited buffers hold %d bytes", total)
	}
}

// #5: a foreground process orphaned by a new session counts as detached.
func TestOrphanCountsAsDetached(t *testing.T) {
	h := newTestHost(t)
	h.send(tOpen, 1, []byte(`{"op":"exec","cmd":["sleep","30"]}`))
	for f := h.next(); f.typ != tMsg; f = h.next() {
	}
	h.rehello()
	time.Sleep(100 * time.Millisecond)
	if n := h.s.procs.detachedRunning(); n != 1 {
		t.Fatalf("detachedRunning = %d", n)
	}
}

// #6: output still in the pipe after exit is not lost while the host is slow with credit.
func TestDrainWaitsForCredit(t *testing.T) {
	h := newTestHost(t)
	h.send(tOpen, 1, []byte(`{"op":"exec","cmd":["head","-c","60000","/dev/zero"]}`))
	time.Sleep(800 * time.Millisecond)
	h.send(tCredit, 1, credit(1<<20))
	n := 0
	for {
		f := h.next()
		if f.typ == tData {
			n += len(f.payload) - 1
		}
		if f.typ == tEnd {
			break
		}
	}
	if n != 60000 {
		t.Fatalf("got %d of 60000 bytes", n)
	}
}

// #8: ps stays within a frame; no frame above maxPayload is ever sent.
func TestPsTruncatesCmd(t *testing.T) {
	h := newTestHost(t)
	long := strings.Repeat("x", 40000) // two of them overflow one END
	for id := uint32(1); id <= 2; id++ {
		_, end := h.run(id, `{"op":"exec","cmd":["sh","-c","sleep 30","`+long+`"],"detach":true}`, nil)
		if end["ok"] != true {
			t.Fatalf("exec: %v", end)
		}
	}
	_, end := h.run(3, `{"op":"ps"}`, nil)
	ps, _ := end["processes"].([]any)
	if end["ok"] != true || len(ps) != 2 {
		t.Fatalf("ps: %.200v", end)
	}
	cmd := ps[0].(map[string]any)["cmd"].([]any)
	if cmd[0] != "sh" || len(cmd[3].(string)) > psArgMax+3 {
		t.Fatalf("cmd %.200v", cmd)
	}
}

func TestSendFrameRefusesOversized(t *testing.T) {
	s := &session{out: make(chan outFrame, 4)}
	s.sendFrame(0, tEnd, 7, make([]byte, maxPayload+1))
	f := <-s.out
	if len(f.buf) > hdrLen+maxPayload || !strings.Contains(string(f.buf[hdrLen:]), `"IO"`) {
		t.Fatalf("sent %d bytes: %.80q", len(f.buf), f.buf[hdrLen:])
	}
}

// #11: a relative cmd[0] and relative PATH entries resolve against the request's cwd.
func TestRelativeCmdAgainstCwd(t *testing.T) {
	dir := t.TempDir()
	_ = os.Mkdir(filepath.Join(dir, "bin"), 0o755)
	for _, p := range []string{"run.sh", "bin/tool"} {
		_ = os.WriteFile(filepath.Join(dir, p), []byte("#!/bin/sh\necho ran\n"), 0o755)
	}
	h := newTestHost(t)
	out, end := h.run(1, `{"op":"exec","cwd":"`+dir+`","cmd":["./run.sh"]}`, nil)
	if out[1] != "ran\n" || end["exitCode"] != 0.0 {
		t.Fatalf("./run.sh: %q %v", out, end)
	}
	out, end = h.run(2, `{"op":"exec","cwd":"`+dir+`","env":{"PATH":"bin"},"cmd":["tool"]}`, nil)
	if out[1] != "ran\n" || end["exitCode"] != 0.0 {
		t.Fatalf("PATH=bin: %q %v", out, end)
	}
}

func pipeInode(path string) string {
	l, _ := os.Readlink(path)
	if strings.HasPrefix(l, "pipe:") {
		return l
	}
	return ""
}

// #12: after a new HELLO, stdin closes even if the process never reads it.
func TestStdinClosesAfterHello(t *testing.T) {
	h := newTestHost(t)
	h.send(tOpen, 1, []byte(`{"op":"exec","cmd":["sleep","30"],"stdin":true}`))
	h.send(tCredit, 1, credit(1<<20))
	pid := 0
	for pid == 0 {
		f := h.next()
		var m map[string]any
		if f.typ == tMsg && json.Unmarshal(f.payload, &m) == nil && m["type"] == "started" {
			pid = int(m["pid"].(float64))
		}
	}
	chunk := make([]byte, 60000)
	for i := 0; i < 4; i++ {
		h.send(tData, 1, []byte{0}, chunk)
	}
	time.Sleep(200 * time.Millisecond)
	in := pipeInode(fmt.Sprintf("/proc/%d/fd/0", pid))
	h.rehello()
	time.Sleep(300 * time.Millisecond)
	fds, _ := os.ReadDir("/proc/self/fd")
	for _, e := range fds {
		if in != "" && pipeInode("/proc/self/fd/"+e.Name()) == in {
			t.Fatalf("stdin %s of %d still open in the agent", in, pid)
		}
	}
}

// #13: a FIFO is refused at once, for read and for write.
func TestFifoRefused(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	h := newTestHost(t)
	_, end := h.run(1, `{"op":"read","path":"`+fifo+`"}`, nil)
	if end["code"] != "INVALID" {
		t.Fatalf("read: %v", end)
	}
	_, end = h.run(2, `{"op":"write","path":"`+fifo+`","mode":"truncate"}`, nil)
	if end["code"] != "INVALID" {
		t.Fatalf("write: %v", end)
	}
}

// #14: a timeout during the post-exit drain does not turn exit 0 into 124.
func TestTimeoutAfterExit(t *testing.T) {
	h := newTestHost(t)
	_, end := h.run(1, `{"op":"exec","cmd":["sh","-c","sleep 2 & sleep 0.05; exit 0"],"timeoutMs":150}`, nil)
	if end["exitCode"] != 0.0 || end["timedOut"] != false {
		t.Fatalf("got %v", end)
	}
}

// #16: with a user, the PTY's slave belongs to that user.
func TestPtySlaveOwner(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root")
	}
	h := newTestHost(t)
	out, _ := h.run(1, `{"op":"exec","user":65534,"pty":{},"cmd":["sh","-c","stat -c %u $(tty)"]}`, nil)
	if !strings.HasPrefix(out[1], "65534") {
		t.Fatalf("slave owner %q", out[1])
	}
}
