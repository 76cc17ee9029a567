/*
 * In-box forwarder: listens on 127.0.0.1:PORT inside the sandbox's network namespace and
 * carries each TCP connection to the egress gateway's Unix socket, which is bind-mounted in.
 * Then it runs the command.
 *
 *   ringfence-forwarder PORT SOCKET_PATH COMMAND [ARG...]
 *
 * The listening socket is bound before the command starts, so the command never races the
 * forwarder. The calling process becomes the command (execvp), so its exit status and signals are
 * the command's. The accept loop runs in a process of its own, which the PID namespace ends
 * when the command's parent, bwrap's init, exits.
 *
 * ringfence compiles this file with the host's C compiler on first use and caches the binary.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define BUFFER_BYTES 65536

static int write_all(int fd, const char *data, ssize_t length) {
  while (length > 0) {
    ssize_t written = write(fd, data, (size_t)length);
    if (written < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    data += written;
    length -= written;
  }
  return 0;
}

/* Copies both directions until both sides have closed; a half-close is passed on with shutdown. */
static void relay(int client, int upstream) {
  static char buffer[BUFFER_BYTES];
  struct pollfd fds[2] = {{.fd = client, .events = POLLIN}, {.fd = upstream, .events = POLLIN}};
  int open_directions = 2;

  while (open_directions > 0) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    for (int side = 0; side < 2; side++) {
      if (fds[side].fd < 0 || !(fds[side].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      int from = fds[side].fd;
      int to = side == 0 ? upstream : client;
      ssize_t length = read(from, buffer, sizeof buffer);
      if (length < 0 && errno == EINTR) continue;
      if (length <= 0) {
        shutdown(to, SHUT_WR);
        fds[side].fd = -1;
        open_directions--;
        continue;
      }
      if (write_all(to, buffer, length) < 0) return;
    }
  }
}

static void serve(int listener, const char *socket_path) {
  struct sockaddr_un address = {.sun_family = AF_UNIX};
  strncpy(address.sun_path, socket_path, sizeof address.sun_path - 1);
  signal(SIGCHLD, SIG_IGN);

  for (;;) {
    int client = accept(listener, NULL, NULL);
    if (client < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      _exit(1);
    }
    pid_t pid = fork();
    if (pid == 0) {
      close(listener);
      int upstream = socket(AF_UNIX, SOCK_STREAM, 0);
      if (upstream < 0 || connect(upstream, (struct sockaddr *)&address, sizeof address) < 0) {
        fprintf(stderr, "ringfence-forwarder: connecting to the gateway at %s failed: %s\n", socket_path, strerror(errno));
        _exit(1);
      }
      relay(client, upstream);
      _exit(0);
    }
    close(client);
  }
}

/*
 * Runs the command as execvp does, after finding it on PATH with stat() and access(). Under the
 * exec audit, every execve in the box is a round trip to the host-side supervisor and one audit
 * record. execvp tries execve in each PATH directory until one works, which takes four tries for
 * a command in /usr/bin with a PATH that starts with /usr/local/sbin. When the found file cannot
 * be run, when nothing is found and in the cases below, plain execvp runs the whole search, so
 * the command and the error it reports are the ones execvp gives.
 */
static void exec_command(char **argv) {
  const char *name = argv[0];
  const char *path = getenv("PATH");
  /* A name with a slash is not searched. An unset PATH has a libc-specific default, and an
   * empty PATH entry means the working directory, so execvp handles all three itself. */
  if (path != NULL && name[0] != '\0' && strchr(name, '/') == NULL) {
    char candidate[4096];
    const char *start = path;
    for (;;) {
      const char *end = strchrnul(start, ':');
      size_t length = (size_t)(end - start);
      if (length == 0) break;
      int written = snprintf(candidate, sizeof candidate, "%.*s/%s", (int)length, start, name);
      /* A path this long is left to execvp, which can stop there with ENAMETOOLONG. */
      if (written < 0 || (size_t)written >= sizeof candidate) break;
      struct stat facts;
      if (stat(candidate, &facts) == 0 && S_ISREG(facts.st_mode) && access(candidate, X_OK) == 0) {
        execv(candidate, argv);
        /* execv fails on a script without a #! line (ENOEXEC), which execvp hands to /bin/sh. */
        break;
      }
      if (*end == '\0') break;
      start = end + 1;
    }
  }
  execvp(name, argv);
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: ringfence-forwarder PORT SOCKET_PATH COMMAND [ARG...]\n");
    return 125;
  }
  int port = atoi(argv[1]);
  const char *socket_path = argv[2];
  if (port <= 0 || port > 65535 || strlen(socket_path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
    fprintf(stderr, "ringfence-forwarder: invalid port %s or socket path %s\n", argv[1], socket_path);
    return 125;
  }

  int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (listener < 0 || setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
      bind(listener, (struct sockaddr *)&address, sizeof address) < 0 || listen(listener, 128) < 0) {
    fprintf(stderr, "ringfence-forwarder: listening on 127.0.0.1:%d failed: %s\n", port, strerror(errno));
    return 125;
  }

  /* Fork twice so the accept loop is reparented to bwrap's init: the command then has no
   * child it did not start, and a command that waits for all its children does not hang. The
   * PID namespace ends the loop when the command exits. */
  pid_t pid = fork();
  if (pid < 0) {
    fprintf(stderr, "ringfence-forwarder: fork failed: %s\n", strerror(errno));
    return 125;
  }
  if (pid == 0) {
    if (fork() != 0) _exit(0);
    /* The accept loop closes the terminal's stdin, so the command is its only reader. */
    close(STDIN_FILENO);
    serve(listener, socket_path);
    _exit(0);
  }
  while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
  }

  close(listener);
  /* ringfence starts bwrap with SIGINT and SIGQUIT ignored, so Ctrl-C at the terminal cannot end
   * bwrap (and with it the whole box) behind the command's back. The command gets the usual
   * dispositions back; the accept loop above keeps ignoring them. */
  signal(SIGINT, SIG_DFL);
  signal(SIGQUIT, SIG_DFL);
  exec_command(&argv[3]);
  fprintf(stderr, "ringfence: %s: %s\n", argv[3], strerror(errno));
  return errno == ENOENT ? 127 : 126;
}
