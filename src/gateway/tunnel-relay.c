/*
 * Tunnel relay: copies bytes both ways between two connected stream sockets until both
 * directions have ended, with read(2) and write(2) through a 1 MiB buffer per direction.
 *
 *   ringfence-relay IDLE_MS TOTAL_MS PARENT_PID [splice]
 *
 * fd 3 is the client socket and fd 4 the upstream socket, both already connected (the gateway
 * passes them as extra stdio). IDLE_MS ends the tunnel after that long without a byte moved
 * either way, TOTAL_MS after that long in all; 0 turns a limit off. PARENT_PID is the gateway's
 * process id: the relay stops as if by SIGTERM when that process exits, so a crashed gateway
 * leaves no tunnel open. "splice" moves the bytes through a pipe with splice(2) instead, for
 * comparison. Splice costs the relay less CPU, but in downloads over loopback the receiving
 * client then used about 1.5 times the CPU per byte, and the downloads were slower
 * (docs/benchmarks.md, "Read and write instead of splice").
 *
 * The relay reports on fd 1, one line per report. The last line is written when it exits:
 *   progress UP DOWN          at most once a second while bytes move
 *   done UP DOWN REASON       UP and DOWN are bytes written to upstream and to the client
 * REASON is "closed" when both directions ended, "idle", "total", "signal", or
 * "error:OPERATION:SIDE:ERRNO_NAME". OPERATION is read, write or poll, and SIDE is client,
 * upstream or relay. After a read or write fails, the bytes that the failed peer sent before still
 * reach the other side, and REASON names the first failure. The exit status is 0 for "closed" and
 * 1 otherwise. Status 2 means the relay could not start and did not touch either socket.
 *
 * ringfence compiles this file with the host's C compiler on first use and caches the binary.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CLIENT_FD 3
#define UPSTREAM_FD 4
/* Pipe capacity requested in splice mode; Linux allows unprivileged processes up to fs.pipe-max-size (1 MiB by default). */
#define PIPE_BYTES (1024 * 1024)
#define COPY_BUFFER_BYTES (1024 * 1024)
#define PROGRESS_INTERVAL_MS 1000

/* One direction of the tunnel: bytes read from `from` wait in the pipe (or buffer) until written to `to`. */
struct direction {
  int from;
  int to;
  /* "client" or "upstream", for error reports. */
  const char *from_name;
  const char *to_name;
  int pipe_read;
  int pipe_write;
  char *buffer;
  size_t buffer_offset;
  size_t pending;
  /* Maximum bytes in the pipe or buffer. */
  size_t capacity;
  int source_ended;
  int finished;
  /* read_failed is set when a read from `from` failed, write_failed when a write to `to` failed. */
  int read_failed;
  int write_failed;
  uint64_t written;
};

static volatile sig_atomic_t stop_signal = 0;
static int copy_mode = 1;

static void on_signal(int signal_number) { stop_signal = signal_number; }

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void report(const char *kind, const struct direction *up, const struct direction *down, const char *reason) {
  char line[160];
  int length = snprintf(line, sizeof line, "%s %llu %llu%s%s\n", kind, (unsigned long long)up->written, (unsigned long long)down->written,
                        reason == NULL ? "" : " ", reason == NULL ? "" : reason);
  ssize_t ignored = write(STDOUT_FILENO, line, (size_t)length);
  (void)ignored;
}

static int open_direction(struct direction *d, int from, int to) {
  memset(d, 0, sizeof *d);
  d->from = from;
  d->to = to;
  d->from_name = from == CLIENT_FD ? "client" : "upstream";
  d->to_name = to == CLIENT_FD ? "client" : "upstream";
  if (copy_mode) {
    d->buffer = malloc(COPY_BUFFER_BYTES);
    d->capacity = COPY_BUFFER_BYTES;
    return d->buffer == NULL ? -1 : 0;
  }
  int fds[2];
  if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) return -1;
  d->pipe_read = fds[0];
  d->pipe_write = fds[1];
  /* A larger pipe moves more per splice call; the default 64 KiB is kept when this fails. */
  fcntl(d->pipe_write, F_SETPIPE_SZ, PIPE_BYTES);
  int capacity = fcntl(d->pipe_write, F_GETPIPE_SZ);
  if (capacity <= 0) return -1;
  d->capacity = (size_t)capacity;
  return 0;
}

