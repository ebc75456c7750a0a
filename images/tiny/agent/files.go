package main

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// errCode maps an OS error to the spec's failure codes.
func errCode(err error) string {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return "IO"
	}
	switch errno {
	case syscall.ENOENT, syscall.ESRCH:
		return "NOT_FOUND"
	case syscall.EEXIST:
		return "EXISTS"
	case syscall.EACCES, syscall.EPERM, syscall.EROFS:
		return "PERMISSION"
	case syscall.ENOTDIR:
		return "NOT_DIR"
	case syscall.EISDIR:
		return "IS_DIR"
	case syscall.ENOTEMPTY:
		return "NOT_EMPTY"
	case syscall.EINVAL, syscall.ENAMETOOLONG, syscall.ELOOP, syscall.EXDEV:
		return "INVALID"
	case syscall.EBUSY, syscall.ETXTBSY:
		return "BUSY"
	}
	return "IO"
}

func errCodeOr(err error, code string) string {
	if err != nil {
		return errCode(err)
	}
	return code
}

func statJSON(fi fs.FileInfo) map[string]any {
	t := "other"
	switch {
	case fi.Mode().IsRegular():
		t = "file"
	case fi.IsDir():
		t = "dir"
	case fi.Mode()&fs.ModeSymlink != 0:
		t = "symlink"
	}
	mode := uint32(fi.Mode().Perm())
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		mode = st.Mode & 0o7777
	}
	return map[string]any{"type": t, "size": fi.Size(), "mode": mode, "mtimeMs": fi.ModTime().UnixMilli()}
}

// absPath checks a request's path: absolute and without NULs.
func absPath(st *stream, p string) bool {
	if !filepath.IsAbs(p) || len(p) > 4096 || containsNUL(p) {
		st.fail("INVALID", "path must be absolute: "+p)
		return false
	}
	return true
}

func containsNUL(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return true
		}
	}
	return false
}

func failErr(st *stream, what string, err error) { st.fail(errCode(err), what+": "+err.Error()) }

func opRead(st *stream, r *request) {
	if !absPath(st, r.Path) {
		return
	}
	if r.Offset < 0 || r.Length != nil && *r.Length < 0 {
		st.fail("INVALID", "read: offset and length must not be negative")
		return
	}
	f, err := openRegular(r.Path, syscall.O_RDONLY, 0)
	if err == errNotRegular {
		st.fail("INVALID", "read: "+r.Path+" is not a regular file")
		return
	}
	if errors.Is(err, syscall.EISDIR) {
		st.fail("IS_DIR", "read: "+r.Path+" is a directory")
		return
	}
	if err != nil {
		failErr(st, "read", err)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		failErr(st, "read", err)
		return
	}
	st.opened()
	st.msg(map[string]any{"type": "stat", "stat": statJSON(fi)})
	if r.Offset > 0 {
		if _, err := f.Seek(r.Offset, io.SeekStart); err != nil {
			failErr(st, "read", err)
			return
		}
	}
	left := int64(-1)
	if r.Length != nil {
		left = *r.Length
	}
	buf := make([]byte, chunkSize)
	var total int64
	for left != 0 {
		n := len(buf)
		if left > 0 && left < int64(n) {
			n = int(left)
		}
		k, err := f.Read(buf[:n])
		if k > 0 {
			if e := st.data(1, buf[:k]); e != nil {
				if e == errCancelled {
					st.fail("CANCELLED", "read cancelled")
				}
				return
			}
			total += int64(k)
			if left > 0 {
				left -= int64(k)
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			failErr(st, "read", err)
			return
		}
	}
	st.eof(1)
	st.end(map[string]any{"ok": true, "bytes": total})
}

func opWrite(st *stream, r *request) {
	if !absPath(st, r.Path) {
		return
	}
	flags := syscall.O_WRONLY | syscall.O_CREAT
	switch r.Mode {
	case "truncate":
		flags |= syscall.O_TRUNC
	case "create":
		flags |= syscall.O_EXCL
	case "append":
		flags |= syscall.O_APPEND
	default:
		st.fail("INVALID", "write: mode must be truncate, create or append")
		return
	}
	perm := uint32(0o644)
	if r.Perm != nil {
		perm = *r.Perm & 0o777
	}
	if r.Parents {
		if err := os.MkdirAll(filepath.Dir(r.Path), 0o755); err != nil {
			failErr(st, "write", err)
			return
		}
	}
	_, statErr := os.Lstat(r.Path)
	f, err := openRegular(r.Path, flags, perm)
	if err == errNotRegular {
		st.fail("INVALID", "write: "+r.Path+" is not a regular file")
		return
	}
	if err != nil {
		failErr(st, "write", err)
		return
	}
	defer f.Close()
	if os.IsNotExist(statErr) && r.Perm != nil {
		_ = f.Chmod(fs.FileMode(*r.Perm&0o777) | permExtra(*r.Perm)) // exact, whatever the umask
	}
	st.opened()
	st.grant(inputWindow)
	var total int64
	for {
		b, err := st.readInput()
		if err == io.EOF {
			break
		}
		if err != nil {
			if err == errCancelled {
				st.fail("CANCELLED", "write cancelled")
			}
			return
		}
		if _, err := f.Write(b); err != nil {
			failErr(st, "write", err)
			return
		}
		total += int64(len(b))
		st.grant(len(b))
	}
	if err := f.Close(); err != nil {
		failErr(st, "write", err)
		return
	}
	st.end(map[string]any{"ok": true, "bytes": total})
}

// permExtra turns setuid/setgid/sticky bits into Go's mode flags.
func permExtra(p uint32) fs.FileMode {
	var m fs.FileMode
	if p&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if p&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if p&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m
}

var errNotRegular = errors.New("not a regular file")

// openRegular opens path without blocking (a FIFO would block the open until a peer came, and
// then its reads and writes would ignore CANCEL) and refuses anything but a regular file:
// errNotRegular, or EISDIR for a directory.
func openRegular(path string, flags int, perm uint32) (*os.File, error) {
	fd, err := syscall.Open(path, flags|syscall.O_NONBLOCK|syscall.O_CLOEXEC, perm)
	if err == syscall.ENXIO { // a FIFO without a reader, a socket, a device with nothing behind
		return nil, errNotRegular
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		syscall.Close(fd)
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		syscall.Close(fd)
		if st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
			return nil, syscall.EISDIR
		}
		return nil, errNotRegular
	}
	if err := syscall.SetNonblock(fd, false); err != nil {
		syscall.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}
