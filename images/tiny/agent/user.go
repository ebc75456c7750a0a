package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// lookupUser resolves an exec's `user` (a name or a uid, as a string or a number) through
// /etc/passwd; nil credentials mean "as the agent".
func lookupUser(raw json.RawMessage) (*syscall.Credential, map[string]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil, nil
	}
	var name string
	if err := json.Unmarshal(raw, &name); err != nil {
		var n uint32
		if json.Unmarshal(raw, &n) != nil {
			return nil, nil, errors.New("user must be a name or a uid")
		}
		name = strconv.FormatUint(uint64(n), 10)
	}
	if name == "" {
		return nil, nil, nil
	}
	uid, numErr := strconv.ParseUint(name, 10, 32)
	f, err := os.Open("/etc/passwd")
	if err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fs := strings.Split(sc.Text(), ":")
			if len(fs) < 7 {
				continue
			}
			u, e1 := strconv.ParseUint(fs[2], 10, 32)
			g, e2 := strconv.ParseUint(fs[3], 10, 32)
			if e1 != nil || e2 != nil {
				continue
			}
			if fs[0] == name || numErr == nil && u == uid {
				env := map[string]string{"HOME": fs[5], "USER": fs[0], "LOGNAME": fs[0]}
				return &syscall.Credential{Uid: uint32(u), Gid: uint32(g), Groups: groupsOf(fs[0], uint32(g))}, env, nil
			}
		}
	}
	if numErr == nil { // a uid with no passwd entry: its own gid, as sudo -u '#N' would
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid), Groups: []uint32{}}, nil, nil
	}
	return nil, nil, errors.New("unknown user " + strconv.Quote(name))
}

// groupsOf lists the supplementary groups /etc/group gives a user.
func groupsOf(user string, gid uint32) []uint32 {
	out := []uint32{}
	f, err := os.Open("/etc/group")
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Split(sc.Text(), ":")
		if len(fs) < 4 {
			continue
		}
		g, err := strconv.ParseUint(fs[2], 10, 32)
		if err != nil || uint32(g) == gid {
			continue
		}
		for _, m := range strings.Split(fs[3], ",") {
			if m == user {
				out = append(out, uint32(g))
				break
			}
		}
	}
	return out
}

// findExecutable resolves cmd[0] as a shell does: 0 and the path, or 127 (not found) / 126
// (found but not executable). Relative names and PATH entries are the process's: they
// resolve against cwd (the request's), not the agent's directory.
func findExecutable(name, path, cwd string) (string, int) {
	abs := func(p string) string {
		if cwd != "" && !filepath.IsAbs(p) {
			return filepath.Join(cwd, p)
		}
		return p
	}
	if strings.Contains(name, "/") {
		p := abs(name)
		return p, checkExec(p)
	}
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	code := 127
	for _, dir := range strings.Split(path, ":") {
		if dir == "" {
			dir = "."
		}
		p := abs(dir) + "/" + name
		switch checkExec(p) {
		case 0:
			return p, 0
		case 126:
			code = 126
		}
	}
	return "", code
}

func checkExec(p string) int {
	fi, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, syscall.EACCES) {
			return 126
		}
		return 127
	}
	if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return 126
	}
	return 0
}

func envGet(env []string, k string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if strings.HasPrefix(env[i], k+"=") {
			return env[i][len(k)+1:]
		}
	}
	return ""
}

// mergeEnv returns base with add's keys set (replacing earlier values).
func mergeEnv(base []string, add map[string]string) []string {
	out := make([]string, 0, len(base)+len(add))
	for _, kv := range base {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := add[k]; !ok {
			out = append(out, kv)
		}
	}
	for k, v := range add {
		if k != "" && !strings.ContainsAny(k, "=\x00") && !strings.Contains(v, "\x00") {
			out = append(out, k+"="+v)
		}
	}
	return out
}