/* Ends the direction once its source has ended and nothing is pending: the half-close is passed on. */
static void finish_if_drained(struct direction *d) {
  if (d->finished || !d->source_ended || d->pending > 0) return;
  shutdown(d->to, SHUT_WR);
  d->finished = 1;
}

static void drop_direction(struct direction *d) {
  d->pending = 0;
  d->source_ended = 1;
  d->finished = 1;
}

/*
 * Ends the directions that a failed read or write has ended, and returns 1 if the relay goes on.
 * A failure means that the socket's peer reset or closed the connection. The bytes the peer sent
 * before that can still be read from the socket, and a direct connection would deliver them.
 * After a failed write, only that direction ends and its pending bytes are dropped. The reverse
 * direction runs until its own read ends or fails. After a failed read, the bytes already read
 * (pending in splice mode) are still written, and the reverse direction ends, because its
 * destination is gone.
 */
static int end_failed_direction(struct direction *d, struct direction *reverse) {
  if (d->write_failed) {
    if (reverse->finished) return 0;
    drop_direction(d);
    return 1;
  }
  drop_direction(reverse);
  d->source_ended = 1;
  return d->pending > 0;
}

/* Moves what it can without blocking. Returns 1 if any byte moved, 0 if none, -1 on error (errno set, *failed names "OPERATION:SIDE"). */
static int pump(struct direction *d, char *failed, size_t failed_size) {
  int moved = 0;
  for (;;) {
    int progress = 0;

    if (!d->source_ended && (copy_mode ? d->pending == 0 : d->pending < d->capacity)) {
      ssize_t n = copy_mode ? read(d->from, d->buffer, COPY_BUFFER_BYTES)
                            : splice(d->from, NULL, d->pipe_write, NULL, d->capacity - d->pending, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        d->pending += (size_t)n;
        d->buffer_offset = 0;
        progress = 1;
      } else if (n == 0) {
        d->source_ended = 1;
      } else if (errno != EAGAIN && errno != EINTR) {
        snprintf(failed, failed_size, "read:%s", d->from_name);
        d->read_failed = 1;
        return -1;
      }
    }

    if (d->pending > 0) {
      ssize_t n = copy_mode ? write(d->to, d->buffer + d->buffer_offset, d->pending)
                            : splice(d->pipe_read, NULL, d->to, NULL, d->pending, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        d->pending -= (size_t)n;
        d->buffer_offset += (size_t)n;
        d->written += (uint64_t)n;
        progress = 1;
      } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
        snprintf(failed, failed_size, "write:%s", d->to_name);
        d->write_failed = 1;
        return -1;
      }
    }

    finish_if_drained(d);
    if (!progress) return moved;
    moved = 1;
  }
}

