/*
 * ringfence exec runner: the smallest exec side of the guest protocol (docs/guest-protocol.md),
 * used in the micro-VM until the full exec agent replaces it. It runs one command per OPEN on
 * a virtio-serial port, with pipes or a pseudo-terminal, forwards STDIN, SIGNAL and RESIZE, and
 * sends STARTED, STDOUT, STDERR and EXIT or FAILED. SHUTDOWN kills what it started and exits.
 *
 *   exec-runner --path /dev/vportNpM
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#define HEADER_BYTES 9
#define MAX_PAYLOAD 65536
#define INITIAL_WINDOW 262144
#define MAX_ARGS 4096

enum {
  T_HELLO = 0x01, T_SHUTDOWN = 0x02, T_OPEN = 0x10, T_STDIN = 0x11, T_STDIN_EOF = 0x12,
  T_SIGNAL = 0x13, T_RESIZE = 0x14, T_STARTED = 0x18, T_STDOUT = 0x19, T_STDERR = 0x1a,
  T_EXIT = 0x1b, T_FAILED = 0x1c, T_WINDOW = 0x20,
};

static int port = -1;
static unsigned char in_buf[HEADER_BYTES + MAX_PAYLOAD];
static size_t in_len;

/* The one command: its channel, process group, stdio descriptors and windows. */
static uint32_t channel;
static pid_t child = -1;
static int stdin_fd = -1, stdout_fd = -1, stderr_fd = -1;
static int stdin_eof_pending;
static unsigned char *stdin_buf;
static size_t stdin_len;
static uint32_t out_window;
static int exit_status = -1;

static void fail_hard(const char *what) {
  fprintf(stderr, "ringfence exec-runner: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void protocol_error(const char *what) {
  fprintf(stderr, "ringfence exec-runner: protocol error: %s\n", what);
  exit(1);
}

static void put_u32(unsigned char *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static uint32_t get_u32(const unsigned char *p) { return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]; }

/* Writes a whole frame, blocking: the host reads the port continuously. */
static void send_frame(uint32_t ch, uint8_t type, const void *payload, uint32_t length) {
  unsigned char header[HEADER_BYTES];
  put_u32(header, ch);
  header[4] = type;
  put_u32(header + 5, length);
  const unsigned char *parts[2] = {header, payload};
  size_t sizes[2] = {HEADER_BYTES, length};
  for (int i = 0; i < 2; i++) {
    size_t done = 0;
    while (done < sizes[i]) {
      ssize_t n = write(port, parts[i] + done, sizes[i] - done);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) { struct pollfd p = {.fd = port, .events = POLLOUT}; poll(&p, 1, -1); continue; }
        fail_hard("writing the virtio-serial port");
      }
      done += n;
    }
  }
}

/* A minimal JSON reader for the OPEN payload: strings, arrays of strings, objects of strings, numbers, null. */
struct reader { const char *p, *end; };

static void skip_space(struct reader *r) { while (r->p < r->end && (*r->p == ' ' || *r->p == '\n' || *r->p == '\r' || *r->p == '\t')) r->p++; }

static int expect(struct reader *r, char c) {
  skip_space(r);
  if (r->p < r->end && *r->p == c) { r->p++; return 1; }
  return 0;
}

static void put_utf8(char **out, unsigned code) {
  char *o = *out;
  if (code < 0x80) *o++ = code;
  else if (code < 0x800) { *o++ = 0xc0 | (code >> 6); *o++ = 0x80 | (code & 0x3f); }
  else if (code < 0x10000) { *o++ = 0xe0 | (code >> 12); *o++ = 0x80 | ((code >> 6) & 0x3f); *o++ = 0x80 | (code & 0x3f); }
  else { *o++ = 0xf0 | (code >> 18); *o++ = 0x80 | ((code >> 12) & 0x3f); *o++ = 0x80 | ((code >> 6) & 0x3f); *o++ = 0x80 | (code & 0x3f); }
  *out = o;
}

