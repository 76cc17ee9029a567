/*
 * Gateway front end: accepts the gateway's connections and carries plain CONNECT tunnels itself,
 * so that a short tunnel costs no Node socket, stream or timer. Node makes every decision.
 *
 *   ringfence-front HANDSHAKE_MS IDLE_MS TOTAL_MS CONNECT_MS MAX_HEAD_BYTES MAX_CONNECTIONS
 *                   PARENT_PID UNIX_PATH|- TCP_PORT|-
 *
 * The front end binds the listeners (a Unix socket path that must not exist, a loopback TCP port,
 * or both) and talks to the gateway over Node's IPC channel (NODE_CHANNEL_FD), one JSON value per
 * line. For each accepted connection it reads the first chunk. A CONNECT head that arrived whole
 * in the plain form (the rules of readConnectHead in connect.ts) goes to Node for a decision.
 * Node replies with checked addresses to connect to, bytes to send before closing, or a request
 * for the connection itself. After connecting and sending the 200, the front end reads the client's
 * first bytes. When they are one TLS record containing a well-formed ClientHello whose only
 * server_name equals the target's name, the front end copies the tunnel both ways until it ends
 * and reports its byte counts. Anything else passes to Node with the descriptors, as a message of
 * Node's own handle-passing form: another protocol, a first chunk that is not such a head, a
 * different or missing server name, an upstream that speaks first. Node's checks then run as if
 * Node had accepted the connection. So the front end never refuses on its own judgement: it only
 * carries what Node allowed and what it can prove matches.
 *
 * Messages to Node (objects):   {"t":"c","id":N,"u":AUTHORITY}   decide a CONNECT
 *   {"t":"f","id":N,"a":ADDRESS,"e":CODE}   every address failed; CODE is an errno name or "timeout"
 *   {"t":"e","id":N,"a":ADDRESS,"up":U,"down":D,"us":T,"r":REASON}   a tunnel ended ("" for a normal
 *       end) T microseconds after its allow arrived; these wait up to REPORT_DELAY_MS for company.
 *       A connection that ends while Node decides, or whose allow is invalid, is reported so too.
 *   {"t":"n"}   a client sent nothing within HANDSHAKE_MS
 *   {"t":"l","unixError":CODE,"tcpError":CODE,"tcp":PORT}   the listeners' result, sent once at start
 *   handle messages, {"cmd":"NODE_HANDLE","type":"net.Native","msg":M} with one descriptor:
 *     M = {"t":"a","k":COUNT,"z":MS,"b":BASE64}   a connection Node takes from its start; B is what was read,
 *         Z the connection's total time left (0 without that limit)
 *     M = {"t":"hc","id":N,"a":ADDRESS,"w":MS,"z":MS,"b":BASE64} then {"t":"hu","id":N}   a tunnel's
 *         client and upstream sockets after the 200; B is what the client sent, W the handshake
 *         time left, Z the connection's total time left (0 without that limit)
 *   {"t":"k","id":N,"ms":TIME,"u":AUTHORITY}   a CONNECT that a remembered verdict decided (below),
 *       which arrived at TIME (milliseconds since the epoch); it may wait like an end report
 * Messages from Node (strings): "a ID PORT NAME|- ADDRESS..." connect, "d ID BASE64" answer and
 *   close, "h ID" pass the connection to Node, "n COUNT TAKEN" Node's own open connections and
 *   how many connections passed with "a" or "hc" it has taken so far, "x" stop.
 *   "A" and "D" are "a" and "d" for a verdict that needs no name lookup: the front end remembers
 *   it for the authority and applies it to later connections at once, telling Node with "k".
 *   "z ID" ends such a connection and clears every remembered verdict.
 *
 * The front end exits when the channel closes or the gateway process exits (PR_SET_PDEATHSIG).
 * ringfence compiles this file with the host's C compiler on first use and caches the binary.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* One read of a new connection, as large as Node's first read, so both see the same first chunk. */
#define FIRST_READ_BYTES (64 * 1024)
#define MAX_DIRECT_HEAD_BYTES 4096
#define SMALL_BUFFER_BYTES (64 * 1024)
/* A direction that has moved GROW_AFTER_BYTES reads and writes up to LARGE_BUFFER_BYTES at a time.
 * Against 1 MiB this cut the front end's CPU time per GiB by about a third (docs/benchmarks.md).
 * All large buffers together stay within LARGE_BUFFER_BUDGET, so many bulk tunnels cannot grow
 * the front end without bound. A direction that finds the budget spent keeps its small buffer. */
#define LARGE_BUFFER_BYTES (4 * 1024 * 1024)
#define LARGE_BUFFER_BUDGET (64 * 1024 * 1024)
/* Freed large buffers kept for the next bulk direction, so that a series of downloads does not
 * map and fault in a new buffer for each. They count against the budget. */
#define SPARE_LARGE_BUFFERS 2
#define GROW_AFTER_BYTES (1024 * 1024)
#define MAX_TLS_FRAGMENT 16384
#define TLS_RECORD_HEADER 5
#define MAX_CLIENT_HELLO_BYTES (64 * 1024)
/* Addresses tried in order. Names rarely resolve to more, and addresses past this are not tried. */
#define MAX_ADDRESSES 32
#define MAX_NAME 255
#define MAX_COMMAND_LINE (1024 * 1024)
/* Tunnel end reports wait up to this long to travel with the next message, so that Node
 * usually wakes once per tunnel rather than twice. */
#define REPORT_DELAY_MS 10
/* How long the listeners rest after accept failed for want of descriptors or memory. */
#define ACCEPT_PAUSE_MS 100
/* Verdicts Node marked as repeatable, one per slot, chosen by a hash of the authority. */
#define VERDICT_SLOTS 256
#define MAX_CACHED_AUTHORITY 300

static const char ESTABLISHED[] = "HTTP/1.1 200 Connection Established\r\n\r\n";

enum state { HEAD, DECIDING, CONNECTING, HELLO, RELAY, RESPOND };
enum side { CLIENT, UPSTREAM, LISTENER, CHANNEL };

struct endpoint {
  enum side side;
  struct conn *conn;
  int fd;
  uint32_t mask;
  /* Whether fd is in the epoll set. An fd with nothing to wait for is taken out, because epoll
   * reports a hang-up even when no event is asked for. */
  int registered;
};

/* Bytes read from one socket and not yet written to the other. */
struct direction {
  char *buf;
  size_t cap, off, len;
  uint64_t written;
  int ended; /* the source sent its end of stream */
  int shut;  /* the end was passed on */
};

struct conn {
  uint32_t id;
  enum state state;
  struct endpoint client, upstream;
  struct direction up, down;
  int64_t accepted_ms, state_deadline_ms, last_active_ms;
  /* When Node's allow arrived, in microseconds, for the tunnel's duration. */
  int64_t allowed_us;
  int port;
  char name[MAX_NAME + 1];
  char addresses[MAX_ADDRESSES][INET6_ADDRSTRLEN];
  int address_count, address_index;
  char *reply;
  size_t reply_len, reply_off;
  /* The CONNECT authority, kept until Node's verdict arrives, or "" when too long to remember. */
  char authority[MAX_CACHED_AUTHORITY + 1];
  int dead;
  struct conn *prev, *next;
};

struct message {
  struct message *next;
  int fd;
  size_t len, off;
  char data[];
};

static int64_t handshake_ms, idle_ms, total_ms, connect_ms, max_head_bytes, max_connections;
static int epoll_fd;
/* A descriptor kept free to accept and close a connection that arrives at the descriptor limit.
 * Without it the listener stays readable and the event loop spins. */
