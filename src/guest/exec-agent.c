/*
 * In-box exec agent: the exec side of the guest protocol (docs/guest-protocol.md).
 *
 *   ringfence-exec-agent --fd N [--audit PROGRAM] [--chroot DIR] [--limit-events FD] [--sync-on-shutdown]
 *   ringfence-exec-agent --path DEVICE [--audit PROGRAM] [--chroot DIR] [--limit-events FD] [--sync-on-shutdown]
 *
 * With --chroot, the agent changes its root to DIR after it opens PROGRAM and before it opens
 * DEVICE, and runs PROGRAM through that descriptor, so PROGRAM can lie outside DIR.
 * With --audit, a command whose OPEN sets "audit" runs under PROGRAM (exec-audit.c) as `PROGRAM
 * supervise AGENT_PID --guard -- COMMAND...`: the supervisor records every execve and
 * execveat of the command and its descendants, and the agent carries the records to the host as
 * AUDIT frames. With --limit-events, FD is the command cgroup's pids.events, opened before the
 * agent was chrooted. While a command whose OPEN sets "limits" runs, the agent rereads it and
 * sends LIMITS when more forks failed; HELLO then also names the agent's cgroup.
 *
 * The host opens one channel per command or file operation over the stream. The agent starts
 * each command in a session of its own, so SIGNAL reaches its whole process group. It carries
 * the command's stdio or terminal with per-channel windows, and sends EXIT once the command has
 * exited and its output reached end of file. On SHUTDOWN, on end of file of the stream, or on a
 * protocol error, the agent kills every process group it started and exits. With
 * --sync-on-shutdown (the micro-VM's init sets it), SHUTDOWN also syncs the file systems, and
 * the agent acknowledges it with a SHUTDOWN of its own before it exits.
 *
 * Every frame from the host is bounds-checked before use: the stream is the host's, but the
 * parser is small enough to check completely. The file is self-contained C99 plus POSIX and
 * Linux calls from libc, so it also builds with -static for a micro-VM's initramfs.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define HEADER_BYTES 9
#define MAX_PAYLOAD 65536
#define INITIAL_WINDOW 262144
#define MAX_CHANNELS 256
#define MAX_ARGS 4096
#define MAX_JSON_DEPTH 32
/* Descriptor on which exec-audit's supervisor writes its records. */
#define AUDIT_RECORD_FD 4
/* How often pids.events is reread while a command runs, in milliseconds. */
#define LIMIT_CHECK_MS 250

enum {
  T_HELLO = 0x01,
  T_SHUTDOWN = 0x02,
  T_LIMITS = 0x03,
  T_OPEN = 0x10,
  T_STDIN = 0x11,
  T_STDIN_EOF = 0x12,
  T_SIGNAL = 0x13,
  T_RESIZE = 0x14,
  T_STARTED = 0x18,
  T_STDOUT = 0x19,
  T_STDERR = 0x1a,
  T_EXIT = 0x1b,
  T_FAILED = 0x1c,
  T_AUDIT = 0x1d,
  T_WINDOW = 0x20,
  T_FILE_READ = 0x40,
  T_FILE_WRITE = 0x41,
  T_FILE_LIST = 0x42,
  T_FILE_STAT = 0x43,
  T_FILE_REMOVE = 0x44,
  T_FILE_MKDIR = 0x45,
};

extern char **environ;

/* ---- Output to the host ---------------------------------------------------------------- */

static int stream_fd = -1;
/* exec-audit's path inside the box, or NULL when commands run without exec records. */
static const char *audit_program = NULL;
/* The audit program, opened when the agent starts, so --chroot need not make it visible. */
static int audit_program_fd = -1;
/* The command cgroup's pids.events, or -1; and the failed-fork count last sent in LIMITS. */
static int limit_events_fd = -1;
/* Set by --sync-on-shutdown: SHUTDOWN also syncs the file systems and is acknowledged with SHUTDOWN. */
static int sync_on_shutdown;
static long long limit_hits_sent = 0;
static unsigned char frame_out[HEADER_BYTES + MAX_PAYLOAD];

static void kill_all_and_exit(int status);

static void write_all(const unsigned char *data, size_t length) {
  while (length > 0) {
    ssize_t written = write(stream_fd, data, length);
    if (written < 0) {
      if (errno == EINTR) continue;
      /* The host is gone: nothing can be reported any more. */
      kill_all_and_exit(1);
    }
    data += written;
    length -= (size_t)written;
  }
}

static void put_u32(unsigned char *at, uint32_t value) {
  at[0] = (unsigned char)(value >> 24);
  at[1] = (unsigned char)(value >> 16);
  at[2] = (unsigned char)(value >> 8);
  at[3] = (unsigned char)value;
}

static uint32_t get_u32(const unsigned char *at) {
  return ((uint32_t)at[0] << 24) | ((uint32_t)at[1] << 16) | ((uint32_t)at[2] << 8) | (uint32_t)at[3];
}

/* Sends a frame whose payload is already in frame_out after the header. */
static void send_prepared(uint32_t channel, int type, size_t length) {
  put_u32(frame_out, channel);
  frame_out[4] = (unsigned char)type;
  put_u32(frame_out + 5, (uint32_t)length);
  write_all(frame_out, HEADER_BYTES + length);
}

static void send_frame(uint32_t channel, int type, const void *payload, size_t length) {
  if (length > MAX_PAYLOAD) length = MAX_PAYLOAD;
  if (length > 0) memcpy(frame_out + HEADER_BYTES, payload, length);
  send_prepared(channel, type, length);
}

static void send_u32(uint32_t channel, int type, uint32_t value) {
  unsigned char payload[4];
  put_u32(payload, value);
  send_frame(channel, type, payload, 4);
}

/* ---- Growable byte buffer and JSON output ------------------------------------------------ */

struct buffer {
  char *data;
  size_t length;
  size_t capacity;
};

static void buffer_append(struct buffer *buffer, const char *data, size_t length) {
  if (buffer->length + length + 1 > buffer->capacity) {
    size_t capacity = buffer->capacity == 0 ? 256 : buffer->capacity;
    while (buffer->length + length + 1 > capacity) capacity *= 2;
    char *grown = realloc(buffer->data, capacity);
    if (grown == NULL) kill_all_and_exit(1);
    buffer->data = grown;
    buffer->capacity = capacity;
  }
  memcpy(buffer->data + buffer->length, data, length);
  buffer->length += length;
  buffer->data[buffer->length] = '\0';
}

static void buffer_text(struct buffer *buffer, const char *text) { buffer_append(buffer, text, strlen(text)); }

static void buffer_number(struct buffer *buffer, long long value) {
  char digits[32];
  int length = snprintf(digits, sizeof digits, "%lld", value);
  buffer_append(buffer, digits, (size_t)length);
}

/* Appends a JSON string. Bytes of 0x80 and above pass through: names are usually UTF-8, and the
 * host decodes them with replacement characters where they are not. */
