/*
 * forky-ident VMID HOSTNAME MAC SEED_HEX SECONDS NANOSECONDS
 * forky-ident --serve PORT      (started at boot: applies each such line read from PORT, answers
 *                                "ok" or "err CODE WHAT"; it is in every snapshot, so a child
 *                                needs no new process to be given its identity; a line ending in
 *                                " lease" also renews the DHCP lease, for bridged networks)
 * Makes a forked child, right after it is restored, its own machine:
 *  - mixes the host's fresh entropy into the kernel RNG, credits it and forces the CRNG to reseed
 *    now (siblings restored from one snapshot share its state and would otherwise produce the
 *    same random numbers until the next scheduled reseed, up to a minute later);
 *  - steps the clock to the host's time (it stood still while the snapshot waited);
 *  - sets the hostname, the NIC's MAC (virtio-net changes it live) and /run/forky/vm-id.
 * A resident program rather than a command run through the guest agent: right after a restore,
 * under TCG, starting a process costs over 100 ms. Busybox can do none of the RNG ioctls anyway.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <linux/random.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct seed {
  int entropy_count;
  int buf_size;
  unsigned char buf[64];
};

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/* Parses `n` bytes of hex, optionally separated by ':' (a MAC), into out. */
static int parse_hex(const char *s, unsigned char *out, size_t n, int colons) {
  for (size_t i = 0; i < n; i++) {
    int hi = hexval(s[0]), lo = hi < 0 ? -1 : hexval(s[1]);
    if (lo < 0) return -1;
    out[i] = (unsigned char)(hi << 4 | lo);
    s += 2;
    if (colons && i + 1 < n && *s++ != ':') return -1;
  }
  return *s == '\0' ? 0 : -1;
}

static const char *failed_what;
static int fail(int code, const char *what) {
  failed_what = what;
  return code;
}

/* argv[1..6] as in the usage above; 0 or an error code, with failed_what set. */
static int apply(char **argv) {
  struct seed s = {0};
  size_t n = strlen(argv[4]) / 2;
  if (n == 0 || n > sizeof s.buf || parse_hex(argv[4], s.buf, n, 0) < 0) return fail(2, "seed");
  s.entropy_count = (int)n * 8;
  s.buf_size = (int)n;
  int fd = open("/dev/urandom", O_WRONLY);
  if (fd < 0 || ioctl(fd, RNDADDENTROPY, &s) < 0) return fail(3, "RNDADDENTROPY");
  if (ioctl(fd, RNDRESEEDCRNG) < 0) return fail(4, "RNDRESEEDCRNG");
  close(fd);

  struct timespec ts = {.tv_sec = atoll(argv[5]), .tv_nsec = atol(argv[6])};
  if (clock_settime(CLOCK_REALTIME, &ts) < 0) return fail(5, "clock_settime");

  if (sethostname(argv[2], strlen(argv[2])) < 0) return fail(6, "sethostname");
  mkdir("/run/forky", 0755);
  FILE *f = fopen("/run/forky/vm-id", "w");
  if (!f || fprintf(f, "%s\n", argv[1]) < 0 || fclose(f) != 0) return fail(7, "/run/forky/vm-id");

  struct ifreq ifr = {0};
  strcpy(ifr.ifr_name, "eth0");
  ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
  if (parse_hex(argv[3], (unsigned char *)ifr.ifr_hwaddr.sa_data, 6, 1) < 0) return fail(2, "mac");
  int sock = socket(AF_INET, SOCK_DGRAM, 0);
  if (sock < 0) return fail(8, "socket");
  if (ioctl(sock, SIOCSIFHWADDR, &ifr) < 0 && if_nametoindex("eth0") != 0) return fail(8, "SIOCSIFHWADDR");
  close(sock);
  return 0;
}

static void reply(int fd, int code) {
  char out[128];
  int n = code == 0 ? snprintf(out, sizeof out, "ok\n") : snprintf(out, sizeof out, "err %d %s: %s\n", code, failed_what, strerror(errno));
  /* The line can arrive before the guest has handled the host's "port open" message (another
     queue): until then the write fails (EPIPE, EAGAIN). Retry for up to a second. */
  struct timespec ms5 = {0, 5 * 1000 * 1000};
  for (int i = 0; i < 200; i++) {
    if (write(fd, out, (size_t)n) == n) return;
    nanosleep(&ms5, NULL);
  }
}

/* A new DHCP lease for the new MAC (bridged networks), in a detached process, after the answer. */
static void renew_lease(void) {
  pid_t pid = fork();
  if (pid != 0) {
    if (pid > 0) waitpid(pid, NULL, 0);
    return;
  }
  if (fork() == 0) {
    setsid();
    execl("/etc/forky/hook", "hook", "lease", (char *)NULL);
  }
  _exit(0);
}

static void handle(int fd, char *line) {
  char *argv[9] = {0};
  int argc = 1;
  for (char *tok = strtok(line, " "); tok && argc < 9; tok = strtok(NULL, " ")) argv[argc++] = tok;
  errno = 0;
  int lease = argc == 8 && strcmp(argv[7], "lease") == 0;
  int code = argc == 7 || lease ? apply(argv) : fail(2, "request");
  reply(fd, code);
  if (code == 0 && lease) renew_lease();
}

/* Sleeps until the port has news (SIGIO: data, or the host connecting), at most a second. */
static int serve(const char *port) {
  int fd = open(port, O_RDWR | O_NONBLOCK);
  if (fd < 0) {
    perror(port);
    return 9;
  }
  sigset_t io;
  sigemptyset(&io);
  sigaddset(&io, SIGIO);
  sigprocmask(SIG_BLOCK, &io, NULL);
  fcntl(fd, F_SETOWN, getpid());
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC | O_NONBLOCK);
  char line[1024];
  size_t len = 0;
  struct timespec second = {1, 0};
  for (;;) {
    ssize_t r = read(fd, line + len, sizeof line - 1 - len);
    if (r <= 0) {
      sigtimedwait(&io, NULL, &second);
      continue;
    }
    len += (size_t)r;
    char *nl;
    while ((nl = memchr(line, '\n', len))) {
      *nl = '\0';
      size_t rest = len - (size_t)(nl + 1 - line);
      handle(fd, line);
      memmove(line, nl + 1, rest);
      len = rest;
    }
    if (len >= sizeof line - 1) len = 0; /* a line too long: dropped */
  }
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--serve") == 0) return serve(argv[2]);
  if (argc != 7) {
    fprintf(stderr, "usage: forky-ident VMID HOSTNAME MAC SEED_HEX SECONDS NANOSECONDS | --serve PORT\n");
    return 2;
  }
  int code = apply(argv);
  if (code != 0) perror(failed_what);
  return code;
}