static int reserve_fd = -1;
static struct endpoint channel = {.side = CHANNEL, .fd = -1};
static struct endpoint listeners[2] = {{.side = LISTENER, .fd = -1}, {.side = LISTENER, .fd = -1}};
static const char *unix_path;
static ino_t unix_inode;
static struct conn *conns, *dead_conns;
static int conn_count, node_count;
/* Connections passed to Node, and how many of them Node had taken at its last count. The rest
 * are in transit and count against the connection limit as well. */
static uint32_t handed_count, taken_count;
static uint32_t next_id = 1;
/* Messages without a descriptor, messages with one, and the message being sent, which is
 * finished before any other starts. Descriptors go one at a time (below), and the other messages
 * do not wait behind them, because none of them concerns a connection that was handed over. */
static struct message *out_head, *out_tail, *fd_head, *fd_tail, *sending;
/* Set from sending a descriptor until Node's NODE_HANDLE_ACK. Node gives the last descriptor it read
 * to the next handle message it completes, so another descriptor sent before then would mismatch them. */
static int handle_unacknowledged;

/*
 * A verdict that Node marked as repeatable: one that depends on nothing but the authority (the
 * policy is fixed for the gateway's life), because no name is looked up for it. The front end
 * applies it to later connections with the same authority at once and reports each to Node, which
 * records each connection's event as before and checks that its verdict still holds.
 */
struct verdict {
  char authority[MAX_CACHED_AUTHORITY + 1];
  int allow;
  int port;
  char name[MAX_NAME + 1];
  char addresses[MAX_ADDRESSES][INET6_ADDRSTRLEN];
  int address_count;
  char *reply;
  size_t reply_len;
};
static struct verdict verdicts[VERDICT_SLOTS];
static char *in_buf;
static char deferred[64 * 1024];
/* When the listeners, paused after a failed accept, are watched again; 0 while they are watched. */
static int64_t accept_paused_until;
/* When the last failed accept was logged, so that failures log at most once a second. */
static int64_t accept_failure_logged_ms = -1000000;
static size_t deferred_len;
static int64_t deferred_since;
static size_t in_len;
static int stopping;
static int64_t now;
/* Total size of the large buffers allocated now, spares included. */
static size_t large_buffer_bytes;
static char *spare_large_buffers[SPARE_LARGE_BUFFERS];
static int spare_large_count;

static int64_t clock_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t clock_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void fatal(const char *what) {
  fprintf(stderr, "ringfence front end: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void watch(struct endpoint *e, uint32_t mask) {
  if (e->fd < 0 || (e->registered && e->mask == mask)) return;
  if (mask == 0) {
    if (e->registered && epoll_ctl(epoll_fd, EPOLL_CTL_DEL, e->fd, NULL) < 0) fatal("epoll_ctl");
    e->registered = 0;
    e->mask = 0;
    return;
  }
  struct epoll_event event = {.events = mask, .data.ptr = e};
  if (epoll_ctl(epoll_fd, e->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, e->fd, &event) < 0) fatal("epoll_ctl");
  e->registered = 1;
  e->mask = mask;
}

static void add(struct endpoint *e, uint32_t mask) { watch(e, mask); }

/* ---- the channel to Node ---- */

static void flush_channel(void) {
  for (;;) {
    struct message *m = sending;
    if (m == NULL && out_head != NULL) {
      m = out_head;
      out_head = m->next;
      if (out_head == NULL) out_tail = NULL;
    } else if (m == NULL && fd_head != NULL && !handle_unacknowledged) {
      m = fd_head;
      fd_head = m->next;
      if (fd_head == NULL) fd_tail = NULL;
    }
    if (m == NULL) break;
    sending = m;
    struct iovec iov = {.iov_base = m->data + m->off, .iov_len = m->len - m->off};
    struct msghdr header = {.msg_iov = &iov, .msg_iovlen = 1};
    char control[CMSG_SPACE(sizeof(int))];
    if (m->fd >= 0) {
      memset(control, 0, sizeof control);
      header.msg_control = control;
      header.msg_controllen = sizeof control;
      struct cmsghdr *cmsg = CMSG_FIRSTHDR(&header);
      cmsg->cmsg_level = SOL_SOCKET;
      cmsg->cmsg_type = SCM_RIGHTS;
      cmsg->cmsg_len = CMSG_LEN(sizeof(int));
      memcpy(CMSG_DATA(cmsg), &m->fd, sizeof(int));
    }
    ssize_t n = sendmsg(channel.fd, &header, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) break;
      /* Node is gone: nothing more can be decided, so everything closes. */
      exit(0);
    }
    if (m->fd >= 0) {
      /* The descriptor now travels in the channel; Node owns that copy. */
      close(m->fd);
      m->fd = -1;
      handle_unacknowledged = 1;
    }
    m->off += (size_t)n;
    if (m->off < m->len) continue;
    sending = NULL;
    free(m);
  }
  /* A descriptor waiting only for Node's acknowledgement needs no writability event. */
  watch(&channel, EPOLLIN | (sending != NULL || out_head != NULL ? EPOLLOUT : 0));
}

/* Queues one line for Node, after the deferred reports, with a descriptor that the channel takes over, or -1. */
static void flush_deferred(void);

static void send_line(const char *data, size_t len, int fd) {
  /* Reports go ahead of a descriptor's message, which may wait for an acknowledgement. */
  if (fd >= 0 && deferred_len > 0) flush_deferred();
  struct message *m = malloc(sizeof *m + deferred_len + len + 1);
  if (m == NULL) fatal("malloc");
  memcpy(m->data, deferred, deferred_len);
  memcpy(m->data + deferred_len, data, len);
  m->data[deferred_len + len] = '\n';
  m->len = deferred_len + len + 1;
  deferred_len = 0;
  m->off = 0;
  m->fd = fd;
  m->next = NULL;
  struct message **head = fd >= 0 ? &fd_head : &out_head;
  struct message **tail = fd >= 0 ? &fd_tail : &out_tail;
  if (*tail != NULL) (*tail)->next = m;
  else *head = m;
  *tail = m;
  flush_channel();
}

static void send_text(const char *text) { send_line(text, strlen(text), -1); }

static void flush_deferred(void) {
  if (deferred_len == 0) return;
  /* The last report's newline is added back by send_line. */
  deferred_len--;
  send_line("", 0, -1);
}

static void defer_line(const char *data, size_t len) {
  if (deferred_len + len + 1 > sizeof deferred) flush_deferred();
  if (deferred_len == 0) deferred_since = now;
  memcpy(deferred + deferred_len, data, len);
  deferred[deferred_len + len] = '\n';
  deferred_len += len + 1;
}

static const char BASE64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static size_t base64_encode(const unsigned char *in, size_t len, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < len; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0) | (i + 2 < len ? in[i + 2] : 0);
    out[o++] = BASE64[v >> 18 & 63];
    out[o++] = BASE64[v >> 12 & 63];
    out[o++] = i + 1 < len ? BASE64[v >> 6 & 63] : '=';
    out[o++] = i + 2 < len ? BASE64[v & 63] : '=';
  }
  return o;
}

static int base64_value(char c) {
  const char *p = c == 0 ? NULL : strchr(BASE64, c);
  return p == NULL ? -1 : (int)(p - BASE64);
}