static void buffer_json_string(struct buffer *buffer, const char *text) {
  buffer_append(buffer, "\"", 1);
  for (const unsigned char *at = (const unsigned char *)text; *at != '\0'; at++) {
    if (*at == '"' || *at == '\\') {
      char escaped[2] = {'\\', (char)*at};
      buffer_append(buffer, escaped, 2);
    } else if (*at < 0x20) {
      char escaped[8];
      snprintf(escaped, sizeof escaped, "\\u%04x", *at);
      buffer_append(buffer, escaped, 6);
    } else {
      buffer_append(buffer, (const char *)at, 1);
    }
  }
  buffer_append(buffer, "\"", 1);
}

static void send_failed(uint32_t channel, int error, const char *what, const char *value) {
  struct buffer json = {0};
  char message[512];
  snprintf(message, sizeof message, "%s %s: %s", what, value, strerror(error));
  buffer_text(&json, "{\"errno\":");
  buffer_number(&json, error);
  buffer_text(&json, ",\"message\":");
  buffer_json_string(&json, message);
  buffer_text(&json, "}");
  send_frame(channel, T_FAILED, json.data, json.length);
  free(json.data);
}

/* ---- JSON input (OPEN and file operation payloads) -------------------------------------- */

struct json {
  const char *at;
  const char *end;
  int depth;
};

static void json_space(struct json *json) {
  while (json->at < json->end && (*json->at == ' ' || *json->at == '\t' || *json->at == '\n' || *json->at == '\r')) json->at++;
}

static int json_take(struct json *json, char expected) {
  json_space(json);
  if (json->at >= json->end || *json->at != expected) return -1;
  json->at++;
  return 0;
}

