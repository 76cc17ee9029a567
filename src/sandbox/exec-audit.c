/*
 * Records every execve and execveat in the box, from the host, through seccomp user
 * notification. One binary, two roles:
 *
 *   ringfence-exec-audit supervise PARENT_PID [--guard] [--queue] -- COMMAND [ARG...]   (host side)
 *   ringfence-exec-audit guard FD -- COMMAND [ARG...]      (first process in the box)
 *
 * The supervisor makes a socket pair, starts COMMAND (the shell that starts bwrap) as its child
 * with one end at descriptor 4, and writes one JSON line per exec to its own descriptor 4, a
 * pipe that ringfence reads. Inside the box, the guard installs a seccomp filter that turns
 * execve and execveat into notifications, sends the filter's listener descriptor to the
 * supervisor over FD, closes FD, and runs COMMAND. With --guard, the supervisor's child does the
 * guard's work itself and runs COMMAND, for a caller that starts no bwrap in between.
 *
 * For each notification the supervisor reads the path and argv from /proc/PID/mem, checks that
 * the notification is still live (so the PID was not reused), writes the record, and lets the call
 * go on. With --queue, which ringfence passes to its host-side supervisor, the record is queued
 * instead. The queue is written once RECORD_IDLE_MS pass without an exec, or RECORD_DELAY_MS
 * after its first record. So the command runs while ringfence reads the records, and one write
 * carries an exec and its "executed" record. Each record carries the time of its exec (timeMs),
 * and a record that cannot be written stops the box. The box cannot stop this. The supervisor runs outside the box's PID namespace and
 * cgroups, and the box cannot ptrace (the main filter denies it). The kernel allows only one
 * listener in a filter chain, so a second one fails with EBUSY. A filter the box adds cannot
 * turn a notification into ALLOW, because USER_NOTIF takes precedence. If the supervisor dies,
 * the kernel fails every later exec in the box with ENOSYS, and bwrap, whose parent death
 * signal is SIGKILL, ends the box.
 *
 * Stopping the box (SIGUSR1 from ringfence, or ringfence's death, which the parent death signal
 * turns into SIGUSR1) kills bwrap and then leaves every exec the box still attempts unanswered,
 * until the listener reports that no process in the box is left. So no command in the box
 * sees an exec fail with ENOSYS and goes on to its next step while the box is being torn down.
 *
 * NOTE: a second thread of the calling process can change the path and argv between the
 * supervisor's read and the kernel's, so the record holds what the process showed when asked.
 * To catch a swapped path, the supervisor notes the caller's current executable before letting
 * the exec go on, and once /proc/PID/exe names another file, writes an "executed" record with
 * the file the process now runs. That check runs before the same process's next exec is
 * handled, every millisecond for the first 10 ms, then every 10 ms for up to a second. An exec
 * that fails, or a process that exits before a check, gets no "executed" record.
 *
 * ringfence compiles this file with the host's C compiler on first use and caches the binary.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__)
#define NATIVE_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define NATIVE_AUDIT_ARCH AUDIT_ARCH_AARCH64
#else
#error "exec audit is built for x86_64 and aarch64 only"
#endif

/* Descriptor of the socket in the child, and of the record pipe in the supervisor. */
#define CHANNEL_FD 4
/* From <linux/seccomp.h> of Linux 6.6, for older headers. */
#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (1UL << 0)
#endif

/* Bounds of one record: longer paths and arguments are cut and the record says so. */
#define MAX_PATH_BYTES 4096
#define MAX_ARGS 64
#define MAX_ARG_BYTES 1024
#define MAX_LINE_BYTES (16 + MAX_PATH_BYTES * 6 + MAX_ARGS * (MAX_ARG_BYTES * 6 + 4) + 256)
/* Queued records are written once they reach this many bytes. */
#define RECORD_FLUSH_BYTES (64 * 1024)
/*
 * Maximum wait of a queued record while execs keep coming, in milliseconds. Each write wakes
 * ringfence and takes CPU time from the box, so frequent execs share one write per interval.
 */
#define RECORD_DELAY_MS 100
/* Time without an exec after which the queued records are written, in milliseconds. */
#define RECORD_IDLE_MS 20

