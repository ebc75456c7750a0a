package main

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"syscall"
)

const watchMask = syscall.IN_CREATE | syscall.IN_MODIFY | syscall.IN_ATTRIB | syscall.IN_CLOSE_WRITE |
	syscall.IN_DELETE | syscall.IN_MOVED_FROM | syscall.IN_MOVED_TO | syscall.IN_DELETE_SELF |
	syscall.IN_MOVE_SELF | syscall.IN_DONT_FOLLOW

// maxWatches bounds one recursive watch (the kernel's own default limit is 8192 per user).
const maxWatches = 4096

type watcher struct {
	fd        int
	recursive bool
	root      string
	paths     map[int32]string
}

func (w *watcher) add(path string) error {
	if len(w.paths) >= maxWatches {
		return nil
	}
	wd, err := syscall.InotifyAddWatch(w.fd, path, watchMask)
	if err != nil {
		return err
	}
	w.paths[int32(wd)] = path
	return nil
}

// addTree watches path and, when recursive, every directory under it.
func (w *watcher) addTree(path string) {
	_ = filepath.WalkDir(path, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() {
			if w.add(p) != nil || len(w.paths) >= maxWatches {
				return filepath.SkipDir
			}
		}
		return nil
	})
}

func opWatch(st *stream, r *request) {
	if !absPath(st, r.Path) {
		return
	}
	fd, err := syscall.InotifyInit1(syscall.IN_CLOEXEC | syscall.IN_NONBLOCK)
	if err != nil {
		failErr(st, "watch", err)
		return
	}
	f := os.NewFile(uintptr(fd), "inotify") // non-blocking: Close wakes a pending Read
	defer f.Close()
	w := &watcher{fd: fd, recursive: r.Recursive, root: filepath.Clean(r.Path), paths: map[int32]string{}}
	if err := w.add(w.root); err != nil {
		failErr(st, "watch", err)
		return
	}
	if fi, err := os.Stat(w.root); err == nil && fi.IsDir() && w.recursive {
		w.addTree(w.root)
	}
	st.opened()
	go func() {
		<-st.done
		f.Close()
	}()
	buf := make([]byte, 64*1024)
	for {
		n, err := f.Read(buf)
		if err != nil {
			break
		}
		w.sendEvents(st, w.parse(buf[:n]))
	}
	if st.isCancelled() {
		st.end(map[string]any{"ok": true})
	} else {
		st.fail("IO", "watch: reading inotify failed")
	}
}

type event struct {
	Path string `json:"path"`
	Kind string `json:"kind"`
}

func (w *watcher) parse(b []byte) []event {
	var evs []event
	for len(b) >= syscall.SizeofInotifyEvent {
		wd := int32(binary.LittleEndian.Uint32(b[0:]))
		mask := binary.LittleEndian.Uint32(b[4:])
		nlen := int(binary.LittleEndian.Uint32(b[12:]))
		if syscall.SizeofInotifyEvent+nlen > len(b) {
			break
		}
		name := string(b[syscall.SizeofInotifyEvent : syscall.SizeofInotifyEvent+nlen])
		for len(name) > 0 && name[len(name)-1] == 0 {
			name = name[:len(name)-1]
		}
		b = b[syscall.SizeofInotifyEvent+nlen:]
		dir, ok := w.paths[wd]
		if !ok {
			continue
		}
		p := dir
		if name != "" {
			p = filepath.Join(dir, name)
		}
		kind := ""
		switch {
		case mask&syscall.IN_IGNORED != 0:
			delete(w.paths, wd)
		case mask&syscall.IN_CREATE != 0:
			kind = "create"
		case mask&(syscall.IN_MODIFY|syscall.IN_ATTRIB|syscall.IN_CLOSE_WRITE) != 0:
			kind = "modify"
		case mask&syscall.IN_DELETE != 0:
			kind = "delete"
		case mask&(syscall.IN_MOVED_FROM|syscall.IN_MOVED_TO) != 0:
			kind = "move"
		case mask&syscall.IN_DELETE_SELF != 0 && p == w.root:
			kind = "delete" // a subdirectory's own deletion is reported by its parent
		case mask&syscall.IN_MOVE_SELF != 0 && p == w.root:
			kind = "move"
		}
		if w.recursive && mask&syscall.IN_ISDIR != 0 && mask&(syscall.IN_CREATE|syscall.IN_MOVED_TO) != 0 {
			w.addTree(p)
		}
		// A stream of writes gives one event per write: repeats in a row are one.
		if kind != "" && !(len(evs) > 0 && evs[len(evs)-1] == event{p, kind}) {
			evs = append(evs, event{p, kind})
		}
	}
	return evs
}

// sendEvents sends MSG events, each at most 60 KiB.
func (w *watcher) sendEvents(st *stream, evs []event) {
	for len(evs) > 0 {
		n, size := 0, 64
		for n < len(evs) && size+len(evs[n].Path)*6+32 < maxEntriesMsg {
			size += len(evs[n].Path)*6 + 32 // worst case: every byte escaped as \u00XX
			n++
		}
		if n == 0 {
			n = 1
		}
		st.msg(map[string]any{"type": "events", "events": evs[:n]})
		evs = evs[n:]
	}
}