static int json_peek(struct json *json) {
  json_space(json);
  return json->at < json->end ? (unsigned char)*json->at : -1;
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static int json_hex4(struct json *json, unsigned *out) {
  if (json->end - json->at < 4) return -1;
  unsigned value = 0;
  for (int i = 0; i < 4; i++) {
    int digit = hex_value(json->at[i]);
    if (digit < 0) return -1;
    value = value * 16 + (unsigned)digit;
  }
  json->at += 4;
  *out = value;
  return 0;
}

static size_t utf8_encode(unsigned code, char *out) {
  if (code < 0x80) {
    out[0] = (char)code;
    return 1;
  }
  if (code < 0x800) {
    out[0] = (char)(0xc0 | (code >> 6));
    out[1] = (char)(0x80 | (code & 0x3f));
    return 2;
  }
  if (code < 0x10000) {
    out[0] = (char)(0xe0 | (code >> 12));
    out[1] = (char)(0x80 | ((code >> 6) & 0x3f));
    out[2] = (char)(0x80 | (code & 0x3f));
    return 3;
  }
  out[0] = (char)(0xf0 | (code >> 18));
  out[1] = (char)(0x80 | ((code >> 12) & 0x3f));
  out[2] = (char)(0x80 | ((code >> 6) & 0x3f));
  out[3] = (char)(0x80 | (code & 0x3f));
  return 4;
}

/* Decodes a JSON string into a new NUL-terminated string. A NUL inside is rejected, because
 * argv, environment entries and paths cannot carry one. Decoded text is never longer than its
 * escaped form, so the allocation below bounds every write. */
static int json_string(struct json *json, char **out) {
  if (json_take(json, '"') < 0) return -1;
  char *text = malloc((size_t)(json->end - json->at) + 1);
  if (text == NULL) return -1;
  size_t length = 0;
  for (;;) {
    if (json->at >= json->end) goto invalid;
    unsigned char c = (unsigned char)*json->at++;
    if (c == '"') break;
    if (c < 0x20) goto invalid;
    if (c != '\\') {
      text[length++] = (char)c;
      continue;
    }
    if (json->at >= json->end) goto invalid;
    char escape = *json->at++;
    unsigned code;
    switch (escape) {
      case '"': text[length++] = '"'; break;
      case '\\': text[length++] = '\\'; break;
      case '/': text[length++] = '/'; break;
      case 'b': text[length++] = '\b'; break;
      case 'f': text[length++] = '\f'; break;
      case 'n': text[length++] = '\n'; break;
      case 'r': text[length++] = '\r'; break;
      case 't': text[length++] = '\t'; break;
      case 'u':
        if (json_hex4(json, &code) < 0 || code == 0) goto invalid;
        if (code >= 0xd800 && code <= 0xdbff) {
          unsigned low;
          if (json->end - json->at < 6 || json->at[0] != '\\' || json->at[1] != 'u') goto invalid;
          json->at += 2;
          if (json_hex4(json, &low) < 0 || low < 0xdc00 || low > 0xdfff) goto invalid;
          code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
        } else if (code >= 0xdc00 && code <= 0xdfff) {
          goto invalid;
        }
        length += utf8_encode(code, text + length);
        break;
      default:
        goto invalid;
    }
  }
  text[length] = '\0';
  *out = text;
  return 0;
invalid:
  free(text);
  return -1;
}

static int json_integer(struct json *json, long long *out) {
  json_space(json);
  int negative = 0;
  if (json->at < json->end && *json->at == '-') {
    negative = 1;
    json->at++;
  }
  if (json->at >= json->end || *json->at < '0' || *json->at > '9') return -1;
  long long value = 0;
  while (json->at < json->end && *json->at >= '0' && *json->at <= '9') {
    if (value > (LLONG_MAX - 9) / 10) return -1;
    value = value * 10 + (*json->at++ - '0');
  }
  /* Fractions and exponents are not used by any field. */
  if (json->at < json->end && (*json->at == '.' || *json->at == 'e' || *json->at == 'E')) return -1;
  *out = negative ? -value : value;
  return 0;
}

static int json_literal(struct json *json, const char *literal) {
  json_space(json);
  size_t length = strlen(literal);
  if ((size_t)(json->end - json->at) < length || memcmp(json->at, literal, length) != 0) return -1;
  json->at += length;
  return 0;
}

static int json_boolean(struct json *json, int *out) {
  if (json_literal(json, "true") == 0) {
    *out = 1;
    return 0;
  }
  if (json_literal(json, "false") == 0) {
    *out = 0;
    return 0;
  }
  return -1;
}

/* Skips any value, for keys this version does not use. */
static int json_skip(struct json *json) {
  int c = json_peek(json);
  if (c == '"') {
    char *ignored;
    if (json_string(json, &ignored) < 0) return -1;
    free(ignored);
    return 0;
  }
  if (c == '{' || c == '[') {
    if (++json->depth > MAX_JSON_DEPTH) return -1;
    char close = c == '{' ? '}' : ']';
    json->at++;
    if (json_peek(json) == close) {
      json->at++;
      json->depth--;
      return 0;
    }
    for (;;) {
      if (c == '{') {
        char *ignored;
        if (json_string(json, &ignored) < 0) return -1;
        free(ignored);
        if (json_take(json, ':') < 0) return -1;
      }
      if (json_skip(json) < 0) return -1;
      if (json_take(json, ',') == 0) continue;
      if (json_take(json, close) < 0) return -1;
      json->depth--;
      return 0;
    }
  }
  if (c == 't' || c == 'f') {
    int ignored;
    return json_boolean(json, &ignored);
  }
  if (c == 'n') return json_literal(json, "null");
  long long ignored;
  return json_integer(json, &ignored);
}

/* The fields of OPEN and of the file operations; each operation reads the ones it uses. */
struct request {
  char **argv;
  size_t argc;
  char **env;
  size_t envc;
  char *cwd;
  char *path;
  int tty;
  long long rows, cols;
  long long mode;
  int append, recursive, parents;
  /* OPEN's opt-ins: run the command under exec-audit, and report failed forks with LIMITS. */
  int audit, limits;
};

static void request_free(struct request *request) {
  for (size_t i = 0; i < request->argc; i++) free(request->argv[i]);
  for (size_t i = 0; i < request->envc; i++) free(request->env[i]);
  free(request->argv);
  free(request->env);
  free(request->cwd);
  free(request->path);
}

static int parse_argv(struct json *json, struct request *request) {
  if (request->argv != NULL || json_take(json, '[') < 0) return -1;
  request->argv = calloc(MAX_ARGS + 1, sizeof(char *));
  if (request->argv == NULL) return -1;
  if (json_peek(json) == ']') return json_take(json, ']');
  for (;;) {
    if (request->argc >= MAX_ARGS) return -1;
    if (json_string(json, &request->argv[request->argc]) < 0) return -1;
    request->argc++;
    if (json_take(json, ',') == 0) continue;
    return json_take(json, ']');
  }
}

static int parse_env(struct json *json, struct request *request) {
  if (request->env != NULL || json_take(json, '{') < 0) return -1;
  request->env = calloc(MAX_ARGS + 1, sizeof(char *));
  if (request->env == NULL) return -1;
  if (json_peek(json) == '}') return json_take(json, '}');
  for (;;) {
    char *name = NULL, *value = NULL;
    if (request->envc >= MAX_ARGS || json_string(json, &name) < 0) return -1;
    if (name[0] == '\0' || strchr(name, '=') != NULL || json_take(json, ':') < 0 || json_string(json, &value) < 0) {
      free(name);
      free(value);
      return -1;
    }
    size_t length = strlen(name) + strlen(value) + 2;
    char *entry = malloc(length);
    if (entry != NULL) snprintf(entry, length, "%s=%s", name, value);
    free(name);
    free(value);
    if (entry == NULL) return -1;
    request->env[request->envc++] = entry;
    if (json_take(json, ',') == 0) continue;
    return json_take(json, '}');
  }
}

static int parse_tty(struct json *json, struct request *request) {
  if (json_literal(json, "null") == 0) return 0;
  if (json_take(json, '{') < 0) return -1;
  request->tty = 1;
  request->rows = 24;
  request->cols = 80;
  if (json_peek(json) == '}') return json_take(json, '}');
  for (;;) {
    char *key;
    if (json_string(json, &key) < 0) return -1;
    int result = json_take(json, ':');
    if (result == 0 && strcmp(key, "rows") == 0) result = json_integer(json, &request->rows);
    else if (result == 0 && strcmp(key, "cols") == 0) result = json_integer(json, &request->cols);
    else if (result == 0) result = json_skip(json);
    free(key);
    if (result < 0) return -1;
    if (json_take(json, ',') == 0) continue;
    if (json_take(json, '}') < 0) return -1;
    return request->rows >= 1 && request->rows <= 65535 && request->cols >= 1 && request->cols <= 65535 ? 0 : -1;
  }
}

static int parse_nullable_string(struct json *json, char **out) {
  if (json_literal(json, "null") == 0) return 0;
  if (*out != NULL) return -1;
  return json_string(json, out);
}

/* Parses one payload object. Unknown keys are skipped so a newer host can add optional ones. */
static int parse_request(const unsigned char *payload, size_t length, struct request *request) {
  struct json json = {(const char *)payload, (const char *)payload + length, 0};
  memset(request, 0, sizeof *request);
  request->mode = -1;
  if (json_take(&json, '{') < 0) return -1;
  if (json_peek(&json) != '}') {
    for (;;) {
      char *key;
      if (json_string(&json, &key) < 0) return -1;
      int result = json_take(&json, ':');
      if (result < 0) {
      } else if (strcmp(key, "argv") == 0) {
        result = parse_argv(&json, request);
      } else if (strcmp(key, "env") == 0) {
        result = parse_env(&json, request);
      } else if (strcmp(key, "cwd") == 0) {
        result = parse_nullable_string(&json, &request->cwd);
      } else if (strcmp(key, "path") == 0) {
        result = parse_nullable_string(&json, &request->path);
      } else if (strcmp(key, "tty") == 0) {
        result = parse_tty(&json, request);
      } else if (strcmp(key, "mode") == 0) {
        result = json_integer(&json, &request->mode);
        if (result == 0 && (request->mode < 0 || request->mode > 07777)) result = -1;
      } else if (strcmp(key, "append") == 0) {
        result = json_boolean(&json, &request->append);
      } else if (strcmp(key, "recursive") == 0) {
        result = json_boolean(&json, &request->recursive);
      } else if (strcmp(key, "parents") == 0) {
        result = json_boolean(&json, &request->parents);
      } else if (strcmp(key, "audit") == 0) {
        result = json_boolean(&json, &request->audit);
      } else if (strcmp(key, "limits") == 0) {
        result = json_boolean(&json, &request->limits);
      } else {
        result = json_skip(&json);
      }
      free(key);
      if (result < 0) return -1;
      if (json_take(&json, ',') == 0) continue;
      if (json_take(&json, '}') < 0) return -1;
      break;
    }
  } else {
    json.at++;
  }
  json_space(&json);
  return json.at == json.end ? 0 : -1;
}

/* ---- Channels -------------------------------------------------------------------------- */

struct channel {
  int used;
  uint32_t id;
  /* Process group leader of the command, 0 for a file operation. */
  pid_t pid;
  int reaped;
  int status;
  int tty;
  /* stdout and stderr read ends; with a terminal, out[0] is the master and out[1] is -1. A file
   * read puts the file in out[0]. */
  int out[2];
  /* Read end of the exec records pipe from the command's exec-audit supervisor, or -1. */
  int audit_fd;
  /* Set when OPEN asked for LIMITS reports while the command runs. */
  int limits;
  /* Result text of a listing or stat, sent as STDOUT. */
  struct buffer result;
  size_t result_sent;
  /* Destination of STDIN: the command's stdin pipe, the terminal's master, or a file being written. */
  int in_fd;
  int in_is_file;
  unsigned char *in_buffer;
  size_t in_length;
  int in_eof;
  /* Bytes the host may still send as STDIN before the agent grants more. */
  uint32_t receive_window;
  /* Bytes the agent may still send as STDOUT or STDERR before the host grants more. */
  uint64_t send_window;
  /* Set when a file operation failed after it started: reported with FAILED instead of EXIT. */
  int error;
  const char *error_what;
};

static struct channel channels[MAX_CHANNELS];
static uint32_t highest_opened;
static int child_pipe[2] = {-1, -1};

static void kill_all(void) {
  for (int i = 0; i < MAX_CHANNELS; i++) {
    if (channels[i].used && channels[i].pid > 0 && !channels[i].reaped) kill(-channels[i].pid, SIGKILL);
  }
}

static void kill_all_and_exit(int status) {
  kill_all();
  _exit(status);
}

static void protocol_error(const char *what, uint32_t channel) {
  fprintf(stderr, "ringfence-exec-agent: protocol error on channel %u: %s; stopping every command\n", channel, what);
  kill_all_and_exit(2);
}

static struct channel *find_channel(uint32_t id) {
  for (int i = 0; i < MAX_CHANNELS; i++) {
    if (channels[i].used && channels[i].id == id) return &channels[i];
  }
  return NULL;
}

static struct channel *new_channel(uint32_t id) {
  for (int i = 0; i < MAX_CHANNELS; i++) {
    if (channels[i].used) continue;
    struct channel *channel = &channels[i];
    memset(channel, 0, sizeof *channel);
    channel->used = 1;
    channel->id = id;
    channel->out[0] = channel->out[1] = channel->in_fd = channel->audit_fd = -1;
    channel->reaped = 1;
    channel->receive_window = INITIAL_WINDOW;
    channel->send_window = INITIAL_WINDOW;
    return channel;
  }
  return NULL;
}

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

static void close_input(struct channel *channel) {
  if (channel->in_fd >= 0 && !(channel->tty && channel->in_fd == channel->out[0])) close(channel->in_fd);
  channel->in_fd = -1;
  /* Bytes still buffered are dropped; grant them back so the host's window stays balanced. */
  if (channel->in_length > 0) send_u32(channel->id, T_WINDOW, (uint32_t)channel->in_length);
  channel->in_length = 0;
  free(channel->in_buffer);
  channel->in_buffer = NULL;
}

static void release(struct channel *channel) {
  close_input(channel);
  close_fd(&channel->out[0]);
  close_fd(&channel->out[1]);
  close_fd(&channel->audit_fd);
  free(channel->result.data);
  channel->used = 0;
}

/* Sends EXIT or FAILED when the channel has nothing left to deliver, and frees it. */
static void finish_if_done(struct channel *channel) {
  if (!channel->reaped || channel->out[0] >= 0 || channel->out[1] >= 0 || channel->audit_fd >= 0) return;
  if (channel->result_sent < channel->result.length) return;
  if (channel->in_is_file && channel->error == 0 && !(channel->in_eof && channel->in_length == 0)) return;

  if (channel->in_is_file && channel->error == 0) {
    int fd = channel->in_fd;
    channel->in_fd = -1;
    if (close(fd) < 0) {
      channel->error = errno;
      channel->error_what = "closing";
    }
  }
  if (channel->error != 0) {
    send_failed(channel->id, channel->error, channel->error_what, "the file");
  } else {
    char json[64];
    int length;
    if (channel->pid > 0 && WIFSIGNALED(channel->status)) length = snprintf(json, sizeof json, "{\"code\":null,\"signal\":%d}", WTERMSIG(channel->status));
    else length = snprintf(json, sizeof json, "{\"code\":%d,\"signal\":null}", channel->pid > 0 ? WEXITSTATUS(channel->status) : 0);
    send_frame(channel->id, T_EXIT, json, (size_t)length);
  }
  release(channel);
}

/* ---- Starting commands ----------------------------------------------------------------- */

static void on_sigchld(int signal_number) {
  (void)signal_number;
  int saved = errno;
  if (write(child_pipe[1], "", 1) < 0) {
    /* The pipe is full, so a wake-up is already pending. */
  }
  errno = saved;
}

static void set_nonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

/* Runs in the forked child: sets up stdio, the session and the directory, then execs. On a
 * failure it writes errno and the failing step to `report` and exits with 127. */
static void exec_child(struct request *request, char **argv, int stdin_fd, int stdout_fd, int stderr_fd, int audit_fd, int report) {
  int step = 0;
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);

  if (setsid() < 0) goto failed;
  if (request->tty && ioctl(stdin_fd, TIOCSCTTY, 0) < 0) goto failed;
  if (dup2(stdin_fd, 0) < 0 || dup2(stdout_fd, 1) < 0 || dup2(stderr_fd, 2) < 0) goto failed;
  /* dup2 onto the same number keeps close-on-exec set, so that case clears the flag instead. */
  if (audit_fd == AUDIT_RECORD_FD && fcntl(audit_fd, F_SETFD, 0) < 0) goto failed;
  if (audit_fd >= 0 && audit_fd != AUDIT_RECORD_FD && dup2(audit_fd, AUDIT_RECORD_FD) < 0) goto failed;
  step = 1;
  if (request->cwd != NULL && chdir(request->cwd) < 0) goto failed;
  step = 2;
  if (request->audit) {
    syscall(SYS_execveat, audit_program_fd, "", argv, request->env, AT_EMPTY_PATH);
  } else {
    environ = request->env;
    execvp(argv[0], argv);
  }
failed:;
  int report_words[2] = {errno, step};
  if (write(report, report_words, sizeof report_words) < 0) {
    /* The agent then reads end of file without a report, which also counts as a failure. */
  }
  _exit(127);
}