/* Decodes into out (at least 3/4 of len); returns the length, or -1 when the text is not base64. */
static ssize_t base64_decode(const char *in, size_t len, unsigned char *out) {
  if (len % 4 != 0) return -1;
  size_t o = 0;
  for (size_t i = 0; i < len; i += 4) {
    int a = base64_value(in[i]), b = base64_value(in[i + 1]);
    int c = in[i + 2] == '=' ? 0 : base64_value(in[i + 2]);
    int d = in[i + 3] == '=' ? 0 : base64_value(in[i + 3]);
    if (a < 0 || b < 0 || c < 0 || d < 0) return -1;
    uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
    out[o++] = (unsigned char)(v >> 16);
    if (in[i + 2] != '=') out[o++] = (unsigned char)(v >> 8);
    if (in[i + 3] != '=') out[o++] = (unsigned char)v;
  }
  return (ssize_t)o;
}

/* Sends a handle message: `inner` is the JSON object Node's "message" event receives. */
static void send_handle(int fd, const char *inner, size_t inner_len) {
  static const char prefix[] = "{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Native\",\"msg\":";
  size_t len = sizeof prefix - 1 + inner_len + 1;
  char *line = malloc(len);
  if (line == NULL) fatal("malloc");
  memcpy(line, prefix, sizeof prefix - 1);
  memcpy(line + sizeof prefix - 1, inner, inner_len);
  line[len - 1] = '}';
  send_line(line, len, fd);
  free(line);
}

/* Formats {"t":KIND,...,"b":BASE64(bytes)} into a new buffer; `fields` is inserted as is. */
static char *with_bytes(const char *kind, const char *fields, const char *bytes, size_t len, size_t *out_len) {
  size_t cap = 64 + strlen(fields) + (len + 2) / 3 * 4;
  char *text = malloc(cap);
  if (text == NULL) fatal("malloc");
  int n = snprintf(text, cap, "{\"t\":\"%s\"%s,\"b\":\"", kind, fields);
  size_t o = (size_t)n + base64_encode((const unsigned char *)bytes, len, text + n);
  text[o++] = '"';
  text[o++] = '}';
  *out_len = o;
  return text;
}

/* ---- connections ---- */

/* Closes a descriptor of the front end's own; closing removes it from the epoll set, since no other copy exists. */
static void unwatch_close(struct endpoint *e) {
  if (e->fd < 0) return;
  close(e->fd);
  e->fd = -1;
  e->registered = 0;
  e->mask = 0;
}

/* Forgets a connection's descriptors without closing them (they went to Node) or after closing them. */
static void retire(struct conn *c) {
  if (c->dead) return;
  c->dead = 1;
  if (c->prev != NULL) c->prev->next = c->next;
  else conns = c->next;
  if (c->next != NULL) c->next->prev = c->prev;
  c->next = dead_conns;
  dead_conns = c;
  conn_count--;
}

static void destroy(struct conn *c, int reset_client) {
  if (reset_client && c->client.fd >= 0) {
    struct linger linger = {.l_onoff = 1, .l_linger = 0};
    setsockopt(c->client.fd, SOL_SOCKET, SO_LINGER, &linger, sizeof linger);
  }
  unwatch_close(&c->client);
  unwatch_close(&c->upstream);
  retire(c);
}

static const char *connected_address(const struct conn *c) {
  return c->address_index < c->address_count ? c->addresses[c->address_index] : "";
}

/* Reports a tunnel's end to Node; `reason` is plain ASCII without quotes or backslashes. */
static void report_end(struct conn *c, const char *reason) {
  char line[512];
  int n = snprintf(line, sizeof line, "{\"t\":\"e\",\"id\":%u,\"a\":\"%s\",\"up\":%llu,\"down\":%llu,\"us\":%lld,\"r\":\"%s\"}", c->id, connected_address(c),
                   (unsigned long long)c->up.written, (unsigned long long)c->down.written, (long long)(clock_us() - c->allowed_us), reason);
  defer_line(line, (size_t)n);
}

static void end_tunnel(struct conn *c, const char *reason, int reset_client) {
  report_end(c, reason);
  destroy(c, reset_client);
}

static void detach(struct endpoint *e) {
  watch(e, 0);
  e->fd = -1;
}

/* Returns the connection's total time left for Node's own timer: at least 1, or 0 without a limit. */
static int64_t total_ms_left(const struct conn *c) {
  if (total_ms <= 0) return 0;
  int64_t left = c->accepted_ms + total_ms - now;
  return left < 1 ? 1 : left;
}

/* Passes a connection to Node from its start, with the bytes read so far. */
static void hand_over_client(struct conn *c) {
  char fields[64];
  snprintf(fields, sizeof fields, ",\"k\":%d,\"z\":%lld", conn_count - 1, (long long)total_ms_left(c));
  size_t len;
  /* The whole first chunk: a CONNECT head that Node sends back is read again by Node. */
  char *inner = with_bytes("a", fields, c->up.buf == NULL ? "" : c->up.buf, c->up.off + c->up.len, &len);
  handed_count++;
  int fd = c->client.fd;
  detach(&c->client);
  send_handle(fd, inner, len);
  free(inner);
  retire(c);
}

/* Passes an established tunnel (client and upstream sockets, the client's held bytes) to Node. */
static void hand_over_tunnel(struct conn *c) {
  int64_t left = handshake_ms > 0 ? c->state_deadline_ms - now : 0;
  if (left < 1 && handshake_ms > 0) left = 1;
  char fields[192];
  snprintf(fields, sizeof fields, ",\"id\":%u,\"a\":\"%s\",\"w\":%lld,\"z\":%lld", c->id, connected_address(c), (long long)left, (long long)total_ms_left(c));
  size_t len;
  char *inner = with_bytes("hc", fields, c->up.buf + c->up.off, c->up.len, &len);
  handed_count++;
  int client_fd = c->client.fd, upstream_fd = c->upstream.fd;
  detach(&c->client);
  detach(&c->upstream);
  send_handle(client_fd, inner, len);
  free(inner);
  char second[64];
  int n = snprintf(second, sizeof second, "{\"t\":\"hu\",\"id\":%u}", c->id);
  send_handle(upstream_fd, second, (size_t)n);
  retire(c);
}

static int ensure_buffer(struct direction *d, size_t cap) {
  if (d->buf != NULL && d->cap >= cap) return 0;
  if (d->buf != NULL && d->len > 0) return 0;
  free(d->buf);
  d->buf = malloc(cap);
  d->cap = d->buf == NULL ? 0 : cap;
  d->off = 0;
  return d->buf == NULL ? -1 : 0;
}

/* Gives a bulk direction a large buffer if the budget allows. Call it only while the buffer is empty. */
static void grow_for_bulk(struct direction *d) {
  if (d->written < GROW_AFTER_BYTES || d->cap >= LARGE_BUFFER_BYTES) return;
  char *buf;
  if (spare_large_count > 0) {
    buf = spare_large_buffers[--spare_large_count];
  } else {
    if (large_buffer_bytes + LARGE_BUFFER_BYTES > LARGE_BUFFER_BUDGET) return;
    buf = malloc(LARGE_BUFFER_BYTES);
    if (buf == NULL) return;
    large_buffer_bytes += LARGE_BUFFER_BYTES;
  }
  free(d->buf);
  d->buf = buf;
  d->cap = LARGE_BUFFER_BYTES;
  d->off = 0;
}

