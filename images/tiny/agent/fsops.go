package main

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// maxEntriesMsg bounds one MSG entries payload (the spec's 60 KiB).
const maxEntriesMsg = 60 * 1024

func opList(st *stream, r *request) {
	if !absPath(st, r.Path) {
		return
	}
	f, err := os.Open(r.Path)
	if err != nil {
		failErr(st, "list", err)
		return
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.IsDir() {
		st.fail(errCodeOr(err, "NOT_DIR"), "list: "+r.Path+" is not a directory")
		return
	}
	head, tail := []byte(`{"type":"entries","entries":[`), []byte(`]}`)
	batch := append([]byte(nil), head...)
	n := 0
	flush := func() {
		if n > 0 {
			st.send(tMsg, append(batch, tail...))
		}
		batch, n = append(batch[:0:0], head...), 0
	}
	for {
		des, err := f.ReadDir(256)
		for _, de := range des {
			if st.isGone() || st.isCancelled() {
				st.fail("CANCELLED", "list cancelled")
				return
			}
			fi, e := de.Info()
			if e != nil {
				continue // gone since it was listed
			}
			entry := mustJSON(map[string]any{"name": de.Name(), "stat": statJSON(fi)})
			if len(batch)+len(entry)+len(tail)+1 > maxEntriesMsg {
				flush()
			}
			if n > 0 {
				batch = append(batch, ',')
			}
			batch = append(batch, entry...)
			n++
		}
		if err == io.EOF || len(des) == 0 {
			break
		}
		if err != nil {
			failErr(st, "list", err)
			return
		}
	}
	flush()
	st.end(map[string]any{"ok": true})
}

func opStat(st *stream, r *request) {
	if !absPath(st, r.Path) {
		return
	}
	fi, err := os.Lstat(r.Path)
	if err != nil {
		failErr(st, "stat", err)
		return
	}
	st.end(map[string]any{"ok": true, "stat": statJSON(fi)})
}

func opMkdir(st *stream, r *request) {
	if !absPath(st, r.Path) {
		return
	}
	perm := os.FileMode(0o755)
	if r.Perm != nil {
		perm = os.FileMode(*r.Perm&0o777) | permExtra(*r.Perm)
	}
	var err error
	if r.Parents {
		if fi, e := os.Stat(r.Path); e == nil && fi.IsDir() {
			st.end(map[string]any{"ok": true})
			return
		}
		err = os.MkdirAll(r.Path, perm)
	} else {
		err = os.Mkdir(r.Path, perm)
	}
	if err != nil {
		failErr(st, "mkdir", err)
		return
	}
	_ = os.Chmod(r.Path, perm) // exact, whatever the umask
	st.end(map[string]any{"ok": true})
}

func opRemove(st *stream, r *request) {
	if !absPath(st, r.Path) {
		return
	}
	if filepath.Clean(r.Path) == "/" {
		st.fail("PERMISSION", "remove: refusing to remove /")
		return
	}
	if _, err := os.Lstat(r.Path); err != nil {
		failErr(st, "remove", err)
		return
	}
	var err error
	if r.Recursive {
		err = os.RemoveAll(r.Path)
	} else {
		err = os.Remove(r.Path)
	}
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		st.fail(errCode(err), "remove: "+err.Error())
		return
	}
	st.end(map[string]any{"ok": true})
}

func opRename(st *stream, r *request) {
	if !absPath(st, r.From) || !absPath(st, r.To) {
		return
	}
	if err := os.Rename(r.From, r.To); err != nil {
		failErr(st, "rename", err)
		return
	}
	st.end(map[string]any{"ok": true})
}