static void start_command(struct channel *channel, struct request *request) {
  int in_pipe[2] = {-1, -1}, out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1}, report[2] = {-1, -1}, audit_pipe[2] = {-1, -1};
  int master = -1, slave = -1;
  const char *what = "starting";
  const char *value = request->argv[0];
  char **argv = request->argv;
  char **wrapped = NULL;

  if (pipe2(report, O_CLOEXEC) < 0) goto failed;
  if (request->audit && audit_program == NULL) {
    errno = ENOTSUP;
    what = "recording execs (the agent has no --audit program) for";
    goto failed;
  }
  if (request->audit) {
    /* The agent's PID lets the supervisor check that its parent is still the one that started it. */
    static char agent_pid[24];
    snprintf(agent_pid, sizeof agent_pid, "%d", (int)getpid());
    const char *prefix[] = {audit_program, "supervise", agent_pid, "--guard", "--"};
    size_t prefix_count = sizeof prefix / sizeof prefix[0];
    what = "starting the exec audit for";
    wrapped = calloc(prefix_count + request->argc + 1, sizeof *wrapped);
    if (wrapped == NULL || pipe2(audit_pipe, O_CLOEXEC) < 0) goto failed;
    for (size_t i = 0; i < prefix_count; i++) wrapped[i] = (char *)prefix[i];
    for (size_t i = 0; i < request->argc; i++) wrapped[prefix_count + i] = request->argv[i];
    argv = wrapped;
  }
  if (request->tty) {
    what = "opening a terminal for";
    master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0) goto failed;
    const char *name = ptsname(master);
    if (name == NULL) goto failed;
    slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (slave < 0) goto failed;
    struct winsize size = {.ws_row = (unsigned short)request->rows, .ws_col = (unsigned short)request->cols};
    ioctl(master, TIOCSWINSZ, &size);
  } else if (pipe2(in_pipe, O_CLOEXEC) < 0 || pipe2(out_pipe, O_CLOEXEC) < 0 || pipe2(err_pipe, O_CLOEXEC) < 0) {
    goto failed;
  }

  what = "starting";
  pid_t pid = fork();
  if (pid < 0) goto failed;
  if (pid == 0) {
    if (request->tty) exec_child(request, argv, slave, slave, slave, audit_pipe[1], report[1]);
    exec_child(request, argv, in_pipe[0], out_pipe[1], err_pipe[1], audit_pipe[1], report[1]);
  }
  free(wrapped);
  wrapped = NULL;
  close_fd(&audit_pipe[1]);

  close_fd(&report[1]);
  close_fd(&slave);
  close_fd(&in_pipe[0]);
  close_fd(&out_pipe[1]);
  close_fd(&err_pipe[1]);

  /* The report pipe closes on a successful exec; otherwise it carries errno and the step. */
  int report_words[2];
  ssize_t got;
  do got = read(report[0], report_words, sizeof report_words);
  while (got < 0 && errno == EINTR);
  close_fd(&report[0]);
  if (got != 0) {
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    int error = got == (ssize_t)sizeof report_words ? report_words[0] : EIO;
    int step = got == (ssize_t)sizeof report_words ? report_words[1] : 2;
    close_fd(&master);
    close_fd(&in_pipe[1]);
    close_fd(&out_pipe[0]);
    close_fd(&err_pipe[0]);
    close_fd(&audit_pipe[0]);
    if (step == 1) send_failed(channel->id, error, "changing directory to", request->cwd);
    else if (step == 2) send_failed(channel->id, error, "starting", value);
    else send_failed(channel->id, error, "setting up the session for", value);
    release(channel);
    return;
  }

  channel->pid = pid;
  channel->reaped = 0;
  channel->limits = request->limits;
  if (audit_pipe[0] >= 0) {
    channel->audit_fd = audit_pipe[0];
    set_nonblocking(audit_pipe[0]);
  }
  if (request->tty) {
    channel->tty = 1;
    channel->out[0] = master;
    channel->in_fd = master;
    set_nonblocking(master);
  } else {
    channel->out[0] = out_pipe[0];
    channel->out[1] = err_pipe[0];
    channel->in_fd = in_pipe[1];
    set_nonblocking(in_pipe[1]);
  }
  send_u32(channel->id, T_STARTED, (uint32_t)pid);
  return;