static volatile sig_atomic_t forwarded_signal = 0;
static volatile sig_atomic_t stopping = 0;
static pid_t child_pid = -1;

/* Maximum wait, after bwrap is gone, for the box's last processes to be reaped, in milliseconds. */
#define STOP_DRAIN_MS 10000

static int install_filter(void) {
  struct sock_filter program[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NATIVE_AUDIT_ARCH, 0, 4),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_execve, 2, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_execveat, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
  };
  struct sock_fprog fprog = {.len = sizeof(program) / sizeof(program[0]), .filter = program};
  return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &fprog);
}

static int send_fd(int socket_fd, int fd) {
  char byte = 'L';
  struct iovec iov = {.iov_base = &byte, .iov_len = 1};
  union {
    char buffer[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control;
  memset(&control, 0, sizeof(control));
  struct msghdr message = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buffer, .msg_controllen = sizeof(control.buffer)};
  struct cmsghdr *header = CMSG_FIRSTHDR(&message);
  header->cmsg_level = SOL_SOCKET;
  header->cmsg_type = SCM_RIGHTS;
  header->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(header), &fd, sizeof(int));
  return sendmsg(socket_fd, &message, 0) == 1 ? 0 : -1;
}

/* Returns the received descriptor, or -1 when the other end closed without sending one. */
static int receive_fd(int socket_fd) {
  char byte;
  struct iovec iov = {.iov_base = &byte, .iov_len = 1};
  union {
    char buffer[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control;
  struct msghdr message = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buffer, .msg_controllen = sizeof(control.buffer)};
  ssize_t received;
  do {
    received = recvmsg(socket_fd, &message, MSG_CMSG_CLOEXEC);
  } while (received < 0 && errno == EINTR);
  if (received != 1) return -1;
  struct cmsghdr *header = CMSG_FIRSTHDR(&message);
  if (header == NULL || header->cmsg_level != SOL_SOCKET || header->cmsg_type != SCM_RIGHTS) return -1;
  int fd;
  memcpy(&fd, CMSG_DATA(header), sizeof(int));
  return fd;
}

/*
 * Finds a bare command name in PATH as execvp would, without trying an exec per entry: the
 * first entry that names an executable regular file. Each exec under the filter is a round trip
 * to the supervisor and a record, so this makes the common case one exec. Returns NULL for a
 * name with a slash, an unset PATH or no match, where the caller falls back to execvp.
 */
static const char *find_in_path(const char *name, char *found, size_t size) {
  const char *path = getenv("PATH");
  if (name[0] == '\0' || strchr(name, '/') != NULL || path == NULL) return NULL;
  size_t name_length = strlen(name);
  for (const char *entry = path;; ) {
    const char *end = strchrnul(entry, ':');
    size_t entry_length = (size_t)(end - entry);
    // An empty entry is the working directory, as in execvp.
    const char *directory = entry_length == 0 ? "." : entry;
    if (entry_length == 0) entry_length = 1;
    // A candidate this long leaves the whole PATH to execvp, whose handling of it differs
    // with the entry's length, so the command found is always execvp's.
    if (entry_length + 1 + name_length >= size) return NULL;
    memcpy(found, directory, entry_length);
    found[entry_length] = '/';
    memcpy(found + entry_length + 1, name, name_length + 1);
    struct stat info;
    if (stat(found, &info) == 0 && S_ISREG(info.st_mode) && access(found, X_OK) == 0) return found;
    if (*end == '\0') return NULL;
    entry = end + 1;
  }
}

/*
 * Installs the filter, hands its listener to the supervisor over socket_fd, closes both and
 * execs the command. Returns the exit status for a failure, having printed why.
 */
static int guard_and_exec(int socket_fd, char **command) {
  int listener = install_filter();
  if (listener < 0) {
    fprintf(stderr, "ringfence: installing the exec audit filter failed: %s; the command was not started\n", strerror(errno));
    return 126;
  }
  if (send_fd(socket_fd, listener) != 0) {
    fprintf(stderr, "ringfence: handing the exec audit listener to the host failed: %s; the command was not started\n", strerror(errno));
    return 126;
  }
  close(listener);
  close(socket_fd);
  char found[MAX_PATH_BYTES];
  const char *program = find_in_path(command[0], found, sizeof(found));
  // A found file that execv rejects (a script without #!, for one) gets execvp's full handling.
  if (program != NULL) execv(program, command);
  execvp(command[0], command);
  int code = errno == ENOENT ? 127 : 126;
  fprintf(stderr, "ringfence: %s: %s\n", command[0], strerror(errno));
  return code;
}

static int guard(int argc, char **argv) {
  if (argc < 5 || strcmp(argv[3], "--") != 0) {
    fprintf(stderr, "ringfence-exec-audit: usage: guard FD -- COMMAND [ARG...]\n");
    return 125;
  }
  return guard_and_exec(atoi(argv[2]), &argv[4]);
}

/* Appends `text` (length bytes) to `out` as the body of a JSON string; returns the new end. */
static char *append_escaped(char *out, const char *text, size_t length) {
  static const char hex[] = "0123456789abcdef";
  for (size_t i = 0; i < length; i++) {
    unsigned char c = (unsigned char)text[i];
    if (c == '"' || c == '\\') {
      *out++ = '\\';
      *out++ = (char)c;
    } else if (c < 0x20 || c == 0x7f) {
      memcpy(out, "\\u00", 4);
      out[4] = hex[c >> 4];
      out[5] = hex[c & 15];
      out += 6;
    } else {
      *out++ = (char)c;
    }
  }
  return out;
}

/*
 * Reads a NUL-terminated string of at most `max` bytes at `address` in the target. Returns its
 * length, or -1 when nothing could be read. Sets *cut when the string is longer than `max`
 * bytes, or ends in memory that could not be read.
 */
static ssize_t read_string(int mem_fd, uint64_t address, char *buffer, size_t max, int *cut) {
  // One byte more than is kept, so that a string of exactly `max` bytes ends within the read.
  ssize_t got = pread(mem_fd, buffer, max + 1, (off_t)address);
  if (got <= 0) return -1;
  char *end = memchr(buffer, '\0', (size_t)got);
  *cut = end == NULL;
  if (end != NULL) return end - buffer;
  return got > (ssize_t)max ? (ssize_t)max : got;
}

static int write_all(int fd, const char *data, size_t length) {
  while (length > 0) {
    ssize_t written = write(fd, data, length);
    if (written < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    data += written;
    length -= (size_t)written;
  }
  return 0;
}

/*
 * With --queue, records wait in `queued` and are written in batches (see the main loop). Only a
 * supervisor that nothing in the box can stop may queue. In the micro-VM's guest, root can kill
 * the supervisor, so there it writes each record before the exec goes on.
 */
static int queue_records = 0;
/* Records not yet written to CHANNEL_FD. Its size leaves room for a line of MAX_LINE_BYTES after RECORD_FLUSH_BYTES. */
static char *queued = NULL;
static size_t queued_bytes = 0;
static struct timespec queued_since;
/* When the last exec notification came; the queue is written once none has come for RECORD_IDLE_MS. */
static struct timespec last_exec;

/* Returns the wall-clock time in milliseconds since the epoch, which each record carries as timeMs. */
static long long realtime_ms(void) {
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  return (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static long elapsed_ms(const struct timespec *since) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (now.tv_sec - since->tv_sec) * 1000 + (now.tv_nsec - since->tv_nsec) / 1000000;
}

/* Writes the queued records; returns -1, with errno set, when ringfence no longer takes them. */
static int flush_records(void) {
  if (queued_bytes == 0) return 0;
  size_t length = queued_bytes;
  queued_bytes = 0;
  return write_all(CHANNEL_FD, queued, length);
}

/*
 * Queues one record line. Without --queue, or once the queue is large, it writes the queue and
 * returns -1 when that write fails.
 */
static int queue_record(const char *line, size_t length) {
  if (queued_bytes == 0) clock_gettime(CLOCK_MONOTONIC, &queued_since);
  memcpy(queued + queued_bytes, line, length);
  queued_bytes += length;
  return !queue_records || queued_bytes >= RECORD_FLUSH_BYTES ? flush_records() : 0;
}

/* Returns the last number of a /proc status line such as "NSpid:\t4021\t7" (the innermost namespace's). */
static long last_number(const char *cursor) {
  long value = 0;
  char *end;
  for (;;) {
    long number = strtol(cursor, &end, 10);
    if (end == cursor) return value;
    value = number;
    cursor = end;
  }
}

/*
 * IDs of the thread that called exec, from one read of /proc/TID/status: its thread group
 * (process) ID on the host, and the process's and the thread's IDs in the box's PID namespace
 * (the last NStgid and NSpid fields). Each is 0 when it cannot be read. The two differ when a
 * thread other than the first calls exec, and a successful exec then gives that thread the
 * process's ID, so records name the process.
 */
struct caller_ids {
  pid_t tgid;
  long box_pid;
  long box_tid;
};
static struct caller_ids read_caller_ids(pid_t tid) {
  struct caller_ids ids = {0, 0, 0};
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/status", tid);
  FILE *file = fopen(path, "re");
  if (file == NULL) return ids;
  char line[256];
  while (fgets(line, sizeof(line), file) != NULL) {
    if (strncmp(line, "Tgid:", 5) == 0) {
      ids.tgid = (pid_t)strtol(line + 5, NULL, 10);
    } else if (strncmp(line, "NStgid:", 7) == 0) {
      ids.box_pid = last_number(line + 7);
    } else if (strncmp(line, "NSpid:", 6) == 0) {
      ids.box_tid = last_number(line + 6);
      // NSpid comes after Tgid and NStgid in the file.
      break;
    }
  }
  fclose(file);
  return ids;
}

/* Returns whether `path`, as the process sees it (its root, or its working directory), exists. */
static int path_exists(pid_t pid, const char *path) {
  char full[MAX_PATH_BYTES + 64];
  if (path[0] == '/') snprintf(full, sizeof(full), "/proc/%d/root%s", pid, path);
  else snprintf(full, sizeof(full), "/proc/%d/cwd/%s", pid, path);
  return faccessat(AT_FDCWD, full, F_OK, AT_EACCESS) == 0;
}

static char scratch_path[MAX_PATH_BYTES];

/* An allowed exec whose result is not known yet: the caller's executable before the exec. */
struct pending_exec {
  pid_t tid;
  pid_t tgid;
  long box_pid;
  dev_t dev;
  ino_t ino;
  int ticks;
};
#define MAX_PENDING 64
/*
 * Checks of a pending exec before it is given up: the first FAST_TICKS 1 ms apart, because most
 * execs complete within a millisecond and a short-lived program may exit soon after, the rest
 * PENDING_TICK_MS apart, about a second in all.
 */
#define MAX_PENDING_TICKS 100
#define FAST_TICKS 10
#define PENDING_TICK_MS 10
static struct pending_exec pending[MAX_PENDING];
static int pending_count = 0;

static void remember_exec(pid_t tid, struct caller_ids ids) {
  pid_t tgid = ids.tgid;
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/exe", tgid);
  struct stat before;
  if (tgid <= 0 || stat(path, &before) != 0) return;
  // A full table drops the oldest entry, which then gets no "executed" record.
  if (pending_count == MAX_PENDING) {
    memmove(&pending[0], &pending[1], sizeof(pending[0]) * (MAX_PENDING - 1));
    pending_count -= 1;
  }
  pending[pending_count++] = (struct pending_exec){.tid = tid, .tgid = tgid, .box_pid = ids.box_pid, .dev = before.st_dev, .ino = before.st_ino, .ticks = 0};
}

/*
 * Writes an "executed" record for each pending exec whose process now runs another file, and
 * drops those, the ones whose process is gone, and the ones checked MAX_PENDING_TICKS times
 * when `tick` is set. An exec that the process's next exec finds unresolved failed.
 */
static int resolve_pending(char *line, pid_t next_caller, int tick) {
  int kept = 0;
  for (int index = 0; index < pending_count; index++) {
    struct pending_exec entry = pending[index];
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/exe", entry.tgid);
    struct stat now;
    int done = stat(path, &now) != 0;
    if (!done && (now.st_dev != entry.dev || now.st_ino != entry.ino)) {
      char target[MAX_PATH_BYTES];
      ssize_t length = readlink(path, target, sizeof(target));
      if (length > 0) {
        char *out = line;
        out += sprintf(out, "{\"timeMs\":%lld,\"hostPid\":%d,\"pid\":%ld,\"call\":\"executed\",\"exe\":\"", realtime_ms(), entry.tgid, entry.box_pid);
        out = append_escaped(out, target, (size_t)length);
        out += sprintf(out, "\"}\n");
        if (queue_record(line, (size_t)(out - line)) != 0) return -1;
      }
      done = 1;
    }
    if (entry.tgid == next_caller || entry.tid == next_caller) done = 1;
    if (tick && ++entry.ticks >= MAX_PENDING_TICKS) done = 1;
    if (!done) pending[kept++] = entry;
  }
  pending_count = kept;
  return 0;
}

static void handle(int listener, struct seccomp_notif *request, struct seccomp_notif_resp *response, char *line, char *scratch) {
  int is_execveat = request->data.nr == __NR_execveat;
  uint64_t path_address = is_execveat ? request->data.args[1] : request->data.args[0];
  uint64_t argv_address = is_execveat ? request->data.args[2] : request->data.args[1];

  char mem_path[64];
  snprintf(mem_path, sizeof(mem_path), "/proc/%u/mem", request->pid);
  int mem_fd = open(mem_path, O_RDONLY | O_CLOEXEC);

  // The caller's earlier exec has completed or failed by now, because it is blocked here.
  if (resolve_pending(line, (pid_t)request->pid, 0) != 0) {
    fprintf(stderr, "ringfence: writing the exec audit record failed: %s; stopping the box\n", strerror(errno));
    stopping = 1;
    if (child_pid > 0) kill(child_pid, SIGKILL);
    return;
  }
  struct caller_ids caller = read_caller_ids((pid_t)request->pid);

  char *out = line;
  pid_t caller_process = caller.tgid > 0 ? caller.tgid : (pid_t)request->pid;
  out += sprintf(out, "{\"timeMs\":%lld,\"hostPid\":%d,\"pid\":%ld,\"call\":\"%s\"", realtime_ms(), caller_process, caller.box_pid, is_execveat ? "execveat" : "execve");
  if (caller_process != (pid_t)request->pid) out += sprintf(out, ",\"tid\":%ld", caller.box_tid);
  if (is_execveat) out += sprintf(out, ",\"dirfd\":%d", (int)request->data.args[0]);

  int truncated = 0;
  int unreadable = mem_fd < 0;
  if (mem_fd >= 0) {
    int cut = 0;
    ssize_t length = read_string(mem_fd, path_address, scratch, MAX_PATH_BYTES, &cut);
    if (length >= 0) {
      size_t kept = (size_t)length < MAX_PATH_BYTES - 1 ? (size_t)length : MAX_PATH_BYTES - 1;
      memcpy(scratch_path, scratch, kept);
      scratch_path[kept] = '\0';
      out += sprintf(out, ",\"path\":\"");
      out = append_escaped(out, scratch, (size_t)length);
      *out++ = '"';
      truncated |= cut;
    } else {
      unreadable = 1;
    }

    uint64_t pointers[MAX_ARGS + 1];
    ssize_t got = argv_address == 0 ? 0 : pread(mem_fd, pointers, sizeof(pointers), (off_t)argv_address);
    size_t count = got > 0 ? (size_t)got / sizeof(uint64_t) : 0;
    out += sprintf(out, ",\"argv\":[");
    size_t index = 0;
    for (; index < count && index < MAX_ARGS; index++) {
      if (pointers[index] == 0) break;
      length = read_string(mem_fd, pointers[index], scratch, MAX_ARG_BYTES, &cut);
      if (index > 0) *out++ = ',';
      *out++ = '"';
      if (length > 0) out = append_escaped(out, scratch, (size_t)length);
      *out++ = '"';
      truncated |= cut || length < 0;
    }
    *out++ = ']';
    if (index == MAX_ARGS && index < count && pointers[index] != 0) truncated = 1;
    close(mem_fd);
  }
  // execvp tries each PATH entry, so most calls for a bare name fail. The flag lets a reader
  // tell those attempts apart; the record is still written, because the file could appear
  // between this check and the kernel's.
  if (!is_execveat && !unreadable && !path_exists((pid_t)request->pid, scratch_path)) out += sprintf(out, ",\"missing\":true");
  if (truncated) out += sprintf(out, ",\"truncated\":true");
  if (unreadable) out += sprintf(out, ",\"unreadable\":true");
  out += sprintf(out, "}\n");

  // Only a notification that is still live belongs to the process that was read; otherwise the
  // caller is gone and its PID may already name another process.
  if (ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &request->id) == 0) {
    // The record is written (with --queue, queued) before the call goes on. The main loop writes
    // the queue later, so the command does not wait while ringfence reads it.
    if (queue_record(line, (size_t)(out - line)) != 0) {
      // ringfence stopped reading: without a record the exec must not happen, so it is held
      // unanswered like every exec during a stop.
      fprintf(stderr, "ringfence: writing the exec audit record failed: %s; stopping the box\n", strerror(errno));
      stopping = 1;
      if (child_pid > 0) kill(child_pid, SIGKILL);
      return;
    }
    remember_exec((pid_t)request->pid, caller);
  }

  response->id = request->id;
  response->val = 0;
  response->error = 0;
  response->flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
  // ENOENT here means the caller died or was interrupted meanwhile; nothing to do.
  ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, response);
}

static void forward_signal(int signal_number) {
  forwarded_signal = signal_number;
  if (child_pid > 0) kill(child_pid, signal_number);
}

/* Kills bwrap, whose death ends the box's PID namespace. Execs after this get no answer. */
static void stop_box(int signal_number) {
  (void)signal_number;
  stopping = 1;
  if (child_pid > 0) kill(child_pid, SIGKILL);
}

static int exit_like(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  int signal_number = WTERMSIG(status);
  struct rlimit no_core = {0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  signal(signal_number, SIG_DFL);
  raise(signal_number);
  return 128 + signal_number;
}

static int supervise(int argc, char **argv) {
  // With --guard the child installs the filter itself and runs COMMAND, which saves the exec of
  // a separate guard where no bwrap runs between the two, as in the micro-VM's guest.
  int guard_in_child = 0;
  int command_index = 3;
  for (; command_index < argc && strcmp(argv[command_index], "--") != 0; command_index++) {
    if (strcmp(argv[command_index], "--guard") == 0) guard_in_child = 1;
    else if (strcmp(argv[command_index], "--queue") == 0) queue_records = 1;
    else break;
  }
  command_index += 1;
  if (argc < command_index + 1 || strcmp(argv[command_index - 1], "--") != 0) {
    fprintf(stderr, "ringfence-exec-audit: usage: supervise PARENT_PID [--guard] [--queue] -- COMMAND [ARG...]\n");
    return 125;
  }
  char **command = &argv[command_index];
  char *parent_end;
  long expected_parent = strtol(argv[2], &parent_end, 10);
  if (*parent_end != '\0' || expected_parent <= 1) {
    fprintf(stderr, "ringfence-exec-audit: invalid parent PID %s\n", argv[2]);
    return 125;
  }

  // The box must not outlive ringfence: without it nothing enforces the timeout, reads the
  // records or checks the workspace after the run. ringfence's death stops the box in order.
  // The parent is compared with the PID ringfence passed, because it could have died before
  // prctl, and a subreaper, not only PID 1, may have adopted this process.
  struct sigaction stop = {0};
  stop.sa_handler = stop_box;
  sigaction(SIGUSR1, &stop, NULL);
  prctl(PR_SET_PDEATHSIG, SIGUSR1);
  if (getppid() != (pid_t)expected_parent) return 125;
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    fprintf(stderr, "ringfence: creating the exec audit socket failed: %s\n", strerror(errno));
    return 125;
  }

  // Ctrl-C and Ctrl-\ reach the whole foreground process group; the box decides what they do.
  signal(SIGINT, SIG_IGN);
  signal(SIGQUIT, SIG_IGN);
  // A record write to a pipe ringfence no longer reads must fail with EPIPE, which stops the
  // box and leaves its execs unanswered. SIGPIPE would end the supervisor, and the kernel
  // would then fail those execs with ENOSYS while the box is still being torn down.
  signal(SIGPIPE, SIG_IGN);
  struct sigaction forward = {0};
  forward.sa_handler = forward_signal;
  sigaction(SIGTERM, &forward, NULL);
  sigaction(SIGHUP, &forward, NULL);

  pid_t supervisor_pid = getpid();
  child_pid = fork();
  if (child_pid < 0) {
    fprintf(stderr, "ringfence: fork failed: %s\n", strerror(errno));
    return 125;
  }
  if (child_pid == 0) {
    // The box must not outlive its supervisor: without it, no exec would be recorded.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != supervisor_pid) _exit(125);
    signal(SIGINT, SIG_DFL);
    signal(SIGQUIT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    signal(SIGUSR1, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    // The socket replaces the record pipe at CHANNEL_FD, so the command cannot write records.
    if (dup2(pair[1], CHANNEL_FD) < 0) _exit(125);
    if (guard_in_child) _exit(guard_and_exec(CHANNEL_FD, command));
    execvp(command[0], command);
    fprintf(stderr, "ringfence: %s: %s\n", command[0], strerror(errno));
    _exit(125);
  }
  close(pair[1]);
  // A stop that came before the fork found no child to kill.
  if (stopping) kill(child_pid, SIGKILL);

  int listener = receive_fd(pair[0]);
  close(pair[0]);
  // As SCHED_BATCH, the timer wake-ups (checks, queue writes) wait for a busy CPU's time slice
  // instead of preempting the box. That is safe only with the sync wake-up flag, which runs an
  // exec notification at once on the caller's CPU. Kernels before 6.6, as in the micro-VM
  // guest, reject the flag, so there the supervisor keeps the normal policy.
  if (listener >= 0 && ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP) == 0) {
    struct sched_param no_priority = {0};
    sched_setscheduler(0, SCHED_BATCH, &no_priority);
  }

  struct seccomp_notif_sizes sizes;
  if (syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES, 0, &sizes) != 0) {
    sizes.seccomp_notif = sizeof(struct seccomp_notif);
    sizes.seccomp_notif_resp = sizeof(struct seccomp_notif_resp);
  }
  struct seccomp_notif *request = calloc(1, sizes.seccomp_notif > sizeof(struct seccomp_notif) ? sizes.seccomp_notif : sizeof(struct seccomp_notif));
  struct seccomp_notif_resp *response = calloc(1, sizes.seccomp_notif_resp > sizeof(struct seccomp_notif_resp) ? sizes.seccomp_notif_resp : sizeof(struct seccomp_notif_resp));
  char *line = malloc(MAX_LINE_BYTES);
  char *scratch = malloc((MAX_PATH_BYTES > MAX_ARG_BYTES ? MAX_PATH_BYTES : MAX_ARG_BYTES) + 1);
  queued = malloc(RECORD_FLUSH_BYTES + MAX_LINE_BYTES);
  if (request == NULL || response == NULL || line == NULL || scratch == NULL || queued == NULL) {
    kill(child_pid, SIGKILL);
    return 125;
  }

  int child_fd = (int)syscall(SYS_pidfd_open, child_pid, 0);
  int status = 0;
  int child_done = 0;
  while (!child_done) {
    struct pollfd fds[2] = {{.fd = child_fd, .events = POLLIN}, {.fd = listener, .events = POLLIN}};
    int timeout_ms = child_fd >= 0 ? -1 : 100;
    if (pending_count > 0) timeout_ms = pending[pending_count - 1].ticks < FAST_TICKS ? 1 : PENDING_TICK_MS;
    // During a stop the queue waits for the end (see below), so it sets no timeout, which would
    // otherwise be 0 once due and spin this loop until the box's processes are reaped.
    if (queued_bytes > 0 && !stopping) {
      long idle_left = RECORD_IDLE_MS - elapsed_ms(&last_exec);
      long delay_left = RECORD_DELAY_MS - elapsed_ms(&queued_since);
      long flush_in = idle_left < delay_left ? idle_left : delay_left;
      if (flush_in < 0) flush_in = 0;
      if (timeout_ms < 0 || timeout_ms > flush_in) timeout_ms = (int)flush_in;
    }
    int ready = poll(fds, listener >= 0 ? 2 : 1, timeout_ms);
    if (ready < 0 && errno != EINTR) break;
    if (pending_count > 0 && !stopping && resolve_pending(line, 0, ready == 0) != 0) {
      stopping = 1;
      kill(child_pid, SIGKILL);
    }
    // A wait also ends for the checks of pending execs, so the idle time is measured from the
    // last exec, not taken from a timed-out wait.
    if (queued_bytes > 0 && !stopping && (elapsed_ms(&last_exec) >= RECORD_IDLE_MS || elapsed_ms(&queued_since) >= RECORD_DELAY_MS) && flush_records() != 0) {
      fprintf(stderr, "ringfence: writing the exec audit records failed: %s; stopping the box\n", strerror(errno));
      stopping = 1;
      kill(child_pid, SIGKILL);
    }

    if (listener >= 0 && (fds[1].revents & POLLIN)) {
      memset(request, 0, sizes.seccomp_notif);
      // During a stop a received exec gets no answer: its caller waits until the kernel kills it.
      if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, request) == 0 && !stopping) {
        clock_gettime(CLOCK_MONOTONIC, &last_exec);
        handle(listener, request, response, line, scratch);
      }
    } else if (listener >= 0 && (fds[1].revents & (POLLHUP | POLLERR))) {
      // Every process under the filter is gone.
      close(listener);
      listener = -1;
    }

    if (child_fd < 0 || (fds[0].revents & POLLIN)) {
      pid_t done = waitpid(child_pid, &status, child_fd < 0 ? WNOHANG : 0);
      if (done == child_pid) child_done = 1;
    }
  }
  if (!child_done) {
    kill(child_pid, SIGKILL);
    waitpid(child_pid, &status, 0);
  }
  // The child is reaped, so its PID may name another process. A stop or a forwarded signal
  // during the wait below must not reach that process.
  child_pid = -1;
  // The execs of the queued records went on, so the records are written during a stop too.
  if (flush_records() != 0 && !stopping) fprintf(stderr, "ringfence: writing the exec audit records failed: %s\n", strerror(errno));

  // Closing the listener would fail the held execs with ENOSYS, so after a stop it stays open
  // until every process under the filter is gone (POLLHUP). bwrap's death ends the box's PID
  // namespace, so this takes as long as the kernel needs to kill and reap those processes.
  // Without --guard the command is bwrap, and its end by any cause (a forwarded SIGTERM, the
  // box's own exit) leaves the box's processes running for that time too, so their execs stay
  // unanswered as in a stop. With --guard, as in the micro-VM's guest, the command's background
  // processes may outlive it, and only a stop holds their execs.
  if ((stopping || !guard_in_child) && listener >= 0) {
    int waited_ms = 0;
    while (waited_ms < STOP_DRAIN_MS) {
      struct pollfd drain = {.fd = listener, .events = POLLIN};
      int ready = poll(&drain, 1, 100);
      if (ready < 0 && errno != EINTR) break;
      if (ready == 0) waited_ms += 100;
      if (drain.revents & POLLIN) {
        memset(request, 0, sizes.seccomp_notif);
        ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, request);
      } else if (drain.revents & (POLLHUP | POLLERR)) {
        break;
      }
    }
  }
  return exit_like(status);
}

int main(int argc, char **argv) {
  if (argc >= 2 && strcmp(argv[1], "guard") == 0) return guard(argc, argv);
  if (argc >= 2 && strcmp(argv[1], "supervise") == 0) return supervise(argc, argv);
  fprintf(stderr, "ringfence-exec-audit: usage: guard FD -- COMMAND... | supervise PARENT_PID [--guard] [--queue] -- COMMAND...\n");
  return 125;
}
