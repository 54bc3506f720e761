/*
 * Connection churn for bench/tcp.ts, in C so that the load generator and the
 * backend are not what limits the rate (one epoll loop each, no allocation
 * per connection).
 *
 *   churn server PORT BYTES
 *     Accept on 127.0.0.1:PORT; read BYTES from each connection, echo them as
 *     they come, then close (the server closes first: see below).
 *
 *   churn client PORT BYTES CONCURRENCY SECONDS SOURCES
 *     Keep CONCURRENCY connections going to 127.0.0.1:PORT for SECONDS: each
 *     connects, sends BYTES, reads BYTES back and the server's FIN, closes,
 *     and is replaced at once. Connections are spread over SOURCES local
 *     addresses 127.0.0.2, 127.0.0.3, ... Prints one JSON line: connections
 *     completed, errors by kind, elapsed seconds, the client's own CPU time,
 *     and connection times (connect to close) in µs: median, p99.
 *
 * Why the server closes first: whoever closes first keeps the TIME_WAIT. Here
 * that is the backend's and the proxy's accepted sockets, which hold no
 * ephemeral port; the client's and the proxy's outgoing sockets close second
 * and leave nothing behind. At ~10,000 connections a second a client-first
 * close would leave ~600,000 TIME_WAIT sockets on ephemeral ports within a
 * minute, and connect() would spend its time searching for a free port.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAX_FD 65536
#define MAX_EVENTS 512
/* A connection that takes longer than this counts as a timeout and is closed. */
#define TIMEOUT_US 5000000LL
/* Connection-time histogram: 10 µs buckets up to 200 ms, then one overflow bucket. */
#define BUCKET_US 10
#define BUCKETS 20001

static long long now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static int die(const char *what) {
  perror(what);
  exit(1);
}

/* ---- server ---- */

static int server(int port, int bytes) {
  static int got[MAX_FD];
  char buf[65536];
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (lfd < 0) die("socket");
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
  if (listen(lfd, 8192) < 0) die("listen");
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  printf("ready\n");
  fflush(stdout);
  struct epoll_event events[MAX_EVENTS];
  for (;;) {
    int n = epoll_wait(ep, events, MAX_EVENTS, -1);
    for (int i = 0; i < n; i++) {
      int fd = events[i].data.fd;
      if (fd == lfd) {
        for (;;) {
          int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
          if (c < 0) break;
          if (c >= MAX_FD) {
            close(c);
            continue;
          }
          got[c] = 0;
          struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
          epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
        }
        continue;
      }
      ssize_t r = read(fd, buf, sizeof buf);
      if (r < 0 && errno == EAGAIN) continue;
      if (r > 0) {
        /* Small answers on a fresh socket: the kernel takes them whole. */
        if (write(fd, buf, (size_t)r) == r) {
          got[fd] += (int)r;
          if (got[fd] < bytes) continue;
        }
      }
      close(fd); /* echoed everything, EOF, or an error */
    }
  }
  return 0;
}

/* ---- client ---- */

enum { IDLE, CONNECTING, READING };

struct conn {
  int state;
  int got;
  long long started;
};

static struct conn conns[MAX_FD];
static long long hist[BUCKETS];
static long long completed, err_connect, err_reset, err_short, err_timeout;
static int epfd, port, bytes, nsources;
static char *request;

static void open_one(void) {
  static unsigned next_source;
  for (;;) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    if (fd >= MAX_FD) die("fd beyond table");
    if (nsources > 0) {
      /* Spread over several local addresses; the port is chosen at connect(), not here. */
      int one = 1;
      setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
      struct sockaddr_in src = {.sin_family = AF_INET};
      src.sin_addr.s_addr = htonl(0x7f000002u + next_source++ % (unsigned)nsources);
      if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0) die("bind source");
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct conn *c = &conns[fd];
    c->started = now_us();
    c->got = 0;
    int r = connect(fd, (struct sockaddr *)&a, sizeof a);
    if (r < 0 && errno != EINPROGRESS) {
      err_connect++;
      close(fd);
      continue;
    }
    c->state = CONNECTING;
    struct epoll_event ev = {.events = EPOLLOUT, .data.fd = fd};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    return;
  }
}

