package main

import "encoding/json"

// ps lists cmds cut to fit one frame: each argument to psArgMax bytes, each cmd to a budget
// that shrinks until the END fits (a cut argument ends in "…"; a "…" argument stands for
// the ones left off).
const psArgMax = 256

func (s *session) opPs(st *stream) {
	for budget := 4096; ; budget /= 4 {
		b := mustJSON(s.procList(budget))
		if len(b) <= maxPayload || budget == 0 {
			st.end(json.RawMessage(b))
			return
		}
	}
}

func (s *session) procList(budget int) map[string]any {
	t := s.procs
	t.mu.Lock()
	list := make([]map[string]any, 0, len(t.byPid))
	for _, p := range t.byPid {
		p.mu.Lock()
		var code any
		if !p.running {
			code = p.exitCode
		}
		list = append(list, map[string]any{"pid": p.pid, "cmd": cutCmd(p.cmd, budget), "detached": p.detached,
			"pty": p.pty, "running": p.running, "exitCode": code, "startedAtMs": p.startedAt})
		p.mu.Unlock()
	}
	t.mu.Unlock()
	return map[string]any{"ok": true, "processes": list}
}

func cutCmd(cmd []string, budget int) []string {
	out := make([]string, 0, len(cmd))
	for _, a := range cmd {
		if budget <= 0 {
			return append(out, "…")
		}
		max := psArgMax
		if budget < max {
			max = budget
		}
		if len(a) > max {
			a = cutUTF8(a, max) + "…"
		}
		budget -= len(a)
		out = append(out, a)
	}
	return out
}

// cutUTF8 cuts s to at most n bytes, not inside a character.
func cutUTF8(s string, n int) string {
	for n > 0 && n < len(s) && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}
