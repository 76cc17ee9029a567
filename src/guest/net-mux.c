/*
 * ringfence net mux: runs inside the micro-VM guest, listens on 127.0.0.1:PORT, and carries
 * each accepted connection to the host as one channel on a virtio-serial port, framed as
 * docs/guest-protocol.md specifies (CONNECT, DATA, EOF, CLOSE, WINDOW). The host joins each
 * channel to the gateway's Unix socket. One thread, one poll loop.
 *
 *   net-mux --path /dev/vportNpM --port 3128
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define HEADER_BYTES 9
#define MAX_PAYLOAD 65536
#define INITIAL_WINDOW 262144
#define MAX_CHANNELS 256

enum {
  T_HELLO = 0x01,
  T_SHUTDOWN = 0x02,
  T_WINDOW = 0x20,
  T_CONNECT = 0x30,
  T_DATA = 0x31,
  T_EOF = 0x32,
  T_CLOSE = 0x33,
};

struct channel {
  uint32_t id;        /* 0 when the slot is free */
  int fd;
  uint32_t window;    /* bytes the guest may still send to the host */
  int read_eof;       /* the socket reached end of file and EOF went to the host */
  int host_eof;       /* the host sent EOF: shut down writing once pending is flushed */
  int write_shut;
  unsigned char *pending; /* bytes from the host not yet written to the socket */
  size_t pending_len;
};

static struct channel channels[MAX_CHANNELS];
static uint32_t next_channel = 2;

/* Bytes waiting to go to the port, and bytes read from it that make no whole frame yet. */
static unsigned char *out_buf;
static size_t out_len, out_cap;
static unsigned char in_buf[HEADER_BYTES + MAX_PAYLOAD];
static size_t in_len;

static void die(const char *what) {
  fprintf(stderr, "ringfence net-mux: %s: %s\n", what, strerror(errno));
  exit(1);
}

/*
 * Brings the loopback interface up, which the guest kernel then gives 127.0.0.1/8. The guest
 * init leaves this to the net mux, because each command the init runs costs a fork under TCG.
 */
static void loopback_up(void) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) die("socket for setting lo up");
  struct ifreq request;
  memset(&request, 0, sizeof request);
  strncpy(request.ifr_name, "lo", IFNAMSIZ - 1);
  if (ioctl(fd, SIOCGIFFLAGS, &request) < 0) die("reading the flags of lo");
  request.ifr_flags |= IFF_UP;
  if (ioctl(fd, SIOCSIFFLAGS, &request) < 0) die("setting lo up");
  close(fd);
}

static void protocol_error(const char *what) {
  fprintf(stderr, "ringfence net-mux: protocol error: %s\n", what);
  exit(1);
}

static void put_u32(unsigned char *p, uint32_t v) {
  p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static uint32_t get_u32(const unsigned char *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void send_frame(uint32_t channel, uint8_t type, const void *payload, uint32_t length) {
  size_t need = out_len + HEADER_BYTES + length;
  if (need > out_cap) {
    size_t cap = out_cap == 0 ? 65536 : out_cap;
    while (cap < need) cap *= 2;
    unsigned char *grown = realloc(out_buf, cap);
    if (grown == NULL) die("allocating the port's output buffer");
    out_buf = grown;
    out_cap = cap;
  }
  unsigned char *p = out_buf + out_len;
  put_u32(p, channel);
  p[4] = type;
  put_u32(p + 5, length);
  if (length > 0) memcpy(p + HEADER_BYTES, payload, length);
  out_len = need;
}

static void send_window(uint32_t channel, uint32_t increment) {
  unsigned char payload[4];
  put_u32(payload, increment);
  send_frame(channel, T_WINDOW, payload, 4);
}

static struct channel *find_channel(uint32_t id) {
  for (int i = 0; i < MAX_CHANNELS; i++)
    if (channels[i].id == id) return &channels[i];
  return NULL;
}

static void drop_channel(struct channel *c, int tell_host) {
  if (tell_host) send_frame(c->id, T_CLOSE, NULL, 0);
  close(c->fd);
  free(c->pending);
  memset(c, 0, sizeof *c);
  c->fd = -1;
}

static void maybe_finish(struct channel *c) {
  /* Both directions ended: the channel is done. */
  if (c->read_eof && c->write_shut) drop_channel(c, 1);
}

static void flush_socket(struct channel *c) {
  while (c->pending_len > 0) {
    ssize_t n = write(c->fd, c->pending, c->pending_len);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      drop_channel(c, 1);
      return;
    }
    memmove(c->pending, c->pending + n, c->pending_len - n);
    c->pending_len -= n;
    /* Bytes delivered to the socket are granted back to the host. */
    if (n > 0) send_window(c->id, (uint32_t)n);
  }
  if (c->host_eof && !c->write_shut) {
    shutdown(c->fd, SHUT_WR);
    c->write_shut = 1;
    maybe_finish(c);
  }
}

static void handle_frame(uint32_t id, uint8_t type, const unsigned char *payload, uint32_t length) {
  if (id == 0) {
    if (type == T_SHUTDOWN) exit(0);
    protocol_error("unexpected frame on the control channel");
  }
  if (id % 2 != 0 || id >= next_channel) protocol_error("frame for a channel the guest never opened");
  struct channel *c = find_channel(id);
  /* A channel already closed here may still receive frames the host sent before it saw CLOSE. */
  if (c == NULL) return;

  switch (type) {
  case T_DATA: {
    if (c->host_eof) protocol_error("DATA after EOF");
    if (c->pending_len + length > INITIAL_WINDOW) protocol_error("DATA beyond the granted window");
    unsigned char *grown = realloc(c->pending, c->pending_len + length);
    if (grown == NULL) die("allocating a channel buffer");
    c->pending = grown;
    memcpy(c->pending + c->pending_len, payload, length);
    c->pending_len += length;
    flush_socket(c);
    break;
  }
  case T_EOF:
    c->host_eof = 1;
    flush_socket(c);
    break;
  case T_CLOSE:
    drop_channel(c, 0);
    break;
  case T_WINDOW:
    if (length != 4) protocol_error("WINDOW payload is not 4 bytes");
    c->window += get_u32(payload);
    break;
  default:
    protocol_error("unexpected frame type on a connection channel");
  }
}

static void read_port(int port) {
  ssize_t n = read(port, in_buf + in_len, sizeof in_buf - in_len);
  if (n == 0) exit(0);
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) return;
    die("reading the virtio-serial port");
  }
  in_len += n;
  size_t offset = 0;
  while (in_len - offset >= HEADER_BYTES) {
    uint32_t id = get_u32(in_buf + offset);
    uint8_t type = in_buf[offset + 4];
    uint32_t length = get_u32(in_buf + offset + 5);
    if (length > MAX_PAYLOAD) protocol_error("frame longer than the maximum payload");
    if (in_len - offset < HEADER_BYTES + length) break;
    handle_frame(id, type, in_buf + offset + HEADER_BYTES, length);
    offset += HEADER_BYTES + length;
  }
  memmove(in_buf, in_buf + offset, in_len - offset);
  in_len -= offset;
}

