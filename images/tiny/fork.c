/*
 * forky-fork: a guest forks itself, the way a process calls fork() (issue 22).
 *   forky-fork [--count N] [--live] [--spread] [--label K=V]... [--json]
 *   forky-fork --wait [--timeout SECONDS] [--json]
 *   forky-fork --result JSON [--exit-after-result]
 * Talks to hostd over the virtio-serial port org.forky.fork.0: one JSON request line, one JSON
 * reply line (libs/contract/src/self-fork.ts is the protocol). A fork returns twice over: in the
 * parent (the children's ids, one a line) and in each child k of N, which is restored blocked in
 * this very read and gets its own reply (`child K VMID`, and /run/forky/fork to source). A
 * refusal: its message on stderr, exit 1; usage: exit 2; no port: exit 3; no reply in time: exit 4.
 * One request at a time per VM: the port opens once only (EBUSY), so callers queue on a lock file.
 * Every request carries a fresh 16-hex id; the host echoes it in every reply to it (children get
 * the parent's), so a line with another id (an earlier caller's reply, a lost one) is skipped.
 * The host bounds every request; an alarm bounds it here too (a copy restored by an outside
 * snapshot may never get a reply).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_OUT 4096       /* what the host reads of one request line */
#define REPLY_MAX (8 << 20)     /* a --wait reply carries every child's result */
#define PORT "/dev/virtio-ports/org.forky.fork.0"
#define LOCK "/run/forky/fork.lock"
#define ENV_FILE "/run/forky/fork"

static char req[LINE_MAX_OUT + 2];
static size_t req_len;
static char id[17];

/* A fresh request id: 8 random bytes as hex (the time and pid if there is no urandom). */
static void new_id(void) {
  unsigned char b[8];
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0 || read(fd, b, sizeof b) != (ssize_t)sizeof b) {
    unsigned long long t = (unsigned long long)time(NULL) ^ ((unsigned long long)getpid() << 32) ^ (unsigned long long)clock();
    memcpy(b, &t, sizeof b);
  }
  if (fd >= 0) close(fd);
  for (int i = 0; i < 8; i++) snprintf(id + 2 * i, 3, "%02x", b[i]);
}

static void on_alarm(int sig) {
  (void)sig;
  static const char m[] = "forky-fork: TIMEOUT: no reply from the host in time\n";
  ssize_t w = write(2, m, sizeof m - 1);
  (void)w;
  _exit(4);
}

static int usage(const char *why) {
  fprintf(stderr, "forky-fork: %s\nusage: forky-fork [--count N] [--live] [--spread] [--label K=V]... [--json]\n"
                  "       forky-fork --wait [--timeout SECONDS] [--json]\n"
                  "       forky-fork --result JSON [--exit-after-result]\n", why);
  return 2;
}

static int put(const char *s, size_t n) {
  if (req_len + n > LINE_MAX_OUT) return -1;
  memcpy(req + req_len, s, n);
  req_len += n;
  return 0;
}
static int puts_(const char *s) { return put(s, strlen(s)); }

/* A JSON string of s (quotes, backslashes and control characters escaped). */
static int put_json_string(const char *s) {
  if (put("\"", 1) < 0) return -1;
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    char esc[8];
    if (*p == '"' || *p == '\\') snprintf(esc, sizeof esc, "\\%c", *p);
    else if (*p < 0x20) snprintf(esc, sizeof esc, "\\u%04x", *p);
    else { esc[0] = (char)*p; esc[1] = 0; }
    if (puts_(esc) < 0) return -1;
  }
  return put("\"", 1);
}

/* The value of "key":"..." in a reply the host made (ids and roles: no escapes in them). */
static int str_field(const char *line, const char *key, char *out, size_t cap) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":\"", key);
  const char *p = strstr(line, pat);
  if (!p) return -1;
  p += strlen(pat);
  const char *q = strchr(p, '"');
  if (!q || (size_t)(q - p) >= cap) return -1;
  memcpy(out, p, (size_t)(q - p));
  out[q - p] = 0;
  return 0;
}

static long num_field(const char *line, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = strstr(line, pat);
  return p ? strtol(p + strlen(pat), NULL, 10) : -1;
}

/* Prints a JSON string value (the refusal's message) with its escapes undone, \uXXXX as '?' past ASCII. */
static void print_json_string(FILE *f, const char *p) {
  for (; *p && *p != '"'; p++) {
    if (*p != '\\') { fputc(*p, f); continue; }
    char c = *++p;
    if (!c) break;
    if (c == 'n') fputc('\n', f);
    else if (c == 't') fputc('\t', f);
    else if (c == 'u') {
      unsigned v = 0;
      for (int i = 0; i < 4 && p[1]; i++) { char h = *++p; v = v * 16 + (unsigned)(h <= '9' ? h - '0' : (h | 32) - 'a' + 10); }
      fputc(v < 0x80 && v >= 0x20 ? (int)v : '?', f);
    } else fputc(c, f);
  }
}