static void free_buffer(struct direction *d) {
  if (d->cap >= LARGE_BUFFER_BYTES && spare_large_count < SPARE_LARGE_BUFFERS) {
    spare_large_buffers[spare_large_count++] = d->buf;
  } else {
    if (d->cap >= LARGE_BUFFER_BYTES) large_buffer_bytes -= d->cap;
    free(d->buf);
  }
  d->buf = NULL;
  d->cap = 0;
}

/* readConnectHead's rules. Returns the head's length (including the empty line) or 0. */
static size_t plain_connect_head(const char *data, size_t len, const char **authority, size_t *authority_len) {
  size_t limit = (size_t)(max_head_bytes < MAX_DIRECT_HEAD_BYTES ? max_head_bytes : MAX_DIRECT_HEAD_BYTES);
  const char *end = memmem(data, len, "\r\n\r\n", 4);
  if (end == NULL || (size_t)(end - data) + 4 > limit) return 0;
  size_t head_len = (size_t)(end - data);

  /* Request line: CONNECT AUTHORITY HTTP/1.0 or 1.1, the authority of [A-Za-z0-9._~:[\]-]. */
  const char *line_end = memmem(data, head_len + 2, "\r\n", 2);
  if (line_end == NULL || line_end - data < 8 || memcmp(data, "CONNECT ", 8) != 0) return 0;
  const char *p = data + 8;
  const char *start = p;
  while (p < line_end && (((*p | 0x20) >= 'a' && (*p | 0x20) <= 'z') || (*p >= '0' && *p <= '9') || strchr("._~:[]-", *p) != NULL) && *p != 0) p++;
  if (p == start || line_end - p != 9 || memcmp(p, " HTTP/1.", 8) != 0 || (p[8] != '0' && p[8] != '1')) return 0;
  *authority = start;
  *authority_len = (size_t)(p - start);

  /* Header lines: a token, a colon, tabs and printable ASCII; no body headers. */
  const char *line = line_end + 2;
  const char *head_end = data + head_len;
  while (line < head_end) {
    const char *next = memmem(line, (size_t)(head_end - line) + 2, "\r\n", 2);
    if (next == NULL) return 0;
    const char *q = line;
    while (q < next && *q != ':' && (((*q | 0x20) >= 'a' && (*q | 0x20) <= 'z') || (*q >= '0' && *q <= '9') || (*q != 0 && strchr("!#$%&'*+.^_`|~-", *q) != NULL))) q++;
    if (q == line || q == next || *q != ':') return 0;
    size_t name_len = (size_t)(q - line);
    if ((name_len == 14 && strncasecmp(line, "content-length", 14) == 0) || (name_len == 17 && strncasecmp(line, "transfer-encoding", 17) == 0)) return 0;
    for (const char *v = q + 1; v < next; v++) {
      unsigned char ch = (unsigned char)*v;
      if (ch != '\t' && (ch < 0x20 || ch > 0x7e)) return 0;
    }
    line = next + 2;
  }
  return head_len + 4;
}

enum hello { HELLO_WAIT, HELLO_MATCH, HELLO_OTHER };

static unsigned u16(const unsigned char *p) { return (unsigned)p[0] << 8 | p[1]; }

/*
 * Checks the client's first bytes. HELLO_MATCH needs one TLS handshake record that contains a
 * whole ClientHello, valid by the rules of client-hello.ts. It must have no repeated extension and
 * no encrypted_client_hello, and one host_name equal to `name` (ASCII case aside, one trailing
 * dot allowed). HELLO_WAIT while that record is incomplete; HELLO_OTHER for everything else, which
 * Node then judges.
 */
static enum hello check_hello(const unsigned char *data, size_t len, const char *name) {
  if (len == 0) return HELLO_WAIT;
  if (data[0] != 22) return HELLO_OTHER;
  if (len < TLS_RECORD_HEADER) return HELLO_WAIT;
  unsigned fragment = u16(data + 3);
  if (data[1] != 3 || fragment == 0 || fragment > MAX_TLS_FRAGMENT) return HELLO_OTHER;
  if (len < TLS_RECORD_HEADER + fragment) return HELLO_WAIT;
  const unsigned char *h = data + TLS_RECORD_HEADER;
  if (fragment < 4 || h[0] != 1) return HELLO_OTHER;
  size_t body_len = (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
  if (body_len > MAX_CLIENT_HELLO_BYTES || body_len + 4 > fragment) return HELLO_OTHER;
  const unsigned char *b = h + 4;
  size_t pos = 34;
  if (pos + 1 > body_len || b[pos] > 32) return HELLO_OTHER;
  pos += 1 + b[pos];
  if (pos + 2 > body_len) return HELLO_OTHER;
  unsigned suites = u16(b + pos);
  if (suites < 2 || suites % 2 != 0) return HELLO_OTHER;
  pos += 2 + suites;
  if (pos + 1 > body_len || b[pos] < 1) return HELLO_OTHER;
  pos += 1 + b[pos];
  if (pos + 2 > body_len) return HELLO_OTHER;
  if (pos + 2 + u16(b + pos) != body_len) return HELLO_OTHER;
  pos += 2;

  unsigned seen[128];
  size_t seen_count = 0;
  int matched = 0;
  while (pos < body_len) {
    if (pos + 4 > body_len || seen_count == sizeof seen / sizeof seen[0]) return HELLO_OTHER;
    unsigned type = u16(b + pos), ext_len = u16(b + pos + 2);
    size_t start = pos + 4, end = start + ext_len;
    if (end > body_len) return HELLO_OTHER;
    for (size_t i = 0; i < seen_count; i++)
      if (seen[i] == type) return HELLO_OTHER;
    seen[seen_count++] = type;
    if (type == 0xfe0d) return HELLO_OTHER;
    if (type == 0) {
      const unsigned char *e = b + start;
      if (ext_len < 2 || 2 + u16(e) != ext_len) return HELLO_OTHER;
      size_t p = 2;
      int names = 0;
      while (p < ext_len) {
        if (p + 3 > ext_len) return HELLO_OTHER;
        unsigned name_len = u16(e + p + 1);
        if (p + 3 + name_len > ext_len) return HELLO_OTHER;
        if (e[p] == 0) {
          if (++names > 1 || name_len == 0) return HELLO_OTHER;
          size_t want = strlen(name);
          size_t have = name_len;
          if (have == want + 1 && e[p + 3 + want] == '.') have = want;
          if (have != want) return HELLO_OTHER;
          for (size_t i = 0; i < want; i++) {
            unsigned char ch = e[p + 3 + i];
            if (ch <= 0x20 || ch >= 0x7f || (unsigned char)(ch >= 'A' && ch <= 'Z' ? ch | 0x20 : ch) != (unsigned char)name[i]) return HELLO_OTHER;
          }
          matched = 1;
        }
        p += 3 + name_len;
      }
      if (names == 0) return HELLO_OTHER;
    }
    pos = end;
  }
  return matched ? HELLO_MATCH : HELLO_OTHER;
}

static void set_deadline(struct conn *c, int64_t ms) { c->state_deadline_ms = ms > 0 ? now + ms : 0; }

static void start_reply(struct conn *c, char *bytes, size_t len) {
  c->state = RESPOND;
  c->reply = bytes;
  c->reply_len = len;
  c->reply_off = 0;
  set_deadline(c, idle_ms);
  unwatch_close(&c->upstream);
  watch(&c->client, EPOLLOUT);
}

/* Writes the reply, then ends the client's side and waits for its end of stream. */
static void pump_reply(struct conn *c) {
  while (c->reply != NULL && c->reply_off < c->reply_len) {
    ssize_t n = write(c->client.fd, c->reply + c->reply_off, c->reply_len - c->reply_off);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      destroy(c, 0);
      return;
    }
    c->reply_off += (size_t)n;
  }
  if (c->reply != NULL) {
    free(c->reply);
    c->reply = NULL;
    shutdown(c->client.fd, SHUT_WR);
    watch(&c->client, EPOLLIN | EPOLLRDHUP);
  }
  char sink[4096];
  for (;;) {
    ssize_t n = read(c->client.fd, sink, sizeof sink);
    if (n > 0) continue;
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    destroy(c, 0);
    return;
  }
}