static void accept_connection(int listener) {
  int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
  if (fd < 0) return;
  struct channel *c = find_channel(0);
  if (c == NULL) {
    /* Every slot is busy: refuse this connection rather than queue it. */
    close(fd);
    return;
  }
  memset(c, 0, sizeof *c);
  c->id = next_channel;
  next_channel += 2;
  c->fd = fd;
  c->window = INITIAL_WINDOW;
  send_frame(c->id, T_CONNECT, NULL, 0);
}

static void read_socket(struct channel *c) {
  static unsigned char buf[MAX_PAYLOAD];
  size_t room = c->window < sizeof buf ? c->window : sizeof buf;
  if (room == 0) return;
  ssize_t n = read(c->fd, buf, room);
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) return;
    drop_channel(c, 1);
    return;
  }
  if (n == 0) {
    c->read_eof = 1;
    send_frame(c->id, T_EOF, NULL, 0);
    maybe_finish(c);
    return;
  }
  c->window -= n;
  send_frame(c->id, T_DATA, buf, (uint32_t)n);
}

int main(int argc, char **argv) {
  const char *path = NULL;
  int port_number = 3128;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--path") == 0 && i + 1 < argc) path = argv[++i];
    else if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) port_number = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: net-mux --path DEVICE [--port PORT]\n");
      return 2;
    }
  }
  if (path == NULL || port_number <= 0 || port_number > 65535) {
    fprintf(stderr, "usage: net-mux --path DEVICE [--port PORT]\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  for (int i = 0; i < MAX_CHANNELS; i++) channels[i].fd = -1;

  int port = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (port < 0) die(path);

  loopback_up();
  int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (listener < 0) die("socket");
  int one = 1;
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(port_number)};
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(listener, (struct sockaddr *)&address, sizeof address) < 0) die("binding 127.0.0.1");
  if (listen(listener, 128) < 0) die("listen");

  const char *hello = "{\"agent\":\"net\",\"version\":1}";
  send_frame(0, T_HELLO, hello, strlen(hello));

  struct pollfd fds[MAX_CHANNELS + 2];
  struct channel *owners[MAX_CHANNELS + 2];
  for (;;) {
    int count = 0;
    fds[count] = (struct pollfd){.fd = port, .events = POLLIN | (out_len > 0 ? POLLOUT : 0)};
    owners[count++] = NULL;
    fds[count] = (struct pollfd){.fd = listener, .events = POLLIN};
    owners[count++] = NULL;
    for (int i = 0; i < MAX_CHANNELS; i++) {
      struct channel *c = &channels[i];
      if (c->id == 0) continue;
      short events = 0;
      if (!c->read_eof && c->window > 0) events |= POLLIN;
      if (c->pending_len > 0) events |= POLLOUT;
      fds[count] = (struct pollfd){.fd = c->fd, .events = events};
      owners[count++] = c;
    }

    if (poll(fds, count, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }

    if (fds[0].revents & POLLOUT) {
      ssize_t n = write(port, out_buf, out_len);
      if (n < 0 && errno != EAGAIN && errno != EINTR) die("writing the virtio-serial port");
      if (n > 0) {
        memmove(out_buf, out_buf + n, out_len - n);
        out_len -= n;
      }
    }
    if (fds[0].revents & POLLIN) read_port(port);
    if (fds[0].revents & (POLLHUP | POLLERR) && !(fds[0].revents & POLLIN)) {
      /* The host end is not connected yet or went away; wait rather than spin. */
      usleep(10000);
    }
    if (fds[1].revents & POLLIN) accept_connection(listener);
    for (int i = 2; i < count; i++) {
      struct channel *c = owners[i];
      if (c->id == 0 || fds[i].fd != c->fd) continue;
      if (fds[i].revents & POLLOUT) flush_socket(c);
      if (c->id == 0) continue;
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) read_socket(c);
    }
  }
}