/* Reads the reply to this request (the first line with its id) from the port; lines with another id
 * are skipped, and what follows a newline in one read is kept for the next line. Waits out a host
 * that is not connected (hostd restarting). */
static char *read_reply(int fd) {
  size_t cap = 8192, len = 0;
  char *buf = malloc(cap);
  sigset_t io;
  sigemptyset(&io);
  sigaddset(&io, SIGIO);
  struct timespec second = {1, 0};
  while (buf) {
    char *nl;
    while ((nl = memchr(buf, '\n', len))) {
      char got[24] = "";
      *nl = 0;
      if (str_field(buf, "id", got, sizeof got) == 0 && !strcmp(got, id)) return buf;
      size_t used = (size_t)(nl + 1 - buf);
      memmove(buf, nl + 1, len - used);
      len -= used;
    }
    if (len + 4096 > cap) {
      if (cap >= REPLY_MAX) { fprintf(stderr, "forky-fork: reply over %d bytes\n", REPLY_MAX); exit(3); }
      char *n = realloc(buf, cap *= 2);
      if (!n) break;
      buf = n;
    }
    ssize_t r = read(fd, buf + len, cap - len - 1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) { perror("forky-fork: read " PORT); exit(3); }
    if (r == 0) { sigtimedwait(&io, NULL, &second); continue; } /* the host is away: SIGIO says when it is back */
    len += (size_t)r;
  }
  fprintf(stderr, "forky-fork: out of memory\n");
  exit(3);
}

static int write_env(const char *line) {
  char vm[64] = "", parent[64] = "";
  str_field(line, "vm", vm, sizeof vm);
  str_field(line, "parent", parent, sizeof parent);
  mkdir("/run/forky", 0755);
  FILE *f = fopen(ENV_FILE ".tmp", "w");
  if (!f) return -1;
  fprintf(f, "FORKY_FORK_INDEX=%ld\nFORKY_FORK_COUNT=%ld\nFORKY_VM_ID=%s\nFORKY_FORK_PARENT=%s\n", num_field(line, "index"),
          num_field(line, "count"), vm, parent);
  if (fclose(f) != 0) return -1;
  return rename(ENV_FILE ".tmp", ENV_FILE);
}