static int hex4(const char *p, unsigned *value) {
  *value = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    *value <<= 4;
    if (c >= '0' && c <= '9') *value |= c - '0';
    else if (c >= 'a' && c <= 'f') *value |= c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') *value |= c - 'A' + 10;
    else return 0;
  }
  return 1;
}

/* Returns a newly allocated string, or NULL on malformed input. */
static char *read_string(struct reader *r) {
  if (!expect(r, '"')) return NULL;
  char *out = malloc((r->end - r->p) * 2 + 1), *o = out;
  if (out == NULL) fail_hard("allocating");
  while (r->p < r->end && *r->p != '"') {
    char c = *r->p++;
    if (c != '\\') { *o++ = c; continue; }
    if (r->p >= r->end) break;
    c = *r->p++;
    switch (c) {
    case 'n': *o++ = '\n'; break;
    case 't': *o++ = '\t'; break;
    case 'r': *o++ = '\r'; break;
    case 'b': *o++ = '\b'; break;
    case 'f': *o++ = '\f'; break;
    case 'u': {
      unsigned code;
      if (r->end - r->p < 4 || !hex4(r->p, &code)) { free(out); return NULL; }
      r->p += 4;
      if (code >= 0xd800 && code < 0xdc00 && r->end - r->p >= 6 && r->p[0] == '\\' && r->p[1] == 'u') {
        unsigned low;
        if (hex4(r->p + 2, &low) && low >= 0xdc00 && low < 0xe000) { code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00); r->p += 6; }
      }
      put_utf8(&o, code);
      break;
    }
    default: *o++ = c;
    }
  }
  if (r->p >= r->end) { free(out); return NULL; }
  r->p++;
  *o = 0;
  return out;
}

static long read_number(struct reader *r) {
  skip_space(r);
  long value = 0;
  while (r->p < r->end && *r->p >= '0' && *r->p <= '9') value = value * 10 + (*r->p++ - '0');
  return value;
}

static int skip_null(struct reader *r) {
  skip_space(r);
  if (r->end - r->p >= 4 && memcmp(r->p, "null", 4) == 0) { r->p += 4; return 1; }
  return 0;
}

struct open_request { char *argv[MAX_ARGS + 1]; char *env[MAX_ARGS + 1]; char *cwd; int tty; struct winsize size; };

static int parse_open(const unsigned char *payload, uint32_t length, struct open_request *q) {
  struct reader r = {(const char *)payload, (const char *)payload + length};
  int argc = 0, envc = 0;
  memset(q, 0, sizeof *q);
  if (!expect(&r, '{')) return 0;
  while (!expect(&r, '}')) {
    char *key = read_string(&r);
    if (key == NULL || !expect(&r, ':')) return 0;
    if (strcmp(key, "argv") == 0) {
      if (!expect(&r, '[')) return 0;
      while (!expect(&r, ']')) {
        char *arg = read_string(&r);
        if (arg == NULL || argc >= MAX_ARGS) return 0;
        q->argv[argc++] = arg;
        expect(&r, ',');
      }
    } else if (strcmp(key, "env") == 0) {
      if (!expect(&r, '{')) return 0;
      while (!expect(&r, '}')) {
        char *name = read_string(&r);
        if (name == NULL || !expect(&r, ':')) return 0;
        char *value = read_string(&r);
        if (value == NULL || envc >= MAX_ARGS) return 0;
        char *entry = malloc(strlen(name) + strlen(value) + 2);
        if (entry == NULL) fail_hard("allocating");
        sprintf(entry, "%s=%s", name, value);
        q->env[envc++] = entry;
        free(name);
        free(value);
        expect(&r, ',');
      }
    } else if (strcmp(key, "cwd") == 0) {
      q->cwd = read_string(&r);
      if (q->cwd == NULL) return 0;
    } else if (strcmp(key, "tty") == 0) {
      if (!skip_null(&r)) {
        if (!expect(&r, '{')) return 0;
        q->tty = 1;
        while (!expect(&r, '}')) {
          char *name = read_string(&r);
          if (name == NULL || !expect(&r, ':')) return 0;
          long value = read_number(&r);
          if (strcmp(name, "rows") == 0) q->size.ws_row = value;
          if (strcmp(name, "cols") == 0) q->size.ws_col = value;
          free(name);
          expect(&r, ',');
        }
      }
    } else {
      return 0;
    }
    free(key);
    expect(&r, ',');
  }
  return argc > 0;
}

