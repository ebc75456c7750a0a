package main

import (
	"bytes"
	"io"
	"testing"
)

func TestFrameRoundTripAndResync(t *testing.T) {
	good1, _ := encodeFrame(tPing, 0, []byte("hi"))
	good2, _ := encodeFrame(tData, 7, []byte{1}, bytes.Repeat([]byte{9}, 40000))
	bad, _ := encodeFrame(tMsg, 3, []byte(`{"x":1}`))
	bad = append([]byte(nil), bad...)
	bad[len(bad)-1] ^= 1 // CRC mismatch
	var in []byte
	in = append(in, 0, 'F', 'K', 'F')
	in = append(in, bad...)
	in = append(in, good1...)
	in = append(in, make([]byte, 65552)...)
	in = append(in, good2[:10]...) // a partial frame, completed by zeros, is dropped
	in = append(in, make([]byte, 100)...)
	in = append(in, good2...)
	fr := newFrameReader(&slowReader{b: in})
	f, err := fr.next()
	if err != nil || f.typ != tPing || string(f.payload) != "hi" {
		t.Fatalf("first: %v %+v", err, f)
	}
	f, err = fr.next()
	if err != nil || f.typ != tData || f.id != 7 || len(f.payload) != 40001 {
		t.Fatalf("second: %v type %d id %d len %d", err, f.typ, f.id, len(f.payload))
	}
	if _, err = fr.next(); err != io.EOF {
		t.Fatalf("want EOF, got %v", err)
	}
}

func TestFrameRejectsFlagsAndLength(t *testing.T) {
	f1, _ := encodeFrame(tPing, 0, nil)
	withFlags := append([]byte(nil), f1...)
	withFlags[3] = 1
	huge := append([]byte(nil), f1...)
	huge[8] = 0xff
	good, _ := encodeFrame(tPong, 1, []byte("ok"))
	fr := newFrameReader(bytes.NewReader(append(append(withFlags, huge...), good...)))
	f, err := fr.next()
	if err != nil || f.typ != tPong || string(f.payload) != "ok" {
		t.Fatalf("got %v %+v", err, f)
	}
}

// slowReader returns a few bytes per read, so frames straddle reads.
type slowReader struct{ b []byte }

func (r *slowReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := 7777
	if n > len(p) {
		n = len(p)
	}
	if n > len(r.b) {
		n = len(r.b)
	}
	copy(p, r.b[:n])
	r.b = r.b[n:]
	return n, nil
}

func TestRingKeepsLastMiB(t *testing.T) {
	r := newRing()
	for i := 0; i < 3000; i++ {
		r.write(byte(1+i%2), bytes.Repeat([]byte{byte(i)}, 1000))
	}
	rr := r.read(0, 1<<20)
	if rr.lost != 3000*1000-ringSize || rr.total != 3000*1000 {
		t.Fatalf("lost %d total %d", rr.lost, rr.total)
	}
	var got int64
	for off := rr.next - int64(len(rr.b)); ; {
		x := r.read(off, 1<<20)
		if len(x.b) == 0 {
			break
		}
		got += int64(len(x.b))
		off = x.next
	}
	if got != ringSize {
		t.Fatalf("held %d", got)
	}
	// Byte-at-a-time output coalesces into few chunks.
	r2 := newRing()
	for i := 0; i < 100000; i++ {
		r2.write(1, []byte{'x'})
	}
	if len(r2.chunks) > 4 {
		t.Fatalf("%d chunks", len(r2.chunks))
	}
}