static void try_connect(struct conn *c);
static void on_connected(struct conn *c);

static void connect_failed(struct conn *c, const char *code) {
  if (c->address_index + 1 < c->address_count) {
    unwatch_close(&c->upstream);
    c->address_index++;
    try_connect(c);
    return;
  }
  unwatch_close(&c->upstream);
  char line[256];
  int n = snprintf(line, sizeof line, "{\"t\":\"f\",\"id\":%u,\"a\":\"%s\",\"e\":\"%s\"}", c->id, c->addresses[c->address_index], code);
  send_line(line, (size_t)n, -1);
  c->state = DECIDING;
  set_deadline(c, 0);
}

static void try_connect(struct conn *c) {
  const char *address = c->addresses[c->address_index];
  struct sockaddr_storage storage;
  socklen_t size;
  memset(&storage, 0, sizeof storage);
  struct sockaddr_in *v4 = (struct sockaddr_in *)&storage;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&storage;
  if (inet_pton(AF_INET, address, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons((uint16_t)c->port);
    size = sizeof *v4;
  } else if (inet_pton(AF_INET6, address, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)c->port);
    size = sizeof *v6;
  } else {
    connect_failed(c, "EINVAL");
    return;
  }

  int fd = socket(storage.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    connect_failed(c, errno == EMFILE ? "EMFILE" : "ESOCKET");
    return;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  c->upstream.fd = fd;
  c->state = CONNECTING;
  set_deadline(c, connect_ms);

  /* On loopback the handshake has often finished by the time connect returns; asking again
   * saves a wait for writability. A second connect returns 0 once the first has succeeded. */
  int result = connect(fd, (struct sockaddr *)&storage, size);
  if (result < 0 && errno == EINPROGRESS) result = connect(fd, (struct sockaddr *)&storage, size);
  if (result == 0) {
    on_connected(c);
    return;
  }
  if (errno == EALREADY || errno == EINPROGRESS) {
    watch(&c->upstream, EPOLLOUT);
    return;
  }
  char code[32];
  snprintf(code, sizeof code, "%s", strerrorname_np(errno) != NULL ? strerrorname_np(errno) : "ECONNECT");
  connect_failed(c, code);
}

static void update_relay_interest(struct conn *c) {
  uint32_t client_mask = 0, upstream_mask = 0;
  if (!c->up.ended && c->up.len == 0) client_mask |= EPOLLIN | EPOLLRDHUP;
  if (c->down.len > 0) client_mask |= EPOLLOUT;
  if (!c->down.ended && c->down.len == 0) upstream_mask |= EPOLLIN;
  if (c->up.len > 0) upstream_mask |= EPOLLOUT;
  watch(&c->client, client_mask);
  watch(&c->upstream, upstream_mask);
}

/*
 * Moves one direction as far as it goes without blocking. Returns 0, or -1 after a failure that
 * ended the tunnel. A reset or failure on one socket resets the other, so the peer receives the
 * failure instead of a clean end of stream.
 */
static int pump(struct conn *c, struct direction *d, const struct direction *reverse, int from, int to, int from_is_client) {
  /* A read that returned less than asked for emptied the socket, so the next would find nothing:
   * the next event signals when there is more. */
  int emptied = 0;
  for (;;) {
    if (d->len > 0) {
      ssize_t n = write(to, d->buf + d->off, d->len);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return 0;
        char reason[96];
        if (from_is_client) snprintf(reason, sizeof reason, "upstream connection failed (%s)", strerrorname_np(errno) != NULL ? strerrorname_np(errno) : "write");
        end_tunnel(c, from_is_client ? reason : "", 0);
        return -1;
      }
      d->off += (size_t)n;
      d->len -= (size_t)n;
      d->written += (uint64_t)n;
      c->last_active_ms = now;
      if (d->len > 0) continue;
      d->off = 0;
    }
    if (d->ended || emptied) break;
    grow_for_bulk(d);
    if (d->buf == NULL && ensure_buffer(d, SMALL_BUFFER_BYTES) < 0) {
      end_tunnel(c, "the gateway front end ran out of memory", 0);
      return -1;
    }
    ssize_t n = read(from, d->buf, d->cap);
    if (n > 0) {
      d->len = (size_t)n;
      emptied = (size_t)n < d->cap;
      c->last_active_ms = now;
      continue;
    }
    if (n == 0) {
      d->ended = 1;
      break;
    }
    if (errno == EAGAIN || errno == EINTR) return 0;
    char reason[96];
    if (!from_is_client) snprintf(reason, sizeof reason, "upstream connection failed (%s)", strerrorname_np(errno) != NULL ? strerrorname_np(errno) : "read");
    end_tunnel(c, from_is_client ? "" : reason, !from_is_client);
    return -1;
  }
  if (d->ended && d->len == 0 && !d->shut) {
    /* Once the reverse direction has ended too, closing both sockets ends this one as well. */
    if (!reverse->shut) shutdown(to, SHUT_WR);
    d->shut = 1;
  }
  return 0;
}

/* Moves the directions an event concerns (both at the start); epoll reports the others when they are ready. */
static void run_relay(struct conn *c, int move_up, int move_down) {
  if (move_up && pump(c, &c->up, &c->down, c->client.fd, c->upstream.fd, 1) < 0) return;
  if (move_down && pump(c, &c->down, &c->up, c->upstream.fd, c->client.fd, 0) < 0) return;
  if (c->up.shut && c->down.shut) {
    end_tunnel(c, "", 0);
    return;
  }
  update_relay_interest(c);
}

static void start_relay(struct conn *c) {
  c->state = RELAY;
  c->last_active_ms = now;
  set_deadline(c, 0);
  run_relay(c, 1, 1);
}

/* HELLO: reads the client's first bytes into the upward buffer and decides who carries the tunnel. */
static void on_hello(struct conn *c, int upstream_ready) {
  if (upstream_ready) {
    /* The server spoke first: not TLS, or not only TLS. Node's tunnel handles that. */
    hand_over_tunnel(c);
    return;
  }
  for (;;) {
    if (c->up.off + c->up.len == c->up.cap) {
      hand_over_tunnel(c);
      return;
    }
    size_t room = c->up.cap - c->up.off - c->up.len;
    ssize_t n = read(c->client.fd, c->up.buf + c->up.off + c->up.len, room);
    if (n > 0) {
      c->up.len += (size_t)n;
      if ((size_t)n < room) break;
      continue;
    }
    if (n == 0) {
      /* The client ended before its first message was complete; Node reports it as it would. */
      hand_over_tunnel(c);
      return;
    }
    if (errno == EAGAIN || errno == EINTR) break;
    end_tunnel(c, "", 0);
    return;
  }
  enum hello verdict = c->name[0] == 0 ? HELLO_OTHER : check_hello((const unsigned char *)c->up.buf + c->up.off, c->up.len, c->name);
  if (verdict == HELLO_WAIT) return;
  if (verdict == HELLO_OTHER) {
    hand_over_tunnel(c);
    return;
  }
  start_relay(c);
}

