/*
 * Makes one system call that requests a set-user-ID or set-group-ID mode, named by argv[1],
 * and prints the name, the return value and errno. The conformance suite runs it in a box and
 * then checks the file the call names. Each call names its own file, raw-NAME, which the
 * chmod-style calls expect to exist already.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

/* x32 system calls are the x86_64 numbers with bit 30 set. */
#define X32_SYSCALL_BIT 0x40000000L
#define X86_64_CHMOD 90L
/* chmod in the 32-bit compat table that int 0x80 enters. */
#define I386_CHMOD 15L
#define FCHMODAT2 452L
#define OPENAT2 437L

struct open_how_v0 {
  unsigned long long flags;
  unsigned long long mode;
  unsigned long long resolve;
};

/* Static, so a binary linked with -no-pie keeps it below 4 GiB, where int 0x80 can pass it. */
static char i386_path[] = "raw-i386-chmod";

static long try_call(const char *name) {
  if (strcmp(name, "chmod") == 0) return syscall(SYS_chmod, "raw-chmod", 04755);
  if (strcmp(name, "fchmod") == 0) {
    int fd = open("raw-fchmod", O_RDONLY);
    return fd < 0 ? -1 : syscall(SYS_fchmod, fd, 02755);
  }
  if (strcmp(name, "fchmodat") == 0) return syscall(SYS_fchmodat, AT_FDCWD, "raw-fchmodat", 04755);
  if (strcmp(name, "fchmodat2") == 0) return syscall(FCHMODAT2, AT_FDCWD, "raw-fchmodat2", 04755, 0);

  if (strcmp(name, "creat") == 0) return syscall(SYS_creat, "raw-creat", 04755);
  if (strcmp(name, "open") == 0) return syscall(SYS_open, "raw-open", O_CREAT | O_WRONLY, 04755);
  if (strcmp(name, "openat") == 0) return syscall(SYS_openat, AT_FDCWD, "raw-openat", O_CREAT | O_WRONLY, 02755);
  if (strcmp(name, "openat2") == 0) {
    struct open_how_v0 how = {O_CREAT | O_WRONLY, 04755, 0};
    return syscall(OPENAT2, AT_FDCWD, "raw-openat2", &how, sizeof how);
  }
  if (strcmp(name, "tmpfile") == 0) {
    /* An unnamed file made with a set-ID mode, then given a name. */
    int fd = syscall(SYS_openat, AT_FDCWD, ".", O_TMPFILE | O_WRONLY, 04755);
    if (fd < 0) return -1;
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    return linkat(AT_FDCWD, path, AT_FDCWD, "raw-tmpfile", AT_SYMLINK_FOLLOW);
  }
  if (strcmp(name, "mknod") == 0) return syscall(SYS_mknod, "raw-mknod", S_IFREG | 04755, 0);
  if (strcmp(name, "mknodat") == 0) return syscall(SYS_mknodat, AT_FDCWD, "raw-mknodat", S_IFREG | 02755, 0);

  if (strcmp(name, "x32-chmod") == 0) return syscall(X32_SYSCALL_BIT | X86_64_CHMOD, "raw-x32-chmod", 04755);
  if (strcmp(name, "i386-chmod") == 0) {
    long result;
    __asm__ volatile("int $0x80" : "=a"(result) : "a"(I386_CHMOD), "b"((long)i386_path), "c"(04755L) : "memory");
    if (result < 0) {
      errno = (int)-result;
      return -1;
    }
    return result;
  }
  fprintf(stderr, "unknown call %s\n", name);
  return -2;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s CALL\n", argv[0]);
    return 2;
  }
  long result = try_call(argv[1]);
  if (result == -2) return 2;
  printf("%s %ld %s\n", argv[1], result, result < 0 ? strerror(errno) : "ok");
  return 0;
}
