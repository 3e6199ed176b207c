/* Experiment, not part of the p2pdma build (RELIABILITY.md, "Known kernel bugs"):
 * mmap p2pmem with page-allocation fault injection armed for this task only, so that a
 * page-table allocation inside p2pmem_alloc_mmap()'s vm_insert_page() loop fails. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
static void make_it_fail(const char *v) {
  int fd = open("/proc/self/make-it-fail", O_WRONLY);
  if (fd < 0 || write(fd, v, 1) != 1) { perror("make-it-fail"); exit(2); }
  close(fd);
}
int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: map_fail ALLOCATE_PATH BYTES\n"); return 2; }
  size_t len = strtoull(argv[2], 0, 0);
  int fd = open(argv[1], O_RDWR);
  if (fd < 0) { perror("open"); return 2; }
  make_it_fail("1");
  void *p = mmap(0, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int err = errno;
  make_it_fail("0");
  if (p == MAP_FAILED) { printf("MMAP failed errno=%d (%s)\n", err, strerror(err)); return 1; }
  printf("MMAP ok at %p\n", p);
  munmap(p, len);
  return 0;
}