static void finish(int fd, long long *counter) {
  struct conn *c = &conns[fd];
  if (counter == &completed) {
    long long us = now_us() - c->started;
    long long b = us / BUCKET_US;
    hist[b < BUCKETS ? b : BUCKETS - 1]++;
  }
  (*counter)++;
  c->state = IDLE;
  close(fd); /* also leaves the epoll set */
}

static long long percentile(double p) {
  long long total = 0, seen = 0;
  for (int i = 0; i < BUCKETS; i++) total += hist[i];
  if (total == 0) return 0;
  long long want = (long long)(p * (double)total);
  for (int i = 0; i < BUCKETS; i++) {
    seen += hist[i];
    if (seen > want) return (long long)i * BUCKET_US + BUCKET_US / 2;
  }
  return (long long)BUCKETS * BUCKET_US;
}

static int client(int concurrency, double seconds) {
  char buf[65536];
  request = malloc((size_t)bytes);
  memset(request, 'x', (size_t)bytes);
  epfd = epoll_create1(0);
  long long start = now_us();
  long long end = start + (long long)(seconds * 1e6);
  long long last_sweep = start;
  for (int i = 0; i < concurrency; i++) open_one();
  struct epoll_event events[MAX_EVENTS];
  int stopping = 0;
  int live = concurrency;
  while (live > 0) {
    int n = epoll_wait(epfd, events, MAX_EVENTS, 100);
    long long t = now_us();
    if (!stopping && t >= end) stopping = 1;
    for (int i = 0; i < n; i++) {
      int fd = events[i].data.fd;
      struct conn *c = &conns[fd];
      if (c->state == CONNECTING) {
        int soerr = 0;
        socklen_t len = sizeof soerr;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len);
        if (soerr != 0 || write(fd, request, (size_t)bytes) != bytes) {
          finish(fd, &err_connect);
        } else {
          c->state = READING;
          struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
          epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev);
          continue;
        }
      } else if (c->state == READING) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0 && errno == EAGAIN) continue;
        if (r > 0) {
          c->got += (int)r;
          continue;
        }
        if (r == 0) finish(fd, c->got == bytes ? &completed : &err_short);
        else finish(fd, &err_reset);
      } else {
        continue;
      }
      /* The slot is free: replace it, or let it go once time is up. */
      if (stopping) live--;
      else open_one();
    }
    if (t - last_sweep >= 100000) {
      last_sweep = t;
      for (int fd = 0; fd < MAX_FD; fd++) {
        if (conns[fd].state != IDLE && t - conns[fd].started > TIMEOUT_US) {
          finish(fd, &err_timeout);
          if (stopping) live--;
          else open_one();
        }
      }
    }
  }
  double elapsed = (double)(now_us() - start) / 1e6;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double cpu_ms = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
                  (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
  printf(
      "{\"completed\":%lld,\"errors\":{\"connect\":%lld,\"reset\":%lld,\"short\":%lld,\"timeout\":%lld},"
      "\"seconds\":%.3f,\"cpuMs\":%.1f,\"medianUs\":%lld,\"p99Us\":%lld}\n",
      completed, err_connect, err_reset, err_short, err_timeout, elapsed, cpu_ms, percentile(0.5),
      percentile(0.99));
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 4 && strcmp(argv[1], "server") == 0) return server(atoi(argv[2]), atoi(argv[3]));
  if (argc >= 7 && strcmp(argv[1], "client") == 0) {
    port = atoi(argv[2]);
    bytes = atoi(argv[3]);
    nsources = atoi(argv[6]);
    return client(atoi(argv[4]), atof(argv[5]));
  }
  fprintf(stderr,
          "usage: churn server PORT BYTES | churn client PORT BYTES CONCURRENCY SECONDS SOURCES\n");
  return 2;
}