failed:;
  int error = errno;
  close_fd(&report[0]);
  close_fd(&report[1]);
  close_fd(&master);
  close_fd(&slave);
  close_fd(&in_pipe[0]);
  close_fd(&in_pipe[1]);
  close_fd(&out_pipe[0]);
  close_fd(&out_pipe[1]);
  close_fd(&err_pipe[0]);
  close_fd(&err_pipe[1]);
  close_fd(&audit_pipe[0]);
  close_fd(&audit_pipe[1]);
  free(wrapped);
  send_failed(channel->id, error, what, value);
  release(channel);
}

/* ---- File operations ------------------------------------------------------------------- */

static const char *file_type(mode_t mode) {
  if (S_ISREG(mode)) return "file";
  if (S_ISDIR(mode)) return "dir";
  if (S_ISLNK(mode)) return "symlink";
  return "other";
}

static void append_stat(struct buffer *json, const char *name, const struct stat *info) {
  buffer_text(json, "{");
  if (name != NULL) {
    buffer_text(json, "\"name\":");
    buffer_json_string(json, name);
    buffer_text(json, ",");
  }
  buffer_text(json, "\"type\":\"");
  buffer_text(json, file_type(info->st_mode));
  buffer_text(json, "\",\"size\":");
  buffer_number(json, (long long)info->st_size);
  buffer_text(json, ",\"mode\":");
  buffer_number(json, (long long)(info->st_mode & 07777));
  buffer_text(json, ",\"mtimeMs\":");
  buffer_number(json, (long long)info->st_mtim.tv_sec * 1000 + info->st_mtim.tv_nsec / 1000000);
  buffer_text(json, "}");
}

static int remove_entry(const char *path, const struct stat *info, int flag, struct FTW *walk) {
  (void)info;
  (void)walk;
  return (flag == FTW_DP ? rmdir(path) : unlink(path)) < 0 ? -1 : 0;
}

static int make_directories(const char *path, mode_t mode, int parents) {
  if (!parents) return mkdir(path, mode);
  char *copy = strdup(path);
  if (copy == NULL) return -1;
  for (char *slash = copy + 1; *slash != '\0'; slash++) {
    if (*slash != '/') continue;
    *slash = '\0';
    if (mkdir(copy, mode) < 0 && errno != EEXIST) {
      free(copy);
      return -1;
    }
    *slash = '/';
  }
  free(copy);
  if (mkdir(path, mode) < 0 && errno != EEXIST) return -1;
  struct stat info;
  if (stat(path, &info) < 0) return -1;
  if (!S_ISDIR(info.st_mode)) {
    errno = ENOTDIR;
    return -1;
  }
  return 0;
}