/* The upstream became writable while connecting: connected, or failed. */
static void on_connect_done(struct conn *c) {
  int error = 0;
  socklen_t size = sizeof error;
  if (getsockopt(c->upstream.fd, SOL_SOCKET, SO_ERROR, &error, &size) < 0) error = errno;
  if (error != 0) {
    char code[32];
    snprintf(code, sizeof code, "%s", strerrorname_np(error) != NULL ? strerrorname_np(error) : "ECONNECT");
    connect_failed(c, code);
    return;
  }
  /* An event can be stale: it may concern a socket of an earlier address that failed in the
   * same batch of events, whose descriptor number the new socket took over. */
  struct sockaddr_storage peer;
  socklen_t peer_size = sizeof peer;
  if (getpeername(c->upstream.fd, (struct sockaddr *)&peer, &peer_size) < 0) return;
  on_connected(c);
}

static void on_connected(struct conn *c) {
  ssize_t n = write(c->client.fd, ESTABLISHED, sizeof ESTABLISHED - 1);
  if (n != (ssize_t)(sizeof ESTABLISHED - 1)) {
    end_tunnel(c, "client closed the connection before the tunnel was established", 0);
    return;
  }
  c->state = HELLO;
  set_deadline(c, handshake_ms);
  watch(&c->upstream, EPOLLIN);
  watch(&c->client, EPOLLIN | EPOLLRDHUP);
  /* The head's chunk may have carried the ClientHello already; otherwise the client sends it
   * only after reading the 200, so reading now would find nothing. */
  if (c->up.len > 0) on_hello(c, 0);
}

static struct verdict *verdict_slot(const char *authority, size_t len) {
  uint32_t hash = 2166136261u;
  for (size_t i = 0; i < len; i++) hash = (hash ^ (unsigned char)authority[i]) * 16777619u;
  return &verdicts[hash % VERDICT_SLOTS];
}

static struct verdict *find_verdict(const char *authority, size_t len) {
  if (len > MAX_CACHED_AUTHORITY) return NULL;
  struct verdict *v = verdict_slot(authority, len);
  return strlen(v->authority) == len && memcmp(v->authority, authority, len) == 0 ? v : NULL;
}

/* Remembers the verdict just applied to `c`; a reply is copied (c keeps its own). */
static void remember_verdict(const struct conn *c, int allow, const char *reply, size_t reply_len) {
  size_t len = strlen(c->authority);
  if (len == 0) return;
  struct verdict *v = verdict_slot(c->authority, len);
  free(v->reply);
  memset(v, 0, sizeof *v);
  if (!allow) {
    v->reply = malloc(reply_len);
    if (v->reply == NULL) return;
    memcpy(v->reply, reply, reply_len);
    v->reply_len = reply_len;
  } else {
    v->port = c->port;
    memcpy(v->name, c->name, sizeof v->name);
    memcpy(v->addresses, c->addresses, sizeof v->addresses);
    v->address_count = c->address_count;
  }
  v->allow = allow;
  memcpy(v->authority, c->authority, len + 1);
}

/* HEAD: the first read decides between the front end's own CONNECT handling and Node. */
static void on_head(struct conn *c) {
  /* The first read goes to a shared buffer, so a client that stays silent costs no buffer. */
  static char first[FIRST_READ_BYTES];
  ssize_t n = read(c->client.fd, first, sizeof first);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
    watch(&c->client, EPOLLIN | EPOLLRDHUP);
    return;
  }
  if (n <= 0) {
    destroy(c, 0);
    return;
  }
  if (ensure_buffer(&c->up, FIRST_READ_BYTES) < 0) {
    /* Out of memory: the connection closes, as Node's would. */
    destroy(c, 0);
    return;
  }
  memcpy(c->up.buf, first, (size_t)n);
  c->up.len = (size_t)n;

  const char *authority;
  size_t authority_len;
  int64_t open_count = (int64_t)conn_count + node_count + (uint32_t)(handed_count - taken_count);
  size_t head = open_count > max_connections ? 0 : plain_connect_head(c->up.buf, c->up.len, &authority, &authority_len);
  if (head == 0) {
    hand_over_client(c);
    return;
  }

  /* What followed the head is the start of the tunnel's client stream. */
  c->up.off = head;
  c->up.len -= head;
  struct verdict *known = find_verdict(authority, authority_len);
  char line[MAX_DIRECT_HEAD_BYTES + 96];
  if (known != NULL) {
    /* Node only records this one, so the report can wait for company like an end report. */
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    int m = snprintf(line, sizeof line, "{\"t\":\"k\",\"id\":%u,\"ms\":%lld,\"u\":\"%.*s\"}", c->id, (long long)wall.tv_sec * 1000 + wall.tv_nsec / 1000000, (int)authority_len, authority);
    defer_line(line, (size_t)m);
  } else {
    int m = snprintf(line, sizeof line, "{\"t\":\"c\",\"id\":%u,\"u\":\"%.*s\"}", c->id, (int)authority_len, authority);
    send_line(line, (size_t)m, -1);
  }
  c->state = DECIDING;
  set_deadline(c, 0);

  if (known == NULL) {
    if (authority_len <= MAX_CACHED_AUTHORITY) {
      memcpy(c->authority, authority, authority_len);
      c->authority[authority_len] = 0;
    }
    return;
  }
  if (!known->allow) {
    char *reply = malloc(known->reply_len);
    if (reply == NULL) {
      destroy(c, 0);
      return;
    }
    memcpy(reply, known->reply, known->reply_len);
    start_reply(c, reply, known->reply_len);
    pump_reply(c);
    return;
  }

  c->port = known->port;
  memcpy(c->name, known->name, sizeof c->name);
  memcpy(c->addresses, known->addresses, sizeof c->addresses);
  c->address_count = known->address_count;
  c->address_index = 0;
  c->allowed_us = clock_us();
  try_connect(c);
}

/* Accepts one connection; the listener stays readable while more wait, so the next wait returns at once. */
static void on_accept(struct endpoint *listener) {
  {
    int fd = accept4(listener->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED) return;
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        /* The connection stays in the backlog and the listener readable, so waiting on it again
         * at once would spin. With the spare descriptor the connection is accepted and closed,
         * as libuv does for Node's listeners; otherwise the listeners rest a while. */
        int code = errno;
        if (now - accept_failure_logged_ms >= 1000) {
          accept_failure_logged_ms = now;
          fprintf(stderr, "ringfence front end: accept failed (%s); connections are closed until descriptors are free\n", strerrorname_np(code));
        }
        if ((code == EMFILE || code == ENFILE) && reserve_fd >= 0) {
          close(reserve_fd);
          int dropped = accept4(listener->fd, NULL, NULL, SOCK_CLOEXEC);
          if (dropped >= 0) close(dropped);
          reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
          return;
        }
        for (int i = 0; i < 2; i++) watch(&listeners[i], 0);
        accept_paused_until = now + ACCEPT_PAUSE_MS;
        return;
      }
      fatal("accept");
    }
    /* Accepted TCP sockets inherit TCP_NODELAY from the listener (set in bind_tcp). */
    struct conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
      close(fd);
      return;
    }
    c->id = next_id++;
    if (next_id == 0) next_id = 1;
    c->client = (struct endpoint){.side = CLIENT, .conn = c, .fd = fd};
    c->upstream = (struct endpoint){.side = UPSTREAM, .conn = c, .fd = -1};
    c->accepted_ms = now;
    c->state = HEAD;
    set_deadline(c, handshake_ms);
    c->next = conns;
    if (conns != NULL) conns->prev = c;
    conns = c;
    conn_count++;
    /* A client usually sends its request right after connecting, so it is often there already. */
    on_head(c);
  }
}

