/* The file view benchmark's read loop (tests/bench/mount.sh): open, read, close one file N times
 * from one process and print the rate. The same loop runs on tmpfs and on the mount.
 *   readloop FILE N
 */
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>
#include <time.h>
int main(int argc, char **argv) {
  int n = atoi(argv[2]); char buf[4096];
  struct timespec a, b; clock_gettime(CLOCK_MONOTONIC, &a);
  for (int i = 0; i < n; i++) {
    int fd = open(argv[1], O_RDONLY); if (fd < 0) { perror("open"); return 1; }
    if (read(fd, buf, sizeof buf) < 0) { perror("read"); return 1; }
    close(fd);
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
  printf("%.0f reads/s (%.2f us each)\n", n / s, s / n * 1e6);
  return 0;
}