int main(int argc, char **argv) {
  if (argc < 4 || argc > 5 || (argc == 5 && strcmp(argv[4], "splice") != 0)) {
    fprintf(stderr, "usage: ringfence-relay IDLE_MS TOTAL_MS PARENT_PID [splice]\n");
    return 2;
  }
  int64_t idle_ms = atoll(argv[1]);
  int64_t total_ms = atoll(argv[2]);
  pid_t parent = (pid_t)atol(argv[3]);
  copy_mode = argc != 5;

  /* A write to a socket or report pipe whose reader is gone must fail with EPIPE, not kill the relay. */
  signal(SIGPIPE, SIG_IGN);
  struct sigaction action = {.sa_handler = on_signal};
  sigaction(SIGTERM, &action, NULL);
  sigaction(SIGINT, &action, NULL);
  /* The stop signals stay blocked except inside ppoll, so one that arrives between the check of
   * stop_signal and the wait still ends the wait. */
  sigset_t stop_signals, wait_mask;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  sigprocmask(SIG_BLOCK, &stop_signals, &wait_mask);
  sigdelset(&wait_mask, SIGTERM);
  sigdelset(&wait_mask, SIGINT);

  /* The kernel sends SIGTERM when the parent exits. A parent that exited before this call is
   * caught by the check after it, because the relay has been reparented by then. */
  if (prctl(PR_SET_PDEATHSIG, SIGTERM) < 0 || getppid() != parent) {
    fprintf(stderr, "ringfence-relay: parent process %ld is gone or cannot be watched\n", (long)parent);
    return 2;
  }

  /* The sockets come from Node, which opened them non-blocking; the relay relies on that, so it sets it again. */
  int fds[2] = {CLIENT_FD, UPSTREAM_FD};
  for (int i = 0; i < 2; i++) {
    int flags = fcntl(fds[i], F_GETFL);
    if (flags < 0 || fcntl(fds[i], F_SETFL, flags | O_NONBLOCK) < 0) {
      fprintf(stderr, "ringfence-relay: fd %d is not open: %s\n", fds[i], strerror(errno));
      return 2;
    }
  }

  struct direction up, down;
  if (open_direction(&up, CLIENT_FD, UPSTREAM_FD) < 0 || open_direction(&down, UPSTREAM_FD, CLIENT_FD) < 0) {
    fprintf(stderr, "ringfence-relay: creating a pipe failed: %s\n", strerror(errno));
    return 2;
  }

  int64_t start = now_ms();
  int64_t last_activity = start;
  int64_t last_progress = start;
  uint64_t reported_total = 0;
  const char *reason = "closed";
  /* The first read or write failure, or NULL. */
  const char *failure = NULL;
  char failure_reason[96];
  char error_reason[96];
  char failed[32];

  while (!(up.finished && down.finished)) {
    if (stop_signal != 0) {
      reason = "signal";
      break;
    }

    int moved_up = pump(&up, failed, sizeof failed);
    int moved_down = moved_up < 0 ? 0 : pump(&down, failed, sizeof failed);
    if (moved_up < 0 || moved_down < 0) {
      /* The first failure is the tunnel's end reason, even when the reverse direction runs on. */
      if (failure == NULL) {
        const char *name = strerrorname_np(errno);
        snprintf(failure_reason, sizeof failure_reason, "error:%s:%s", failed, name != NULL ? name : "unknown");
        failure = failure_reason;
      }
      if (!(moved_up < 0 ? end_failed_direction(&up, &down) : end_failed_direction(&down, &up))) break;
      moved_up = moved_down = 1;
    }

    int64_t now = now_ms();
    if (moved_up > 0 || moved_down > 0) last_activity = now;
    if (up.written + down.written != reported_total && now - last_progress >= PROGRESS_INTERVAL_MS) {
      report("progress", &up, &down, NULL);
      reported_total = up.written + down.written;
      last_progress = now;
    }
    if (up.finished && down.finished) break;

    int64_t wait = -1;
    if (idle_ms > 0) {
      int64_t left = last_activity + idle_ms - now;
      if (left <= 0) {
        reason = "idle";
        break;
      }
      wait = left;
    }
    if (total_ms > 0) {
      int64_t left = start + total_ms - now;
      if (left <= 0) {
        reason = "total";
        break;
      }
      if (wait < 0 || left < wait) wait = left;
    }
    if (reported_total != up.written + down.written && (wait < 0 || wait > PROGRESS_INTERVAL_MS)) wait = PROGRESS_INTERVAL_MS;

    /* Wait for a readable source with room to read into, or a writable destination with bytes pending. */
    struct pollfd polled[2] = {{.fd = CLIENT_FD}, {.fd = UPSTREAM_FD}};
    if (!up.source_ended && up.pending < (copy_mode ? 1 : up.capacity)) polled[0].events |= POLLIN;
    if (!down.source_ended && down.pending < (copy_mode ? 1 : down.capacity)) polled[1].events |= POLLIN;
    if (up.pending > 0) polled[1].events |= POLLOUT;
    if (down.pending > 0) polled[0].events |= POLLOUT;
    /* poll reports POLLHUP and POLLERR even when no event is requested. A socket with nothing to
     * wait on is therefore left out, because a peer's reset would otherwise wake the loop again and again. */
    for (int i = 0; i < 2; i++) {
      if (polled[i].events == 0) polled[i].fd = -1;
    }
    struct timespec timeout = {.tv_sec = wait / 1000, .tv_nsec = (wait % 1000) * 1000000};
    if (ppoll(polled, 2, wait < 0 ? NULL : &timeout, &wait_mask) < 0 && errno != EINTR) {
      const char *name = strerrorname_np(errno);
      snprintf(error_reason, sizeof error_reason, "error:poll:relay:%s", name != NULL ? name : "unknown");
      reason = error_reason;
      break;
    }
  }

  if (failure != NULL) reason = failure;
  report("done", &up, &down, reason);
  return strcmp(reason, "closed") == 0 ? 0 : 1;
}