static struct conn *find(uint32_t id) {
  for (struct conn *c = conns; c != NULL; c = c->next)
    if (c->id == id) return c;
  return NULL;
}

/* Closes a connection whose allow from Node could not be read, and reports the end so that Node
 * finishes the connection's event. */
static void reject_allow(struct conn *c) {
  c->address_count = 0;
  c->allowed_us = clock_us();
  end_tunnel(c, "the gateway front end received an invalid allow from Node", 0);
}

/* One command from Node. Commands for a connection that has ended meanwhile are dropped. */
static void on_command(char *line) {
  char kind = line[0];
  if (kind == 'x') {
    stopping = 1;
    return;
  }
  if (kind == 'n') {
    char *rest = NULL;
    node_count = (int)strtol(line + 2, &rest, 10);
    taken_count = (uint32_t)strtoul(rest, NULL, 10);
    return;
  }

  int repeatable = kind == 'A' || kind == 'D';
  if (repeatable) kind = (char)(kind - 'A' + 'a');
  char *rest = NULL;
  unsigned long id = strtoul(line + 2, &rest, 10);
  struct conn *c = find((uint32_t)id);
  if (kind == 'z') {
    /* A verdict the front end repeated is no longer Node's: the connection ends at once. The
     * verdicts are cleared even after that end, because a deferred "k" often reaches Node later. */
    for (int i = 0; i < VERDICT_SLOTS; i++) {
      free(verdicts[i].reply);
      memset(&verdicts[i], 0, sizeof verdicts[i]);
    }
    if (c != NULL) destroy(c, 1);
    return;
  }

  if (c == NULL || c->state != DECIDING || rest == NULL) return;
  if (*rest == ' ') rest++;
  if (kind == 'h') {
    hand_over_client(c);
  } else if (kind == 'd') {
    size_t len = strlen(rest);
    unsigned char *bytes = malloc(len / 4 * 3 + 3);
    ssize_t n = bytes == NULL ? -1 : base64_decode(rest, len, bytes);
    if (n < 0) {
      fprintf(stderr, "ringfence front end: the gateway's reply for connection %u is not base64; the connection was closed\n", c->id);
      free(bytes);
      destroy(c, 0);
      return;
    }
    if (repeatable) remember_verdict(c, 0, (const char *)bytes, (size_t)n);
    start_reply(c, (char *)bytes, (size_t)n);
    pump_reply(c);
  } else if (kind == 'a') {
    char *save = NULL;
    char *port = strtok_r(rest, " ", &save);
    char *name = strtok_r(NULL, " ", &save);
    if (port == NULL || name == NULL || strlen(name) > MAX_NAME) {
      fprintf(stderr, "ringfence front end: the gateway's allow for connection %u has no port or a name that is too long; the connection was closed\n", c->id);
      reject_allow(c);
      return;
    }
    c->port = atoi(port);
    snprintf(c->name, sizeof c->name, "%s", strcmp(name, "-") == 0 ? "" : name);
    c->address_count = 0;
    for (char *a = strtok_r(NULL, " ", &save); a != NULL && c->address_count < MAX_ADDRESSES; a = strtok_r(NULL, " ", &save))
      snprintf(c->addresses[c->address_count++], INET6_ADDRSTRLEN, "%s", a);
    if (c->address_count == 0 || c->port < 1 || c->port > 65535) {
      fprintf(stderr, "ringfence front end: the gateway's allow for connection %u has no address or an invalid port; the connection was closed\n", c->id);
      reject_allow(c);
      return;
    }
    c->address_index = 0;
    c->allowed_us = clock_us();
    if (repeatable) remember_verdict(c, 1, NULL, 0);
    try_connect(c);
  }
}

static void on_channel(uint32_t events) {
  if (events & EPOLLOUT) flush_channel();
  if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
  for (;;) {
    char chunk[65536];
    ssize_t n = read(channel.fd, chunk, sizeof chunk);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) {
      stopping = 2;
      return;
    }
    if (in_len + (size_t)n > MAX_COMMAND_LINE) {
      errno = E2BIG;
      fatal("command from the gateway");
    }
    memcpy(in_buf + in_len, chunk, (size_t)n);
    in_len += (size_t)n;
    size_t start = 0;
    for (size_t i = 0; i < in_len; i++) {
      if (in_buf[i] != '\n') continue;
      in_buf[i] = 0;
      char *line = in_buf + start;
      size_t len = i - start;
      /* Node's own messages (handle acknowledgements) are objects; the gateway's are strings. */
      if (len >= 2 && line[0] == '"' && line[len - 1] == '"') {
        line[len - 1] = 0;
        on_command(line + 1);
      } else if (strstr(line, "\"NODE_HANDLE_ACK\"") != NULL) {
        handle_unacknowledged = 0;
        flush_channel();
      }
      start = i + 1;
    }
    memmove(in_buf, in_buf + start, in_len - start);
    in_len -= start;
  }
}

static void on_event(struct endpoint *e, uint32_t events) {
  struct conn *c = e->conn;
  if (c->dead) return;
  switch (c->state) {
  case HEAD:
    on_head(c);
    break;
  case DECIDING:
    /* More bytes or a hang-up while Node decides: they wait until the decision. */
    watch(&c->client, 0);
    break;
  case CONNECTING:
    if (e->side == UPSTREAM) on_connect_done(c);
    break;
  case HELLO:
    on_hello(c, e->side == UPSTREAM && (events & (EPOLLIN | EPOLLHUP | EPOLLERR)));
    break;
  case RELAY: {
    /* Readable means the direction from that socket, writable the direction to it. */
    int failed = (events & (EPOLLHUP | EPOLLERR)) != 0;
    int readable = failed || (events & (EPOLLIN | EPOLLRDHUP)) != 0;
    int writable = failed || (events & EPOLLOUT) != 0;
    if (e->side == CLIENT) run_relay(c, readable, writable);
    else run_relay(c, writable, readable);
    break;
  }
  case RESPOND:
    pump_reply(c);
    break;
  }
}

static void check_timers(void) {
  for (struct conn *c = conns, *next; c != NULL; c = next) {
    next = c->next;
    if (total_ms > 0 && now - c->accepted_ms >= total_ms) {
      char reason[128];
      snprintf(reason, sizeof reason, "the connection reached the gateway's total time limit of %lld ms", (long long)total_ms);
      /* While Node decides, the report makes Node drop its verdict and record this end. */
      if (c->state == DECIDING) c->allowed_us = clock_us();
      if (c->state == HEAD || c->state == RESPOND) destroy(c, 0);
      else end_tunnel(c, reason, 0);
      continue;
    }
    if (c->state == RELAY && idle_ms > 0 && now - c->last_active_ms >= idle_ms) {
      char reason[96];
      snprintf(reason, sizeof reason, "tunnel carried no data for %lld ms", (long long)idle_ms);
      end_tunnel(c, reason, 0);
      continue;
    }
    if (c->state_deadline_ms == 0 || now < c->state_deadline_ms) continue;
    if (c->state == HEAD) {
      send_text("{\"t\":\"n\"}");
      destroy(c, 0);
    } else if (c->state == CONNECTING) {
      connect_failed(c, "timeout");
    } else if (c->state == HELLO) {
      char reason[128];
      snprintf(reason, sizeof reason, "client sent no complete TLS ClientHello or other data within %lld ms", (long long)handshake_ms);
      end_tunnel(c, reason, 0);
    } else if (c->state == RESPOND) {
      destroy(c, 0);
    }
  }
}