static void send_json_exit(int status) {
  char text[64];
  if (WIFSIGNALED(status)) snprintf(text, sizeof text, "{\"code\":null,\"signal\":%d}", WTERMSIG(status));
  else snprintf(text, sizeof text, "{\"code\":%d,\"signal\":null}", WEXITSTATUS(status));
  send_frame(channel, T_EXIT, text, strlen(text));
}

static void start_command(uint32_t ch, const unsigned char *payload, uint32_t length) {
  struct open_request q;
  if (child > 0) protocol_error("OPEN while a command runs");
  if (!parse_open(payload, length, &q)) protocol_error("malformed OPEN payload");
  channel = ch;
  out_window = INITIAL_WINDOW;

  int in_pipe[2], out_pipe[2], err_pipe[2], status_pipe[2];
  int master = -1;
  if (pipe2(status_pipe, O_CLOEXEC) < 0) fail_hard("pipe");
  if (q.tty) {
    if (q.size.ws_row == 0) q.size.ws_row = 24;
    if (q.size.ws_col == 0) q.size.ws_col = 80;
    child = forkpty(&master, NULL, NULL, &q.size);
  } else {
    if (pipe2(in_pipe, O_CLOEXEC) < 0 || pipe2(out_pipe, O_CLOEXEC) < 0 || pipe2(err_pipe, O_CLOEXEC) < 0) fail_hard("pipe");
    child = fork();
  }
  if (child < 0) fail_hard("fork");

  if (child == 0) {
    if (!q.tty) {
      setsid();
      dup2(in_pipe[0], 0);
      dup2(out_pipe[1], 1);
      dup2(err_pipe[1], 2);
    }
    signal(SIGPIPE, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGQUIT, SIG_DFL);
    if (q.cwd != NULL && chdir(q.cwd) < 0) {
      int e = errno;
      (void)!write(status_pipe[1], &e, sizeof e);
      _exit(126);
    }
    execvpe(q.argv[0], q.argv, q.env);
    int e = errno;
    (void)!write(status_pipe[1], &e, sizeof e);
    _exit(e == ENOENT ? 127 : 126);
  }

  close(status_pipe[1]);
  int e = 0;
  ssize_t n = read(status_pipe[0], &e, sizeof e);
  close(status_pipe[0]);
  if (n == sizeof e) {
    char text[512];
    snprintf(text, sizeof text, "{\"errno\":%d,\"message\":\"%s: %s\"}", e, e == ENOENT && q.cwd != NULL && access(q.cwd, F_OK) != 0 ? "cwd" : "exec", strerror(e));
    /* Reap it here, so the failed start ends with FAILED alone. */
    waitpid(child, NULL, 0);
    child = -1;
    if (!q.tty) { close(in_pipe[1]); close(out_pipe[0]); close(err_pipe[0]); close(in_pipe[0]); close(out_pipe[1]); close(err_pipe[1]); }
    else close(master);
    send_frame(channel, T_FAILED, text, strlen(text));
    return;
  }

  unsigned char pid[4];
  put_u32(pid, (uint32_t)child);
  send_frame(channel, T_STARTED, pid, 4);
  if (q.tty) {
    stdin_fd = master;
    stdout_fd = dup(master);
    stderr_fd = -1;
  } else {
    close(in_pipe[0]);
    close(out_pipe[1]);
    close(err_pipe[1]);
    stdin_fd = in_pipe[1];
    stdout_fd = out_pipe[0];
    stderr_fd = err_pipe[0];
    fcntl(stderr_fd, F_SETFL, O_NONBLOCK);
  }
  fcntl(stdin_fd, F_SETFL, O_NONBLOCK);
  fcntl(stdout_fd, F_SETFL, O_NONBLOCK);
}

