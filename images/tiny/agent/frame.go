package main

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"io"
	"sync"
)

// Frame layout and types: see libs/agent/PROTOCOL.md.
const (
	hdrLen     = 16
	maxPayload = 65536
	portWrite  = 32 * 1024              // virtio-serial takes at most 32 KiB per write call
	chunkSize  = portWrite - hdrLen - 1 // so a DATA frame is one port write

	tHello    = 0x01
	tHelloAck = 0x02
	tPing     = 0x03
	tPong     = 0x04
	tOpen     = 0x10
	tOpened   = 0x11
	tData     = 0x12
	tEOF      = 0x13
	tCredit   = 0x14
	tMsg      = 0x15
	tEnd      = 0x16
	tCancel   = 0x17
)

var magic = []byte{0x46, 0x4B}

// Buffers for DATA-sized frames are reused: most traffic is DATA.
const pooledCap = hdrLen + 1 + chunkSize

var framePool = sync.Pool{New: func() any { b := make([]byte, 0, pooledCap); return &b }}

// encodeFrame builds header + payload (the parts concatenated) in one buffer.
func encodeFrame(typ byte, id uint32, parts ...[]byte) (buf []byte, pooled bool) {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if hdrLen+n <= pooledCap {
		buf = (*framePool.Get().(*[]byte))[:hdrLen]
		pooled = true
	} else {
		buf = make([]byte, hdrLen, hdrLen+n)
	}
	buf[0], buf[1], buf[2], buf[3] = magic[0], magic[1], typ, 0
	binary.BigEndian.PutUint32(buf[4:], id)
	binary.BigEndian.PutUint32(buf[8:], uint32(n))
	for _, p := range parts {
		buf = append(buf, p...)
	}
	crc := crc32.ChecksumIEEE(buf[:12])
	crc = crc32.Update(crc, crc32.IEEETable, buf[hdrLen:])
	binary.BigEndian.PutUint32(buf[12:], crc)
	return buf, pooled
}

func recycle(buf []byte) {
	if cap(buf) == pooledCap {
		b := buf[:0]
		framePool.Put(&b)
	}
}

type frame struct {
	typ     byte
	id      uint32
	payload []byte
}

// frameReader finds frames in a byte stream, resynchronising on garbage by dropping one byte
// at a time and looking for the next magic, as the spec requires.
type frameReader struct {
	r          io.Reader
	buf        []byte
	start, end int
}

func newFrameReader(r io.Reader) *frameReader {
	return &frameReader{r: r, buf: make([]byte, 2*(hdrLen+maxPayload))}
}

func (fr *frameReader) next() (frame, error) {
	for {
		if f, ok := fr.parse(); ok {
			return f, nil
		}
		if fr.start > 0 {
			copy(fr.buf, fr.buf[fr.start:fr.end])
			fr.end -= fr.start
			fr.start = 0
		}
		n, err := fr.r.Read(fr.buf[fr.end:])
		fr.end += n
		if err != nil && n == 0 {
			return frame{}, err
		}
	}
}

// parse returns a frame if a whole valid one starts at the (resynchronised) front.
func (fr *frameReader) parse() (frame, bool) {
	for {
		b := fr.buf[fr.start:fr.end]
		if len(b) == 0 {
			return frame{}, false
		}
		if len(b) == 1 || !(b[0] == magic[0] && b[1] == magic[1]) {
			i := bytes.Index(b[1:], magic)
			if i < 0 {
				// Keep a trailing 'F': it may start the next magic.
				if b[len(b)-1] == magic[0] {
					fr.start = fr.end - 1
				} else {
					fr.start = fr.end
				}
				return frame{}, false
			}
			fr.start += 1 + i
			continue
		}
		if len(b) < hdrLen {
			return frame{}, false
		}
		plen := binary.BigEndian.Uint32(b[8:12])
		if b[3] != 0 || plen > maxPayload {
			fr.start++
			continue
		}
		total := hdrLen + int(plen)
		if len(b) < total {
			return frame{}, false
		}
		crc := crc32.ChecksumIEEE(b[:12])
		crc = crc32.Update(crc, crc32.IEEETable, b[hdrLen:total])
		if crc != binary.BigEndian.Uint32(b[12:16]) {
			fr.start++
			continue
		}
		f := frame{typ: b[2], id: binary.BigEndian.Uint32(b[4:8])}
		f.payload = append([]byte(nil), b[hdrLen:total]...)
		fr.start += total
		return f, true
	}
}