/* Opens a path for reading or writing without blocking on a FIFO, and accepts only regular files. */
static int open_regular(const char *path, int flags, mode_t mode) {
  int fd = open(path, flags | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, mode);
  if (fd < 0) return -1;
  struct stat info;
  if (fstat(fd, &info) < 0 || !S_ISREG(info.st_mode)) {
    int error = S_ISDIR(info.st_mode) ? EISDIR : EINVAL;
    close(fd);
    errno = error;
    return -1;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return fd;
}

static void start_file_operation(struct channel *channel, int type, struct request *request) {
  const char *path = request->path;
  if (type == T_FILE_READ) {
    channel->out[0] = open_regular(path, O_RDONLY, 0);
    if (channel->out[0] < 0) goto failed;
  } else if (type == T_FILE_WRITE) {
    if (request->parents) {
      char *parent = strdup(path);
      char *slash = parent == NULL ? NULL : strrchr(parent, '/');
      if (slash != NULL && slash != parent) {
        *slash = '\0';
        if (make_directories(parent, 0777, 1) < 0) {
          free(parent);
          goto failed;
        }
      }
      free(parent);
    }
    mode_t mode = request->mode < 0 ? 0666 : (mode_t)request->mode;
    channel->in_fd = open_regular(path, O_WRONLY | O_CREAT | (request->append ? O_APPEND : O_TRUNC), mode);
    if (channel->in_fd < 0) goto failed;
    channel->in_is_file = 1;
  } else if (type == T_FILE_LIST) {
    DIR *dir = opendir(path);
    if (dir == NULL) goto failed;
    int fd = dirfd(dir);
    struct dirent *entry;
    errno = 0;
    while ((entry = readdir(dir)) != NULL) {
      if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) continue;
      struct stat info;
      if (fstatat(fd, entry->d_name, &info, AT_SYMLINK_NOFOLLOW) < 0) continue;
      append_stat(&channel->result, entry->d_name, &info);
      buffer_text(&channel->result, "\n");
      errno = 0;
    }
    int error = errno;
    closedir(dir);
    errno = error;
    if (error != 0) goto failed;
  } else if (type == T_FILE_STAT) {
    struct stat info;
    if (lstat(path, &info) < 0) goto failed;
    append_stat(&channel->result, NULL, &info);
  } else if (type == T_FILE_REMOVE) {
    struct stat info;
    if (lstat(path, &info) < 0) goto failed;
    int result;
    if (S_ISDIR(info.st_mode) && request->recursive) result = nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    else if (S_ISDIR(info.st_mode)) result = rmdir(path);
    else result = unlink(path);
    if (result < 0) goto failed;
  } else if (type == T_FILE_MKDIR) {
    if (make_directories(path, request->mode < 0 ? 0777 : (mode_t)request->mode, request->parents) < 0) goto failed;
  }
  finish_if_done(channel);
  return;

failed:;
  static const char *const verbs[] = {"reading", "writing", "listing", "reading the status of", "removing", "creating the directory"};
  send_failed(channel->id, errno, verbs[type - T_FILE_READ], path);
  release(channel);
}

/* ---- Frames from the host -------------------------------------------------------------- */

static void open_channel(uint32_t id, int type, const unsigned char *payload, size_t length) {
  /* Host channels are odd and opened in increasing order, so a frame for a lower odd number
   * that has no channel belongs to one that already finished. */
  if (id % 2 == 0 || id <= highest_opened) protocol_error("channel opened twice, or with an even number", id);
  highest_opened = id;

  struct request request;
  if (parse_request(payload, length, &request) < 0) {
    request_free(&request);
    protocol_error("malformed request payload", id);
  }
  struct channel *channel = new_channel(id);
  if (channel == NULL) {
    errno = EAGAIN;
    send_failed(id, EAGAIN, "opening a channel, already at the limit of", "256 channels");
    request_free(&request);
    return;
  }
  if (type == T_OPEN) {
    if (request.argc == 0 || request.env == NULL) protocol_error("OPEN without argv or env", id);
    start_command(channel, &request);
  } else {
    if (request.path == NULL || request.path[0] != '/') protocol_error("file operation without an absolute path", id);
    start_file_operation(channel, type, &request);
  }
  request_free(&request);
}

static void handle_frame(uint32_t id, int type, const unsigned char *payload, size_t length) {
  if (id == 0) {
    if (type == T_SHUTDOWN && sync_on_shutdown) {
      /* Killed commands can no longer dirty pages, and sync() writes out what they left (such
       * as pages of a shared mapping) through virtiofs. The acknowledgement tells the host that
       * it may end the VM without waiting for the guest to power off. */
      kill_all();
      sync();
      /* Without blocking: a virtio-serial write waits while the host end is closed, and a host
       * that closed the stream after SHUTDOWN waits for the guest to power off instead. */
      fcntl(stream_fd, F_SETFL, fcntl(stream_fd, F_GETFL) | O_NONBLOCK);
      send_frame(0, T_SHUTDOWN, NULL, 0);
      _exit(0);
    }
    if (type == T_SHUTDOWN) kill_all_and_exit(0);
    protocol_error("unexpected frame type on the control channel", id);
  }
  if (type == T_OPEN || (type >= T_FILE_READ && type <= T_FILE_MKDIR)) {
    open_channel(id, type, payload, length);
    return;
  }

  struct channel *channel = find_channel(id);
  if (channel == NULL) {
    if (id % 2 == 1 && id <= highest_opened) {
      /* A late frame for a finished channel: stdin bytes still count, so grant them back. */
      if (type == T_STDIN && length > 0) send_u32(id, T_WINDOW, (uint32_t)length);
      return;
    }
    protocol_error("frame for a channel that was never opened", id);
  }

  switch (type) {
    case T_STDIN:
      if (length > channel->receive_window) protocol_error("STDIN beyond the window", id);
      channel->receive_window -= (uint32_t)length;
      if (channel->in_fd < 0 || channel->in_eof) {
        channel->receive_window += (uint32_t)length;
        if (length > 0) send_u32(id, T_WINDOW, (uint32_t)length);
        return;
      }
      if (channel->in_buffer == NULL) channel->in_buffer = malloc(INITIAL_WINDOW);
      if (channel->in_buffer == NULL) kill_all_and_exit(1);
      memcpy(channel->in_buffer + channel->in_length, payload, length);
      channel->in_length += length;
      return;
    case T_STDIN_EOF:
      if (length != 0) protocol_error("STDIN_EOF with a payload", id);
      channel->in_eof = 1;
      /* A terminal has no end of file of its own: the master stays open for output. */
      if (channel->in_length == 0 && !channel->in_is_file && !channel->tty) close_input(channel);
      finish_if_done(channel);
      return;
    case T_SIGNAL:
      if (length != 1 || payload[0] < 1 || payload[0] >= NSIG) protocol_error("SIGNAL with an invalid signal number", id);
      if (channel->pid > 0 && !channel->reaped) kill(-channel->pid, payload[0]);
      return;
    case T_RESIZE:
      if (length != 4) protocol_error("RESIZE payload is not 4 bytes", id);
      if (channel->tty) {
        struct winsize size = {.ws_row = (unsigned short)((payload[0] << 8) | payload[1]), .ws_col = (unsigned short)((payload[2] << 8) | payload[3])};
        ioctl(channel->out[0] >= 0 ? channel->out[0] : channel->in_fd, TIOCSWINSZ, &size);
      }
      return;
    case T_WINDOW:
      if (length != 4) protocol_error("WINDOW payload is not 4 bytes", id);
      channel->send_window += get_u32(payload);
      if (channel->send_window > (uint64_t)UINT32_MAX) protocol_error("WINDOW grows the window past 2^32 bytes", id);
      return;
    default:
      protocol_error("unknown frame type", id);
  }
}

/* ---- Event loop ------------------------------------------------------------------------ */

/*
 * Rereads pids.events and sends LIMITS with the count of forks the process limit failed, when
 * it grew since the last LIMITS. The file reads "max N"; a read that fails or does not parse is
 * skipped, because the next check reads it again.
 */