static void flush_stdin(void) {
  while (stdin_len > 0 && stdin_fd >= 0) {
    ssize_t n = write(stdin_fd, stdin_buf, stdin_len);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      /* The command closed its input: drop what is left and grant it back. */
      n = stdin_len;
    }
    memmove(stdin_buf, stdin_buf + n, stdin_len - n);
    stdin_len -= n;
    unsigned char grant[4];
    put_u32(grant, (uint32_t)n);
    send_frame(channel, T_WINDOW, grant, 4);
  }
  if (stdin_len == 0 && stdin_eof_pending && stdin_fd >= 0) {
    /* A terminal has no end of file to send but ^D; pipes close. */
    if (stderr_fd < 0) { char eot = 4; (void)!write(stdin_fd, &eot, 1); }
    else { close(stdin_fd); stdin_fd = -1; }
    stdin_eof_pending = 0;
  }
}

static void kill_all(void) {
  if (child > 0) kill(-child, SIGKILL);
}

static void handle_frame(uint32_t ch, uint8_t type, const unsigned char *payload, uint32_t length) {
  if (ch == 0) {
    if (type == T_SHUTDOWN) { kill_all(); exit(0); }
    protocol_error("unexpected frame on the control channel");
  }
  if (type == T_OPEN) {
    if (ch % 2 != 1) protocol_error("OPEN on an even channel");
    start_command(ch, payload, length);
    return;
  }
  /* Frames for a finished channel may still arrive; they are dropped. */
  if (ch != channel || child <= 0) return;
  switch (type) {
  case T_STDIN: {
    if (stdin_len + length > INITIAL_WINDOW) protocol_error("STDIN beyond the granted window");
    unsigned char *grown = realloc(stdin_buf, stdin_len + length);
    if (grown == NULL) fail_hard("allocating");
    stdin_buf = grown;
    memcpy(stdin_buf + stdin_len, payload, length);
    stdin_len += length;
    flush_stdin();
    break;
  }
  case T_STDIN_EOF: stdin_eof_pending = 1; flush_stdin(); break;
  case T_SIGNAL: if (length == 1) kill(-child, payload[0]); break;
  case T_RESIZE:
    if (length == 4 && stderr_fd < 0 && stdin_fd >= 0) {
      struct winsize size = {.ws_row = (payload[0] << 8) | payload[1], .ws_col = (payload[2] << 8) | payload[3]};
      ioctl(stdin_fd, TIOCSWINSZ, &size);
    }
    break;
  case T_WINDOW: if (length == 4) out_window += get_u32(payload); break;
  default: protocol_error("unexpected frame type on the exec channel");
  }
}

static void read_port(void) {
  ssize_t n = read(port, in_buf + in_len, sizeof in_buf - in_len);
  if (n == 0) { kill_all(); exit(0); }
  if (n < 0) { if (errno == EAGAIN || errno == EINTR) return; fail_hard("reading the virtio-serial port"); }
  in_len += n;
  size_t offset = 0;
  while (in_len - offset >= HEADER_BYTES) {
    uint32_t ch = get_u32(in_buf + offset);
    uint8_t type = in_buf[offset + 4];
    uint32_t length = get_u32(in_buf + offset + 5);
    if (length > MAX_PAYLOAD) protocol_error("frame longer than the maximum payload");
    if (in_len - offset < HEADER_BYTES + length) break;
    handle_frame(ch, type, in_buf + offset + HEADER_BYTES, length);
    offset += HEADER_BYTES + length;
  }
  memmove(in_buf, in_buf + offset, in_len - offset);
  in_len -= offset;
}

/* Reads the command's output into frames; returns 0 at end of file. */
static int pump_output(int *fd, uint8_t type) {
  static unsigned char buf[MAX_PAYLOAD];
  size_t room = out_window < sizeof buf ? out_window : sizeof buf;
  if (room == 0) return 1;
  ssize_t n = read(*fd, buf, room);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 1;
  if (n <= 0) { close(*fd); *fd = -1; return 0; }
  out_window -= n;
  send_frame(channel, type, buf, (uint32_t)n);
  return 1;
}

