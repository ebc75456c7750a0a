/*
 * forky-ident SEED_HEX SECONDS NANOSECONDS
 * Run in a forked child: mixes the host's fresh entropy into the kernel RNG, credits it, forces
 * the CRNG to reseed now (siblings restored from one snapshot share its state and would otherwise
 * produce the same random numbers until the next scheduled reseed), and steps the clock to the
 * host's time (it stood still while the snapshot waited). Busybox can do none of these ioctls.
 */
#include <fcntl.h>
#include <linux/random.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
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

int main(int argc, char **argv) {
  if (argc != 4) return 2;
  struct seed s = {0};
  size_t n = strlen(argv[1]) / 2;
  if (n == 0 || n > sizeof s.buf) return 2;
  for (size_t i = 0; i < n; i++) {
    int hi = hexval(argv[1][2 * i]), lo = hexval(argv[1][2 * i + 1]);
    if (hi < 0 || lo < 0) return 2;
    s.buf[i] = (unsigned char)(hi << 4 | lo);
  }
  s.entropy_count = (int)n * 8;
  s.buf_size = (int)n;
  int fd = open("/dev/urandom", O_WRONLY);
  if (fd < 0 || ioctl(fd, RNDADDENTROPY, &s) < 0) return 3;
  if (ioctl(fd, RNDRESEEDCRNG) < 0) return 4;
  close(fd);
  struct timespec ts = {.tv_sec = atoll(argv[2]), .tv_nsec = atol(argv[3])};
  if (clock_settime(CLOCK_REALTIME, &ts) < 0) return 5;
  return 0;
}