int main(int argc, char **argv) {
  long count = 1, timeout = -1;
  int live = 0, spread = 0, json = 0, wait = 0, exit_after = 0, labels = 0;
  const char *result = NULL;
  char lab[LINE_MAX_OUT + 1] = "";
  size_t lab_len = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    int more = i + 1 < argc;
    if (!strcmp(a, "--count") && more) {
      char *end;
      count = strtol(argv[++i], &end, 10);
      if (*end || count < 1 || count > 1000) return usage("--count takes 1..1000");
    } else if (!strcmp(a, "--live")) live = 1;
    else if (!strcmp(a, "--spread")) spread = 1;
    else if (!strcmp(a, "--json")) json = 1;
    else if (!strcmp(a, "--wait")) wait = 1;
    else if (!strcmp(a, "--exit-after-result")) exit_after = 1;
    else if (!strcmp(a, "--timeout") && more) {
      char *end;
      timeout = strtol(argv[++i], &end, 10);
      if (*end || timeout < 1 || timeout > 3600) return usage("--timeout takes 1..3600 seconds");
    } else if (!strcmp(a, "--result") && more) result = argv[++i];
    else if (!strcmp(a, "--label") && more) {
      char *kv = argv[++i], *eq = strchr(kv, '=');
      if (!eq || eq == kv) return usage("--label takes KEY=VALUE");
      /* Built in req's buffer, then moved aside: escaping is done once, in one place. */
      req_len = 0;
      *eq = 0;
      if (puts_(labels++ ? "," : "") < 0 || put_json_string(kv) < 0 || put(":", 1) < 0 || put_json_string(eq + 1) < 0 ||
          lab_len + req_len > LINE_MAX_OUT)
        return usage("labels too long");
      memcpy(lab + lab_len, req, req_len);
      lab_len += req_len;
    } else return usage("unknown or incomplete option");
  }
  if ((wait && result) || ((wait || result) && (live || spread || labels || count != 1)) || (exit_after && !result))
    return usage("--wait, --result and a fork's options do not mix");
  new_id();
  char head0[40];
  snprintf(head0, sizeof head0, "{\"v\":1,\"id\":\"%s\",", id);
  req_len = 0;
  int bad;
  if (wait) {
    char t[48] = "";
    if (timeout > 0) snprintf(t, sizeof t, ",\"timeoutMs\":%ld", timeout * 1000);
    bad = puts_(head0) < 0 || puts_("\"op\":\"wait\"") < 0 || puts_(t) < 0 || puts_("}") < 0;
  } else if (result) {
    bad = puts_(head0) < 0 || puts_("\"op\":\"result\",\"result\":") < 0 || puts_(result) < 0 ||
          puts_(exit_after ? ",\"exit\":true}" : "}") < 0;
    /* JSON may be spread over lines; the protocol may not: a newline is JSON whitespace. */
    for (size_t i = 0; i < req_len; i++) if (req[i] == '\n' || req[i] == '\r') req[i] = ' ';
  } else {
    char head[128];
    snprintf(head, sizeof head, "%s\"op\":\"fork\",\"count\":%ld,\"live\":%s,\"spread\":%s", head0, count, live ? "true" : "false",
             spread ? "true" : "false");
    bad = puts_(head) < 0 || (labels && (puts_(",\"labels\":{") < 0 || put(lab, lab_len) < 0 || puts_("}") < 0)) || puts_("}") < 0;
  }
  if (bad) return usage("request over 4096 bytes");
  req[req_len++] = '\n';
  /* The host's own deadline (a wait's, or a fork of many children under TCG) with room to spare. */
  signal(SIGALRM, on_alarm);
  alarm(wait ? (unsigned)(timeout > 0 ? timeout : 600) + 60 : result ? 600 : 1800);

  mkdir("/run/forky", 0755);
  int lock = open(LOCK, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock < 0 || flock(lock, LOCK_EX) < 0) { perror("forky-fork: " LOCK); return 3; }
  int fd = open(PORT, O_RDWR | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) { perror("forky-fork: " PORT); return 3; }
  /* What an earlier caller left unread (a reply after it was killed) is not this request's. */
  char junk[4096];
  while (read(fd, junk, sizeof junk) > 0) {}
  sigset_t io;
  sigemptyset(&io);
  sigaddset(&io, SIGIO);
  sigprocmask(SIG_BLOCK, &io, NULL);
  fcntl(fd, F_SETOWN, getpid());
  fcntl(fd, F_SETFL, (fcntl(fd, F_GETFL) & ~O_NONBLOCK) | O_ASYNC);
  for (size_t off = 0; off < req_len;) {
    ssize_t w = write(fd, req + off, req_len - off);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) { perror("forky-fork: write " PORT); return 3; }
    off += (size_t)w;
  }
  /* Blocked here across the snapshot: every child resumes in this read, with this memory. */
  char *line = read_reply(fd);
  close(fd);
  close(lock);

  alarm(0);
  /* The host writes v, id, ok first: {"v":1,"id":"<id>","ok":true */
  char ok[64];
  int okn = snprintf(ok, sizeof ok, "%s\"ok\":true", head0);
  if (strncmp(line, ok, (size_t)okn) != 0) {
    const char *m = strstr(line, "\"message\":\"");
    char code[64] = "ERROR";
    str_field(line, "code", code, sizeof code);
    fprintf(stderr, "forky-fork: %s: ", code);
    if (m) print_json_string(stderr, m + 11);
    fputc('\n', stderr);
    if (json) puts(line);
    return 1;
  }
  char role[16] = "";
  if (strncmp(line + okn, ",\"role\":", 8) == 0) str_field(line, "role", role, sizeof role);
  if (!strcmp(role, "child")) {
    if (write_env(line) < 0) { perror("forky-fork: " ENV_FILE); return 3; }
    char vm[64] = "";
    str_field(line, "vm", vm, sizeof vm);
    if (json) puts(line);
    else printf("child %ld %s\n", num_field(line, "index"), vm);
  } else if (!strcmp(role, "parent")) {
    if (json) { puts(line); return 0; }
    const char *p = strstr(line, "\"children\":[");
    for (p = p ? p + 12 : ""; (p = strchr(p, '"')); p++) {
      const char *q = strchr(++p, '"');
      if (!q) break;
      printf("%.*s\n", (int)(q - p), p);
      p = q;
    }
  } else if (wait) {
    const char *r = strstr(line, "\"results\":");
    size_t n = r ? strlen(r + 10) : 0;
    if (json || !r || n == 0) puts(line);
    else printf("%.*s\n", (int)n - 1, r + 10); /* the array, without the reply's closing brace */
  }
  return 0;
}