static int next_timeout(void) {
  int64_t soonest = -1;
  for (struct conn *c = conns; c != NULL; c = c->next) {
    int64_t at[3] = {c->state_deadline_ms, total_ms > 0 ? c->accepted_ms + total_ms : 0, c->state == RELAY && idle_ms > 0 ? c->last_active_ms + idle_ms : 0};
    for (int i = 0; i < 3; i++)
      if (at[i] > 0 && (soonest < 0 || at[i] < soonest)) soonest = at[i];
  }
  if (deferred_len > 0 && (soonest < 0 || deferred_since + REPORT_DELAY_MS < soonest)) soonest = deferred_since + REPORT_DELAY_MS;
  if (accept_paused_until > 0 && (soonest < 0 || accept_paused_until < soonest)) soonest = accept_paused_until;
  if (soonest < 0) return -1;
  int64_t wait = soonest - clock_ms();
  if (wait < 0) return 0;
  if (wait > 60000) return 60000;
  return (int)wait + 1;
}

static const char *bind_unix(const char *path) {
  struct sockaddr_un address = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof address.sun_path) return "ENAMETOOLONG";
  strcpy(address.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return strerrorname_np(errno);
  if (bind(fd, (struct sockaddr *)&address, sizeof address) < 0 || listen(fd, 511) < 0) {
    const char *code = strerrorname_np(errno);
    close(fd);
    return code;
  }
  struct stat st;
  if (stat(path, &st) == 0) unix_inode = st.st_ino;
  listeners[0].fd = fd;
  return NULL;
}

static const char *bind_tcp(int port, int *bound) {
  struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return strerrorname_np(errno);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  socklen_t size = sizeof address;
  if (bind(fd, (struct sockaddr *)&address, sizeof address) < 0 || listen(fd, 511) < 0 || getsockname(fd, (struct sockaddr *)&address, &size) < 0) {
    const char *code = strerrorname_np(errno);
    close(fd);
    return code;
  }
  *bound = ntohs(address.sin_port);
  listeners[1].fd = fd;
  return NULL;
}

static void remove_unix_path(void) {
  struct stat st;
  if (unix_path != NULL && unix_inode != 0 && stat(unix_path, &st) == 0 && st.st_ino == unix_inode) unlink(unix_path);
}

int main(int argc, char **argv) {
  if (argc != 10) {
    fprintf(stderr, "usage: ringfence-front HANDSHAKE_MS IDLE_MS TOTAL_MS CONNECT_MS MAX_HEAD_BYTES MAX_CONNECTIONS PARENT_PID UNIX_PATH|- TCP_PORT|-\n");
    return 2;
  }
  handshake_ms = atoll(argv[1]);
  idle_ms = atoll(argv[2]);
  total_ms = atoll(argv[3]);
  connect_ms = atoll(argv[4]);
  max_head_bytes = atoll(argv[5]);
  max_connections = atoll(argv[6]);
  pid_t parent = (pid_t)atol(argv[7]);
  const char *channel_fd = getenv("NODE_CHANNEL_FD");
  if (channel_fd == NULL) {
    fprintf(stderr, "ringfence front end: NODE_CHANNEL_FD is not set; the gateway starts this program\n");
    return 2;
  }
  channel.fd = atoi(channel_fd);
  signal(SIGPIPE, SIG_IGN);
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != parent) return 0;
  if (fcntl(channel.fd, F_SETFL, fcntl(channel.fd, F_GETFL) | O_NONBLOCK) < 0) fatal("channel");
  /* Large buffers get mappings of their own, which free returns to the system at once. Without a
   * fixed threshold, glibc raises it when the first such buffer is freed (mallopt(3), glibc 2.8 and
   * later), so later ones come from the heap. The heap returns memory only from its top, which the
   * small buffers of tunnels that stay open can hold. */
#ifdef M_MMAP_THRESHOLD
  mallopt(M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES);
#endif
  in_buf = malloc(MAX_COMMAND_LINE);
  if (in_buf == NULL) fatal("malloc");

  epoll_fd = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd < 0) fatal("epoll_create1");
  add(&channel, EPOLLIN);

  const char *unix_error = NULL, *tcp_error = NULL;
  int tcp_port = -1;
  if (strcmp(argv[8], "-") != 0) {
    unix_path = argv[8];
    unix_error = bind_unix(unix_path);
  }
  if (unix_error == NULL && strcmp(argv[9], "-") != 0) tcp_error = bind_tcp(atoi(argv[9]), &tcp_port);
  char line[256];
  snprintf(line, sizeof line, "{\"t\":\"l\",\"unixError\":\"%s\",\"tcpError\":\"%s\",\"tcp\":%d}", unix_error == NULL ? "" : unix_error,
           tcp_error == NULL ? "" : tcp_error, tcp_port);
  send_text(line);
  if (unix_error != NULL || tcp_error != NULL) {
    remove_unix_path();
    flush_channel();
    return 0;
  }
  reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  for (int i = 0; i < 2; i++)
    if (listeners[i].fd >= 0) add(&listeners[i], EPOLLIN);

  struct epoll_event events[256];
  while (!stopping) {
    int count = epoll_wait(epoll_fd, events, 256, next_timeout());
    if (count < 0 && errno != EINTR) fatal("epoll_wait");
    now = clock_ms();
    for (int i = 0; i < count; i++) {
      struct endpoint *e = events[i].data.ptr;
      if (e->side == CHANNEL) on_channel(events[i].events);
      else if (e->side == LISTENER) on_accept(e);
      else on_event(e, events[i].events);
    }
    check_timers();
    if (deferred_len > 0 && now - deferred_since >= REPORT_DELAY_MS) flush_deferred();
    if (accept_paused_until > 0 && now >= accept_paused_until) {
      accept_paused_until = 0;
      for (int i = 0; i < 2; i++) watch(&listeners[i], EPOLLIN);
    }
    while (dead_conns != NULL) {
      struct conn *c = dead_conns;
      dead_conns = c->next;
      free_buffer(&c->up);
      free_buffer(&c->down);
      free(c->reply);
      free(c);
    }
  }

  /* Stopping: no new connections; every tunnel reports its end; then the channel drains. */
  for (int i = 0; i < 2; i++) unwatch_close(&listeners[i]);
  remove_unix_path();
  for (struct conn *c = conns, *next; c != NULL; c = next) {
    next = c->next;
    if (c->state == RELAY || c->state == HELLO || c->state == CONNECTING) end_tunnel(c, "the gateway closed", 0);
    else destroy(c, 0);
  }
  if (stopping == 2) return 0;
  /* Node closes the connections that arrive once it stops, so the messages go without them and
   * need no acknowledgement. */
  while (fd_head != NULL) {
    struct message *m = fd_head;
    fd_head = m->next;
    close(m->fd);
    m->fd = -1;
    m->next = NULL;
    if (out_tail != NULL) out_tail->next = m;
    else out_head = m;
    out_tail = m;
  }
  fd_tail = NULL;
  handle_unacknowledged = 0;
  fcntl(channel.fd, F_SETFL, fcntl(channel.fd, F_GETFL) & ~O_NONBLOCK);
  flush_deferred();
  flush_channel();
  return 0;
}
