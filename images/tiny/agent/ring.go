package main

import (
	"sort"
	"sync"
)

const (
	ringSize = 1 << 20
	// ringMem bounds what the chunks cost, their headers included: many small chunks (a
	// writer alternating stdout and stderr) hold less than ringSize of output.
	ringMem       = ringSize + ringSize/2
	chunkOverhead = 48
)

type chunk struct {
	off   int64 // absolute offset of b[0] in the process's output
	ch    byte
	b     []byte
	alloc int // bytes allocated for b, plus chunkOverhead
}

// ring keeps a process's last 1 MiB of output (both channels, in order) for attach.
type ring struct {
	mu     sync.Mutex
	chunks []chunk
	start  int64 // absolute offset of the oldest byte held
	total  int64 // bytes ever written
	mem    int   // sum of the chunks' alloc
	closed bool
	wake   chan struct{} // closed and replaced on every change
}

func newRing() *ring { return &ring{wake: make(chan struct{})} }

func (r *ring) write(ch byte, b []byte) {
	if len(b) == 0 {
		return
	}
	for len(b) > chunkSize {
		r.write(ch, b[:chunkSize])
		b = b[chunkSize:]
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// Small writes coalesce, so a byte-at-a-time writer does not cost a chunk per byte.
	if n := len(r.chunks); n > 0 && r.chunks[n-1].ch == ch && len(r.chunks[n-1].b)+len(b) <= chunkSize {
		c := &r.chunks[n-1]
		old := cap(c.b)
		c.b = append(c.b, b...)
		c.alloc += cap(c.b) - old
		r.mem += cap(c.b) - old
	} else {
		c := append([]byte(nil), b...) // exact: appends grow it if more follows on its channel
		r.chunks = append(r.chunks, chunk{off: r.total, ch: ch, b: c, alloc: cap(c) + chunkOverhead})
		r.mem += cap(c) + chunkOverhead
	}
	r.total += int64(len(b))
	for len(r.chunks) > 0 && (r.total-r.start > ringSize || r.mem > ringMem) {
		c := &r.chunks[0]
		excess := r.total - r.start - ringSize
		if int64(len(c.b)) <= excess || r.mem > ringMem {
			r.start += int64(len(c.b))
			r.mem -= c.alloc
			r.chunks[0] = chunk{}
			r.chunks = r.chunks[1:]
			continue
		}
		c.b = c.b[excess:]
		c.off += excess
		r.start += excess
	}
	r.notify()
}

func (r *ring) notify() {
	close(r.wake)
	r.wake = make(chan struct{})
}

func (r *ring) memory() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.mem
}

// discard drops what is held (an attach reports it as dropped), keeping the offsets.
func (r *ring) discard() {
	r.mu.Lock()
	r.chunks, r.mem, r.start = nil, 0, r.total
	r.notify()
	r.mu.Unlock()
}

func (r *ring) close() {
	r.mu.Lock()
	r.closed = true
	r.notify()
	r.mu.Unlock()
}

type ringRead struct {
	ch     byte
	b      []byte // a copy, at most max bytes, one channel
	next   int64
	lost   int64 // bytes between off and the oldest held, lost off the front
	total  int64
	closed bool
	wake   chan struct{}
}

// read returns what follows absolute offset off.
func (r *ring) read(off int64, limit int) ringRead {
	r.mu.Lock()
	defer r.mu.Unlock()
	rr := ringRead{next: off, total: r.total, closed: r.closed, wake: r.wake}
	if off < r.start {
		rr.lost = r.start - off
		off = r.start
		rr.next = off
	}
	if off >= r.total {
		return rr
	}
	i := sort.Search(len(r.chunks), func(i int) bool { return r.chunks[i].off+int64(len(r.chunks[i].b)) > off })
	if i == len(r.chunks) {
		return rr
	}
	c := r.chunks[i]
	b := c.b[off-c.off:]
	if len(b) > limit {
		b = b[:limit]
	}
	rr.ch = c.ch
	rr.b = append([]byte(nil), b...)
	rr.next = off + int64(len(b))
	return rr
}