static void check_limits(void) {
  if (limit_events_fd < 0) return;
  char text[256];
  ssize_t got = pread(limit_events_fd, text, sizeof text - 1, 0);
  if (got <= 0) return;
  text[got] = '\0';
  const char *max = strstr(text, "max ");
  if (max == NULL) return;
  long long hits = strtoll(max + 4, NULL, 10);
  if (hits <= limit_hits_sent) return;
  limit_hits_sent = hits;
  char json[64];
  int length = snprintf(json, sizeof json, "{\"pidsMax\":%lld}", hits);
  send_frame(0, T_LIMITS, json, (size_t)length);
}

/* Returns whether a running command asked for LIMITS reports. */
static int limits_wanted(void) {
  for (int i = 0; i < MAX_CHANNELS; i++) {
    if (channels[i].used && channels[i].pid > 0 && !channels[i].reaped && channels[i].limits) return 1;
  }
  return 0;
}

static long long monotonic_ms(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static void reap_children(void) {
  char drained[64];
  while (read(child_pipe[0], drained, sizeof drained) > 0) {
  }
  for (;;) {
    int status;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) return;
    for (int i = 0; i < MAX_CHANNELS; i++) {
      struct channel *channel = &channels[i];
      if (!channel->used || channel->pid != pid) continue;
      /* The count reaches the host before EXIT, so the host can report the limit with the status. */
      if (channel->limits) check_limits();
      channel->reaped = 1;
      channel->status = status;
      /* The command is gone, so no process reads its stdin any more. */
      if (!channel->tty) close_input(channel);
      finish_if_done(channel);
    }
  }
}