static void on_child(int signal) { (void)signal; }

/* Sends what the command's output holds now, without waiting for end of file: a process the
   command left behind may keep the pipe open. */
static void drain_output(int *fd, uint8_t type) {
  static unsigned char buf[MAX_PAYLOAD];
  while (*fd >= 0) {
    ssize_t n = read(*fd, buf, sizeof buf);
    if (n > 0) { send_frame(channel, type, buf, (uint32_t)n); continue; }
    if (n < 0 && errno == EINTR) continue;
    close(*fd);
    *fd = -1;
  }
}

int main(int argc, char **argv) {
  const char *path = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--path") == 0 && i + 1 < argc) path = argv[++i];
    else { fprintf(stderr, "usage: exec-runner --path DEVICE\n"); return 2; }
  }
  if (path == NULL) { fprintf(stderr, "usage: exec-runner --path DEVICE\n"); return 2; }
  signal(SIGPIPE, SIG_IGN);
  /* SIGCHLD interrupts poll, so a command's exit is seen even while its output stays open. */
  struct sigaction action = {.sa_handler = on_child};
  sigemptyset(&action.sa_mask);
  sigaction(SIGCHLD, &action, NULL);
  port = open(path, O_RDWR | O_CLOEXEC);
  if (port < 0) fail_hard(path);

  char hello[512], release[256] = "";
  FILE *f = fopen("/proc/sys/kernel/osrelease", "r");
  if (f != NULL) { if (fgets(release, sizeof release, f) == NULL) release[0] = 0; fclose(f); }
  release[strcspn(release, "\n\"\\")] = 0;
  snprintf(hello, sizeof hello, "{\"agent\":\"exec\",\"version\":1,\"kernel\":\"%s\"}", release);
  send_frame(0, T_HELLO, hello, strlen(hello));

  for (;;) {
    struct pollfd fds[4];
    int count = 0;
    fds[count++] = (struct pollfd){.fd = port, .events = POLLIN};
    int out_index = -1, err_index = -1, in_index = -1;
    if (stdout_fd >= 0 && out_window > 0) { out_index = count; fds[count++] = (struct pollfd){.fd = stdout_fd, .events = POLLIN}; }
    if (stderr_fd >= 0 && out_window > 0) { err_index = count; fds[count++] = (struct pollfd){.fd = stderr_fd, .events = POLLIN}; }
    if (stdin_fd >= 0 && stdin_len > 0) { in_index = count; fds[count++] = (struct pollfd){.fd = stdin_fd, .events = POLLOUT}; }

    if (poll(fds, count, child > 0 && stdout_fd < 0 && stderr_fd < 0 ? 20 : -1) < 0 && errno != EINTR) fail_hard("poll");
    if (count == 0) continue;
    if (fds[0].revents & (POLLIN | POLLHUP)) read_port();
    if (out_index >= 0 && fds[out_index].revents) pump_output(&stdout_fd, T_STDOUT);
    if (err_index >= 0 && fds[err_index].revents) pump_output(&stderr_fd, T_STDERR);
    if (in_index >= 0 && fds[in_index].revents) flush_stdin();

    /* EXIT goes after stdout and stderr reached end of file. A terminal's master reports EIO
       once the last holder of the slave closes it. */
    if (child > 0 && exit_status < 0) {
      int status;
      if (waitpid(child, &status, WNOHANG) == child) exit_status = status;
    }
    if (child > 0 && exit_status >= 0) {
      drain_output(&stdout_fd, T_STDOUT);
      drain_output(&stderr_fd, T_STDERR);
      if (stdin_fd >= 0) { close(stdin_fd); stdin_fd = -1; }
      send_json_exit(exit_status);
      kill(-child, SIGKILL);
      child = -1;
      exit_status = -1;
      stdin_len = 0;
      stdin_eof_pending = 0;
    }
  }
}