static void pump_output(struct channel *channel, int which) {
  size_t room = channel->send_window < MAX_PAYLOAD ? (size_t)channel->send_window : MAX_PAYLOAD;
  ssize_t got = read(channel->out[which], frame_out + HEADER_BYTES, room);
  if (got < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (got <= 0) {
    /* End of file, or EIO from a terminal master once every slave is closed. */
    if (got < 0 && !channel->tty && channel->pid == 0) {
      channel->error = errno;
      channel->error_what = "reading";
    }
    /* The terminal's master is also the input: let it go once, before it is closed. */
    if (channel->tty) close_input(channel);
    close_fd(&channel->out[which]);
    finish_if_done(channel);
    return;
  }
  channel->send_window -= (uint64_t)got;
  send_prepared(channel->id, which == 0 ? T_STDOUT : T_STDERR, (size_t)got);
}

/* Sends the exec records the supervisor wrote as AUDIT frames, within the channel's window. */
static void pump_audit(struct channel *channel) {
  size_t room = channel->send_window < MAX_PAYLOAD ? (size_t)channel->send_window : MAX_PAYLOAD;
  ssize_t got = read(channel->audit_fd, frame_out + HEADER_BYTES, room);
  if (got < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (got <= 0) {
    close_fd(&channel->audit_fd);
    finish_if_done(channel);
    return;
  }
  channel->send_window -= (uint64_t)got;
  send_prepared(channel->id, T_AUDIT, (size_t)got);
}

static void pump_result(struct channel *channel) {
  size_t left = channel->result.length - channel->result_sent;
  size_t room = channel->send_window < MAX_PAYLOAD ? (size_t)channel->send_window : MAX_PAYLOAD;
  size_t length = left < room ? left : room;
  send_frame(channel->id, T_STDOUT, channel->result.data + channel->result_sent, length);
  channel->result_sent += length;
  channel->send_window -= length;
  finish_if_done(channel);
}

static void pump_input(struct channel *channel) {
  ssize_t written = write(channel->in_fd, channel->in_buffer, channel->in_length);
  if (written < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (written < 0) {
    if (channel->in_is_file) {
      channel->error = errno;
      channel->error_what = "writing";
      close_input(channel);
    } else {
      /* EPIPE: the command closed its stdin; drop what it will never read. */
      close_input(channel);
    }
    finish_if_done(channel);
    return;
  }
  memmove(channel->in_buffer, channel->in_buffer + written, channel->in_length - (size_t)written);
  channel->in_length -= (size_t)written;
  channel->receive_window += (uint32_t)written;
  send_u32(channel->id, T_WINDOW, (uint32_t)written);
  if (channel->in_length == 0 && channel->in_eof && !channel->in_is_file && !channel->tty) close_input(channel);
  finish_if_done(channel);
}

/* Owner of each polled descriptor. */
struct watch {
  struct channel *channel;
  int role; /* 0, 1: output; 2: input; 3: exec records */
};

static void run(void) {
  static unsigned char incoming[HEADER_BYTES + MAX_PAYLOAD];
  size_t incoming_length = 0;
  static struct pollfd fds[2 + MAX_CHANNELS * 4];
  static struct watch watches[2 + MAX_CHANNELS * 4];
  long long last_limit_check = 0;

  for (;;) {
    /* Results of listings are not descriptors: send what the window allows before polling. */
    for (int i = 0; i < MAX_CHANNELS; i++) {
      while (channels[i].used && channels[i].result_sent < channels[i].result.length && channels[i].send_window > 0) pump_result(&channels[i]);
    }

    nfds_t count = 0;
    fds[count++] = (struct pollfd){.fd = stream_fd, .events = POLLIN};
    fds[count++] = (struct pollfd){.fd = child_pipe[0], .events = POLLIN};
    for (int i = 0; i < MAX_CHANNELS; i++) {
      struct channel *channel = &channels[i];
      if (!channel->used) continue;
      for (int which = 0; which < 2; which++) {
        if (channel->out[which] < 0 || channel->send_window == 0) continue;
        watches[count] = (struct watch){channel, which};
        fds[count++] = (struct pollfd){.fd = channel->out[which], .events = POLLIN};
      }
      if (channel->in_fd >= 0 && channel->in_length > 0) {
        watches[count] = (struct watch){channel, 2};
        fds[count++] = (struct pollfd){.fd = channel->in_fd, .events = POLLOUT};
      }
      if (channel->audit_fd >= 0 && channel->send_window > 0) {
        watches[count] = (struct watch){channel, 3};
        fds[count++] = (struct pollfd){.fd = channel->audit_fd, .events = POLLIN};
      }
    }

    int timeout_ms = limit_events_fd >= 0 && limits_wanted() ? LIMIT_CHECK_MS : -1;
    if (poll(fds, count, timeout_ms) < 0) {
      if (errno == EINTR) continue;
      perror("ringfence-exec-agent: poll");
      kill_all_and_exit(1);
    }
    if (timeout_ms >= 0 && monotonic_ms() - last_limit_check >= LIMIT_CHECK_MS) {
      last_limit_check = monotonic_ms();
      check_limits();
    }

    if (fds[1].revents & POLLIN) reap_children();

    /* Each descriptor's channel is checked again: an earlier step may have finished it. */
    for (nfds_t i = 2; i < count; i++) {
      if (fds[i].revents == 0) continue;
      struct channel *channel = watches[i].channel;
      int role = watches[i].role;
      if (!channel->used) continue;
      if (role < 2 && channel->out[role] == fds[i].fd && channel->send_window > 0) pump_output(channel, role);
      if (role == 2 && channel->in_fd == fds[i].fd && channel->in_length > 0) pump_input(channel);
      if (role == 3 && channel->audit_fd == fds[i].fd && channel->send_window > 0) pump_audit(channel);
    }

    if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t got = read(stream_fd, incoming + incoming_length, sizeof incoming - incoming_length);
      if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      /* The host closed the stream, or it failed: nobody can collect the commands' output. */
      if (got <= 0) kill_all_and_exit(0);
      incoming_length += (size_t)got;

      size_t used = 0;
      while (incoming_length - used >= HEADER_BYTES) {
        const unsigned char *header = incoming + used;
        uint32_t id = get_u32(header);
        uint32_t length = get_u32(header + 5);
        if (length > MAX_PAYLOAD) protocol_error("frame longer than 65536 bytes", id);
        if (incoming_length - used < HEADER_BYTES + (size_t)length) break;
        handle_frame(id, header[4], header + HEADER_BYTES, length);
        used += HEADER_BYTES + length;
      }
      memmove(incoming, incoming + used, incoming_length - used);
      incoming_length -= used;
    }
  }
}

int main(int argc, char **argv) {
  /* Options after the stream: --audit PROGRAM, --chroot DIR, --limit-events FD and --sync-on-shutdown. */
  const char *root = NULL;
  for (int i = 3; i < argc; i += 2) {
    if (strcmp(argv[i], "--sync-on-shutdown") == 0) {
      sync_on_shutdown = 1;
      i -= 1; /* A flag without a value. */
      continue;
    }
    if (i + 1 >= argc) {
      fprintf(stderr, "ringfence-exec-agent: %s needs a value\n", argv[i]);
      return 2;
    }
    if (strcmp(argv[i], "--audit") == 0) {
      audit_program = argv[i + 1];
    } else if (strcmp(argv[i], "--chroot") == 0) {
      root = argv[i + 1];
    } else if (strcmp(argv[i], "--limit-events") == 0) {
      char *end;
      long fd = strtol(argv[i + 1], &end, 10);
      if (*end != '\0' || fd < 0 || fd > INT_MAX || fcntl((int)fd, F_SETFD, FD_CLOEXEC) < 0) {
        fprintf(stderr, "ringfence-exec-agent: --limit-events %s is not an open file descriptor\n", argv[i + 1]);
        return 2;
      }
      limit_events_fd = (int)fd;
    } else {
      fprintf(stderr, "ringfence-exec-agent: unknown option %s\n", argv[i]);
      return 2;
    }
  }

  if (audit_program != NULL) {
    int opened = audit_program[0] == '/' && access(audit_program, X_OK) == 0 ? open(audit_program, O_PATH | O_CLOEXEC) : -1;
    /* Above the descriptors a command's child sets up (stdio and AUDIT_RECORD_FD), which dup2 would replace. */
    if (opened >= 0) {
      audit_program_fd = fcntl(opened, F_DUPFD_CLOEXEC, AUDIT_RECORD_FD + 1);
      close(opened);
    }
    if (audit_program_fd < 0) {
      fprintf(stderr, "ringfence-exec-agent: the exec audit program %s is not an executable absolute path; no command can run without it\n", audit_program);
      return 2;
    }
  }
  /* The guest's init starts the agent and exec-audit from the initramfs, outside DIR. */
  if (root != NULL && (chroot(root) != 0 || chdir("/") != 0)) {
    fprintf(stderr, "ringfence-exec-agent: changing the root to %s failed: %s\n", root, strerror(errno));
    return 2;
  }

  if (argc >= 3 && strcmp(argv[1], "--fd") == 0) {
    char *end;
    long fd = strtol(argv[2], &end, 10);
    if (*end != '\0' || fd < 0 || fd > INT_MAX) {
      fprintf(stderr, "ringfence-exec-agent: invalid file descriptor %s\n", argv[2]);
      return 2;
    }
    stream_fd = (int)fd;
  } else if (argc >= 3 && strcmp(argv[1], "--path") == 0) {
    stream_fd = open(argv[2], O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (stream_fd < 0) {
      fprintf(stderr, "ringfence-exec-agent: opening %s failed: %s\n", argv[2], strerror(errno));
      return 2;
    }
  } else {
    fprintf(stderr, "usage: ringfence-exec-agent --fd N | --path DEVICE [--audit PROGRAM] [--chroot DIR] [--limit-events FD] [--sync-on-shutdown]\n");
    return 2;
  }

  /* The stream stays out of every command, and blocking writes keep frames whole. */
  if (fcntl(stream_fd, F_SETFD, FD_CLOEXEC) < 0) {
    fprintf(stderr, "ringfence-exec-agent: file descriptor %d is not open: %s\n", stream_fd, strerror(errno));
    return 2;
  }
  fcntl(stream_fd, F_SETFL, fcntl(stream_fd, F_GETFL) & ~O_NONBLOCK);

  if (pipe2(child_pipe, O_CLOEXEC | O_NONBLOCK) < 0) {
    perror("ringfence-exec-agent: pipe");
    return 1;
  }
  struct sigaction action = {.sa_handler = on_sigchld, .sa_flags = SA_RESTART | SA_NOCLDSTOP};
  sigemptyset(&action.sa_mask);
  sigaction(SIGCHLD, &action, NULL);
  signal(SIGPIPE, SIG_IGN);

  struct utsname host;
  struct buffer hello = {0};
  buffer_text(&hello, "{\"agent\":\"exec\",\"version\":1");
  if (uname(&host) == 0) {
    buffer_text(&hello, ",\"kernel\":");
    buffer_json_string(&hello, host.release);
  }
  if (audit_program != NULL) buffer_text(&hello, ",\"audit\":true");
  if (limit_events_fd >= 0) {
    /* The agent's cgroup, so the host can check the process limit without a FILE_READ round trip. */
    char cgroup[512];
    int cgroup_fd = open("/proc/self/cgroup", O_RDONLY | O_CLOEXEC);
    ssize_t got = cgroup_fd < 0 ? -1 : read(cgroup_fd, cgroup, sizeof cgroup - 1);
    if (cgroup_fd >= 0) close(cgroup_fd);
    if (got > 0) {
      cgroup[got] = '\0';
      cgroup[strcspn(cgroup, "\n")] = '\0';
      buffer_text(&hello, ",\"cgroup\":");
      buffer_json_string(&hello, cgroup);
    }
  }
  buffer_text(&hello, "}");
  send_frame(0, T_HELLO, hello.data, hello.length);
  free(hello.data);

  run();
  return 0;
}
