/* End-to-end test of the C ABI: a server and agents over real QUIC on
 * loopback, a TCP echo target, dials, reads, writes, half-close, timeouts,
 * calls blocked on a silent target ended by another thread (cancel, free)
 * or by their timeout, the socketpair hand-over, a C auth
 * callback, and bad input. Run under Valgrind by run-tests.sh: every
 * handle and string is freed, so any leak is reported. */

#include "check.h"
#include "connector.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static const uint64_t SEC = 1000000; /* microseconds */

/* ---- a TCP echo target: echoes until EOF, then half-closes ---- */

static void *echo_conn(void *arg) {
  int fd = (int)(intptr_t)arg;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) {
    ssize_t off = 0;
    while (off < n) {
      ssize_t w = write(fd, buf + off, (size_t)(n - off));
      if (w <= 0) goto done;
      off += w;
    }
  }
  shutdown(fd, SHUT_WR);
done:
  close(fd);
  return NULL;
}

typedef struct {
  int listen_fd;
  int conns;
} echo_server;

static void *echo_accept(void *arg) {
  echo_server *srv = arg;
  for (int i = 0; i < srv->conns; i++) {
    int fd = accept(srv->listen_fd, NULL, NULL);
    if (fd < 0) break;
    echo_conn((void *)(intptr_t)fd);
  }
  return NULL;
}

static int listen_loopback(int *port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(fd, (struct sockaddr *)&addr, sizeof addr) == 0, "bind");
  CHECK(listen(fd, 16) == 0, "listen");
  socklen_t len = sizeof addr;
  getsockname(fd, (struct sockaddr *)&addr, &len);
  *port = ntohs(addr.sin_port);
  return fd;
}

/* ---- the auth callback: accepts token "callback-token" as node-cb ---- */

static int auth_calls = 0;

static void authenticate(void *user_data, const connector_auth_request *req, connector_auth_decision *decision) {
  int *calls = user_data;
  (*calls)++;
  const char expected[] = "callback-token";
  if (req->token != NULL && req->token_len == strlen(expected) && memcmp(req->token, expected, req->token_len) == 0 &&
      strcmp(req->agent_id, "node-cb") == 0) {
    char *err = NULL;
    if (connector_auth_accept(decision, "node-cb", "host=node-cb,cidr=127.0.0.0/8", &err) != CONNECTOR_OK) {
      fprintf(stderr, "accept failed: %s\n", err);
      connector_string_free(err);
    }
  } else {
    connector_auth_reject(decision, "unknown token", NULL);
  }
}

/* ---- cancellation from another thread ---- */

static void *fire_later(void *arg) {
  connector_cancel_fire((connector_cancel *)arg, NULL);
  return NULL;
}

/* ---- a call pending in another thread, interrupted once it is blocked ---- */

typedef struct {
  connector_stream *stream;
  connector_cancel *cancel;
  const uint8_t *data; /* NULL: read, else write `len` bytes of it */
  size_t len;
  int announce[2]; /* the thread writes its id here just before the call */
  size_t done;     /* bytes read or written */
  connector_result result;
} pending_call;

static void *call_pending(void *arg) {
  pending_call *p = arg;
  pid_t tid = (pid_t)syscall(SYS_gettid);
  CHECK(write(p->announce[1], &tid, sizeof tid) == (ssize_t)sizeof tid, "announce");
  if (p->data == NULL) {
    uint8_t buf[16];
    p->result = connector_stream_read(p->stream, buf, sizeof buf, 0, p->cancel, &p->done, NULL);
  } else {
    p->result = connector_stream_write(p->stream, p->data, p->len, 0, p->cancel, &p->done, NULL);
  }
  return NULL;
}

/* Starts `p` on a new thread and returns once that thread has announced
 * itself and is parked on a futex: inside the library's blocking wait (the
 * call takes no other lock that blocks for long). Residual race: a futex
 * wait on a briefly contended lock on the way in would also match; the
 * interrupt then lands before the wait, which gives the same result code
 * through the call's entry check. Without /proc, it returns after the
 * announcement. */
static pthread_t start_blocked(pending_call *p) {
  CHECK(pipe(p->announce) == 0, "pipe");
  pthread_t thread;
  pthread_create(&thread, NULL, call_pending, p);
  pid_t tid = 0;
  CHECK(read(p->announce[0], &tid, sizeof tid) == (ssize_t)sizeof tid, "announcement");
  close(p->announce[0]);
  close(p->announce[1]);
  char path[64];
  snprintf(path, sizeof path, "/proc/self/task/%d/syscall", (int)tid);
  for (long polls = 0;; polls++) {
    FILE *f = fopen(path, "r");
    if (f == NULL) break;
    char line[32] = {0};
    int ok = fgets(line, sizeof line, f) != NULL;
    fclose(f);
    if (!ok) break;
    if (strncmp(line, "202 ", 4) == 0) break; /* futex (x86-64) */
    CHECK(polls < 6000000, "the call never blocked (syscall %s)", line);
    sched_yield();
  }
  return thread;
}

/* A TCP target that accepts (through the kernel's queue) and then never
 * reads or writes: returns the listening socket; accept() the connection
 * after dialling to hold its end. */
static int silent_target(char *target, size_t size) {
  int port = 0;
  int fd = listen_loopback(&port);
  snprintf(target, size, "127.0.0.1:%d", port);
  return fd;
}

/* ---- a drain running on another thread ---- */

typedef struct {
  connector_server *server;
  uint64_t grace_ms;
  atomic_int finished; /* set once the call returned */
  connector_result result;
  char *err;
} drain_call;

static void *call_drain(void *arg) {
  drain_call *d = arg;
  d->result = connector_server_drain(d->server, d->grace_ms, &d->err);
  atomic_store(&d->finished, 1);
  return NULL;
}

/* Whether the agent's metrics page has the exact line `line`. */
static int agent_metric_is(connector_agent *agent, const char *line) {
  char *page = NULL;
  OK(connector_agent_metrics(agent, &page, &err));
  size_t len = strlen(line);
  int found = 0;
  for (const char *at = page; (at = strstr(at, line)) != NULL; at += len) {
    if ((at == page || at[-1] == '\n') && (at[len] == '\n' || at[len] == '\0')) found = 1;
  }
  connector_string_free(page);
  return found;
}

static connector_agent *start_agent(const char *server_addr, const char *ca, const char *id, const char *token) {
  connector_agent_config *cfg = NULL;
  connector_agent *agent = NULL;
  OK(connector_agent_config_new(&cfg, &err));
  OK(connector_agent_config_set_server(cfg, server_addr, &err));
  OK(connector_agent_config_set_server_name(cfg, "localhost", &err));
  OK(connector_agent_config_add_server_ca_pem(cfg, (const uint8_t *)ca, strlen(ca), &err));
  OK(connector_agent_config_set_agent_id(cfg, id, &err));
  OK(connector_agent_config_set_token(cfg, (const uint8_t *)token, strlen(token), &err));
  OK(connector_agent_config_add_allow_rule(cfg, "127.0.0.1/32", &err));
  OK(connector_agent_config_set_worker_threads(cfg, 1, &err));
  OK(connector_agent_start(cfg, &agent, &err));
  OK(connector_agent_config_free(cfg, &err));
  return agent;
}

int main(void) {
  char *ca = NULL, *cert = NULL, *key = NULL, *addr = NULL;
  OK(connector_test_certificates("localhost,127.0.0.1", &ca, &cert, &key, &err));

  /* Server: token auth for node-a, plus the C callback. */
  connector_server_config *scfg = NULL;
  connector_server *server = NULL;
  OK(connector_server_config_new(&scfg, &err));
  EXPECT(CONNECTOR_ERR_INVALID_ARGUMENT, connector_server_config_set_listen(scfg, "not an address", &err));
  EXPECT(CONNECTOR_ERR_INVALID_ARGUMENT, connector_server_config_set_identity_pem(scfg, (const uint8_t *)"junk", 4, (const uint8_t *)key, strlen(key), &err));
  EXPECT(CONNECTOR_ERR_SETUP, connector_server_start(scfg, &server, &err)); /* no certificate yet */
  OK(connector_server_config_set_listen(scfg, "127.0.0.1:0", &err));
  OK(connector_server_config_set_identity_pem(scfg, (const uint8_t *)cert, strlen(cert), (const uint8_t *)key, strlen(key), &err));
  EXPECT(CONNECTOR_ERR_SETUP, connector_server_start(scfg, &server, &err)); /* no authentication yet */
  EXPECT(CONNECTOR_ERR_INVALID_ARGUMENT, connector_server_config_add_token(scfg, (const uint8_t *)"t", 1, "node-a", "host=not valid!", &err));
  OK(connector_server_config_add_token(scfg, (const uint8_t *)"token-a", 7, "node-a", "host=node-a,cidr=127.0.0.0/8", &err));
  OK(connector_server_config_set_authenticator(scfg, authenticate, &auth_calls, &err));
  connector_limits limits = {.dial_timeout_ms = 5000};
  OK(connector_server_config_set_limits(scfg, &limits, &err));
  EXPECT(CONNECTOR_ERR_INVALID_ARGUMENT, connector_server_config_set_server_count(scfg, 0, &err));
  EXPECT(CONNECTOR_ERR_INVALID_ARGUMENT, connector_server_config_set_tcp_listen(scfg, "sideways", &err));
  OK(connector_server_config_set_tcp_listen(scfg, "same", &err));
  EXPECT(CONNECTOR_ERR_INVALID_ARGUMENT, connector_server_config_set_keepalive(scfg, 0, 0, &err));
  OK(connector_server_config_set_worker_threads(scfg, 2, &err));
  OK(connector_server_start(scfg, &server, &err));
  OK(connector_server_config_free(scfg, &err));
  EXPECT(CONNECTOR_ERR_INVALID_HANDLE, connector_server_config_free(scfg, &err)); /* double free */
  OK(connector_server_local_addr(server, &addr, &err));

  /* Agents: node-a by token, node-cb through the callback, and an impostor. */
  connector_agent *agent = start_agent(addr, ca, "node-a", "token-a");
  OK(connector_agent_wait_connected(agent, 30 * SEC, NULL, &err));
  connector_agent *cb_agent = start_agent(addr, ca, "node-cb", "callback-token");
  OK(connector_agent_wait_connected(cb_agent, 30 * SEC, NULL, &err));
  connector_agent *bad_agent = start_agent(addr, ca, "node-x", "wrong-token");
  EXPECT(CONNECTOR_ERR_REJECTED, connector_agent_wait_connected(bad_agent, 30 * SEC, NULL, &err));
  OK(connector_agent_free(bad_agent, &err));
  CHECK(auth_calls >= 2, "the callback was asked (%d calls)", auth_calls);
  OK(connector_server_wait_agent(server, "node-a", 30 * SEC, NULL, &err));
  OK(connector_server_wait_agent(server, "node-cb", 30 * SEC, NULL, &err));
  size_t count = 0;
  OK(connector_server_agent_count(server, &count, &err));
  CHECK(count == 2, "two agents connected, got %zu", count);
  /* The agent's sessions: one replica (the default server count), over QUIC. */
  OK(connector_agent_wait_sessions(agent, 1, 30 * SEC, NULL, &err));
  char *sessions = NULL;
  size_t expected = 0;
  OK(connector_agent_sessions(agent, &sessions, &expected, &err));
  CHECK(strcmp(sessions, "connector quic") == 0 && expected == 1, "sessions %s, expecting %zu", sessions, expected);
  connector_string_free(sessions);
  EXPECT(CONNECTOR_ERR_TIMED_OUT, connector_agent_wait_sessions(agent, 2, 100000, NULL, &err));
  char *tcp_addr = NULL; /* the TCP fallback listener, on the QUIC port by default */
  OK(connector_server_tcp_addr(server, &tcp_addr, &err));
  CHECK(tcp_addr != NULL && strcmp(tcp_addr, addr) == 0, "TCP listener %s, QUIC %s", tcp_addr ? tcp_addr : "none", addr);
  connector_string_free(tcp_addr);

  /* The echo target: three connections (blocking API, cancel test, fd). */
  int port = 0;
  echo_server echo = {.listen_fd = listen_loopback(&port), .conns = 3};
  pthread_t echo_thread;
  pthread_create(&echo_thread, NULL, echo_accept, &echo);
  char target[64];
  snprintf(target, sizeof target, "127.0.0.1:%d", port);

  /* 1. Dial, timeout while the target is silent, echo, half-close. */
  connector_stream *stream = NULL, *stream2 = NULL;
  OK(connector_server_dial(server, CONNECTOR_SELECT_AGENT, "node-a", target, 10 * SEC, NULL, &stream, &err));
  char *agent_id = NULL;
  OK(connector_stream_agent_id(stream, &agent_id, &err));
  CHECK(strcmp(agent_id, "node-a") == 0, "carried by node-a, got %s", agent_id);
  connector_string_free(agent_id);
  char buf[64];
  size_t n = 0;
  EXPECT(CONNECTOR_ERR_TIMED_OUT, connector_stream_read(stream, (uint8_t *)buf, sizeof buf, 20000, NULL, &n, &err));
  CHECK(n == 0, "nothing read on timeout");
  const char msg[] = "hello through the tunnel";
  OK(connector_stream_write(stream, (const uint8_t *)msg, strlen(msg), 10 * SEC, NULL, &n, &err));
  CHECK(n == strlen(msg), "all written");
  size_t got = 0;
  while (got < strlen(msg)) {
    OK(connector_stream_read(stream, (uint8_t *)buf + got, sizeof buf - got, 10 * SEC, NULL, &n, &err));
    CHECK(n > 0, "no early EOF");
    got += n;
  }
  CHECK(memcmp(buf, msg, strlen(msg)) == 0, "echo matches");
  OK(connector_stream_close_write(stream, 10 * SEC, NULL, &err));
  OK(connector_stream_read(stream, (uint8_t *)buf, sizeof buf, 10 * SEC, NULL, &n, &err));
  CHECK(n == 0, "EOF after half-close, got %zu bytes", n);
  EXPECT(CONNECTOR_ERR_INVALID_ARGUMENT, connector_stream_read(stream, NULL, 0, 0, NULL, &n, &err));
  OK(connector_stream_free(stream, &err));
  EXPECT(CONNECTOR_ERR_INVALID_HANDLE, connector_stream_read(stream, (uint8_t *)buf, sizeof buf, 0, NULL, &n, &err));
  EXPECT(CONNECTOR_ERR_INVALID_HANDLE, connector_stream_free(stream, &err));

  /* 2. A read with no timeout, cancelled from another thread. */
  OK(connector_server_dial(server, CONNECTOR_SELECT_TARGET_HOST, NULL, target, 0, NULL, &stream, &err));
  connector_cancel *cancel = NULL;
  OK(connector_cancel_new(&cancel, &err));
  pthread_t firer;
  pthread_create(&firer, NULL, fire_later, cancel);
  EXPECT(CONNECTOR_ERR_CANCELLED, connector_stream_read(stream, (uint8_t *)buf, sizeof buf, 0, cancel, &n, &err));
  pthread_join(firer, NULL);
  OK(connector_cancel_reset(cancel, &err));
  OK(connector_stream_write(stream, (const uint8_t *)"x", 1, 10 * SEC, cancel, &n, &err));
  OK(connector_stream_read(stream, (uint8_t *)buf, sizeof buf, 10 * SEC, cancel, &n, &err));
  CHECK(n == 1 && buf[0] == 'x', "stream usable after a cancelled read");
  OK(connector_stream_free(stream, &err)); /* aborts: the target sees a reset */

  /* 2b. Calls already blocked on a silent target, ended from another thread. */
  char silent[64];
  int silent_fd = silent_target(silent, sizeof silent);
  OK(connector_server_dial(server, CONNECTOR_SELECT_AGENT, "node-a", silent, 10 * SEC, NULL, &stream, &err));
  int held = accept(silent_fd, NULL, NULL);
  CHECK(held >= 0, "accept the silent connection");
  /* A read blocked in the library, cancelled. */
  OK(connector_cancel_reset(cancel, &err));
  pending_call pr = {.stream = stream, .cancel = cancel};
  pthread_t blocked = start_blocked(&pr);
  OK(connector_cancel_fire(cancel, &err));
  pthread_join(blocked, NULL);
  CHECK(pr.result == CONNECTOR_ERR_CANCELLED && pr.done == 0, "blocked read after cancel: %s",
        connector_result_name(pr.result));
  OK(connector_cancel_reset(cancel, &err));
  CHECK(write(held, "y", 1) == 1, "the target speaks");
  OK(connector_stream_read(stream, (uint8_t *)buf, sizeof buf, 10 * SEC, cancel, &n, &err));
  CHECK(n == 1 && buf[0] == 'y', "stream usable after a cancelled blocked read");
  /* A blocked read, and the stream freed: the read ends with CLOSED. */
  pr = (pending_call){.stream = stream};
  blocked = start_blocked(&pr);
  OK(connector_stream_free(stream, &err));
  pthread_join(blocked, NULL);
  CHECK(pr.result == CONNECTOR_ERR_CLOSED, "blocked read after free: %s", connector_result_name(pr.result));
  close(held);
  /* A write into a target that never reads: more than the tunnel buffers
   * (stream window, socket buffers), so it cannot complete. Once the target
   * holds some of its bytes, the write is under way: cancel it. */
  OK(connector_server_dial(server, CONNECTOR_SELECT_AGENT, "node-a", silent, 10 * SEC, NULL, &stream, &err));
  held = accept(silent_fd, NULL, NULL);
  CHECK(held >= 0, "accept the silent connection");
  const size_t big = 64u << 20;
  uint8_t *data = calloc(big, 1);
  CHECK(data != NULL, "calloc");
  pending_call pw = {.stream = stream, .cancel = cancel, .data = data, .len = big};
  CHECK(pipe(pw.announce) == 0, "pipe");
  pthread_create(&blocked, NULL, call_pending, &pw);
  struct pollfd arrived = {.fd = held, .events = POLLIN};
  CHECK(poll(&arrived, 1, 120 * 1000) == 1, "the write's first bytes reach the target");
  OK(connector_cancel_fire(cancel, &err));
  pthread_join(blocked, NULL);
  close(pw.announce[0]);
  close(pw.announce[1]);
  CHECK(pw.result == CONNECTOR_ERR_CANCELLED && pw.done > 0 && pw.done < big,
        "write into a full pipe after cancel: %s, %zu bytes", connector_result_name(pw.result), pw.done);
  /* Nor can another: a write with a timeout ends on its timeout. */
  EXPECT(CONNECTOR_ERR_TIMED_OUT, connector_stream_write(stream, data, big, 100000, NULL, &n, &err));
  CHECK(n < big, "partial write on timeout (%zu bytes)", n);
  free(data);
  connector_result ended = CONNECTOR_ERR_PANIC;
  char *reason = NULL;
  OK(connector_stream_status(stream, &ended, &reason, &err)); /* not a descriptor stream */
  CHECK(ended == CONNECTOR_OK && reason == NULL, "status of a blocking stream");
  OK(connector_stream_free(stream, &err));
  close(held);
  /* A descriptor stream whose target resets: the descriptor reads end of
   * stream (or a reset), and the status says the tunnel broke. */
  int rfd = -1;
  OK(connector_server_dial_fd(server, CONNECTOR_SELECT_AGENT, "node-a", silent, 10 * SEC, NULL, &rfd, &stream, &err));
  held = accept(silent_fd, NULL, NULL);
  CHECK(held >= 0, "accept the silent connection");
  OK(connector_stream_status(stream, &ended, &reason, &err));
  CHECK(ended == CONNECTOR_OK && reason == NULL, "status while running");
  struct linger hard = {.l_onoff = 1, .l_linger = 0};
  CHECK(setsockopt(held, SOL_SOCKET, SO_LINGER, &hard, sizeof hard) == 0, "SO_LINGER");
  close(held); /* RST */
  for (ssize_t rr = 1; rr > 0;) rr = read(rfd, buf, sizeof buf);
  OK(connector_stream_status(stream, &ended, &reason, &err));
  CHECK(ended == CONNECTOR_ERR_IO && reason != NULL && strstr(reason, "reset") != NULL, "status after a target reset: %s (%s)",
        connector_result_name(ended), reason ? reason : "no reason");
  connector_string_free(reason);
  close(rfd);
  OK(connector_stream_free(stream, &err));
  close(silent_fd);

  /* Waits that cannot succeed end on their timeout. */
  EXPECT(CONNECTOR_ERR_TIMED_OUT, connector_server_wait_agent(server, "nobody", 100000, NULL, &err));
  int udp = socket(AF_INET, SOCK_DGRAM, 0); /* a "server" that never answers */
  struct sockaddr_in udp_addr = {.sin_family = AF_INET};
  udp_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(udp, (struct sockaddr *)&udp_addr, sizeof udp_addr) == 0, "bind udp");
  socklen_t udp_len = sizeof udp_addr;
  getsockname(udp, (struct sockaddr *)&udp_addr, &udp_len);
  char nowhere[64];
  snprintf(nowhere, sizeof nowhere, "127.0.0.1:%d", ntohs(udp_addr.sin_port));
  {
    connector_agent_config *acfg = NULL;
    OK(connector_agent_config_new(&acfg, &err));
    EXPECT(CONNECTOR_ERR_INVALID_ARGUMENT, connector_agent_config_add_server(acfg, "no-port", &err));
    EXPECT(CONNECTOR_ERR_INVALID_ARGUMENT, connector_agent_config_set_transport(acfg, "smoke signals", &err));
    EXPECT(CONNECTOR_ERR_INVALID_ARGUMENT, connector_agent_config_set_keepalive(acfg, 0, 0, &err));
    OK(connector_agent_config_free(acfg, &err));
  }
  connector_agent *lost = start_agent(nowhere, ca, "node-lost", "token-a");
  EXPECT(CONNECTOR_ERR_TIMED_OUT, connector_agent_wait_connected(lost, 100000, NULL, &err));
  OK(connector_agent_free(lost, &err));
  close(udp);

  /* 3. The socketpair hand-over. */
  int fd = -1;
  OK(connector_server_dial_fd(server, CONNECTOR_SELECT_HOST, "node-cb", target, 10 * SEC, NULL, &fd, &stream, &err));
  EXPECT(CONNECTOR_ERR_INVALID_ARGUMENT, connector_stream_read(stream, (uint8_t *)buf, sizeof buf, 0, NULL, &n, &err));
  CHECK(write(fd, msg, strlen(msg)) == (ssize_t)strlen(msg), "fd write");
  shutdown(fd, SHUT_WR);
  got = 0;
  ssize_t r;
  while ((r = read(fd, buf + got, sizeof buf - got)) > 0) got += (size_t)r;
  CHECK(r == 0 && got == strlen(msg) && memcmp(buf, msg, got) == 0, "fd echo then EOF (got %zu)", got);
  connector_result clean = CONNECTOR_ERR_PANIC;
  char *why = NULL;
  OK(connector_stream_status(stream, &clean, &why, &err));
  CHECK(clean == CONNECTOR_OK && why == NULL, "a clean end: %s", connector_result_name(clean));
  close(fd);
  OK(connector_stream_free(stream, &err));
  pthread_join(echo_thread, NULL);
  close(echo.listen_fd);

  /* 4. Failures: closed port, no agent, bad target, cancelled dial, bad handles. */
  EXPECT(CONNECTOR_ERR_REFUSED, connector_server_dial(server, CONNECTOR_SELECT_AGENT, "node-a", target, 10 * SEC, NULL, &stream, &err));
  EXPECT(CONNECTOR_ERR_NO_AGENT, connector_server_dial(server, CONNECTOR_SELECT_AGENT, "nobody", target, 10 * SEC, NULL, &stream, &err));
  EXPECT(CONNECTOR_ERR_INVALID_TARGET, connector_server_dial(server, CONNECTOR_SELECT_ANY, NULL, "no-port", 10 * SEC, NULL, &stream, &err));
  EXPECT(CONNECTOR_ERR_INVALID_ARGUMENT, connector_server_dial(server, CONNECTOR_SELECT_AGENT, NULL, target, 0, NULL, &stream, &err));
  OK(connector_cancel_fire(cancel, &err));
  EXPECT(CONNECTOR_ERR_CANCELLED, connector_server_dial(server, CONNECTOR_SELECT_ANY, NULL, target, 0, cancel, &stream, &err));
  EXPECT(CONNECTOR_ERR_INVALID_HANDLE, connector_server_dial(NULL, CONNECTOR_SELECT_ANY, NULL, target, 0, NULL, &stream, &err));
  EXPECT(CONNECTOR_ERR_INVALID_HANDLE, connector_server_dial((connector_server *)agent, CONNECTOR_SELECT_ANY, NULL, target, 0, NULL, &stream, &err));
  EXPECT(CONNECTOR_ERR_INVALID_ARGUMENT, connector_server_dial(server, CONNECTOR_SELECT_ANY, NULL, target, 0, NULL, NULL, &err));
  connector_server_dial(server, CONNECTOR_SELECT_ANY, NULL, NULL, 0, NULL, &stream, NULL); /* NULL error slot: no crash */
  OK(connector_cancel_free(cancel, &err));
  EXPECT(CONNECTOR_ERR_INVALID_HANDLE, connector_cancel_fire(cancel, &err));

  /* Frontends: HTTP CONNECT and gRPC on loopback, a forward. */
  char *where = NULL;
  OK(connector_server_start_frontend(server, CONNECTOR_FRONTEND_HTTP_CONNECT, "tcp://127.0.0.1:0", NULL, NULL, NULL, NULL, NULL, &where, &err));
  CHECK(strncmp(where, "tcp://127.0.0.1:", 16) == 0, "frontend address %s", where);
  connector_string_free(where);
  OK(connector_server_start_frontend(server, CONNECTOR_FRONTEND_GRPC, "tcp://127.0.0.1:0", NULL, NULL, NULL, NULL, NULL, &where, &err));
  connector_string_free(where);
  EXPECT(CONNECTOR_ERR_SETUP, connector_server_start_frontend(server, CONNECTOR_FRONTEND_HTTP_CONNECT, "tcp://0.0.0.0:0", NULL, NULL, NULL, NULL, NULL, &where, &err));
  EXPECT(CONNECTOR_ERR_INVALID_ARGUMENT, connector_server_start_frontend(server, CONNECTOR_FRONTEND_HTTP_CONNECT, "ftp://x", NULL, NULL, NULL, NULL, NULL, &where, &err));
  EXPECT(CONNECTOR_ERR_INVALID_ARGUMENT, connector_server_start_frontend(server, CONNECTOR_FRONTEND_HTTP_CONNECT, "tcp://127.0.0.1:0", NULL, NULL, NULL, "kube-apiserver", NULL, &where, &err));
  OK(connector_server_start_forward(server, "127.0.0.1:0", "node-a", target, &where, &err));
  connector_string_free(where);

  /* 5. Drain (a rolling update), with an hour's grace: the hang guard
   * below fails the test long before a drain that waits the grace out. */
  alarm(600);
  port = 0;
  echo = (echo_server){.listen_fd = listen_loopback(&port), .conns = 1};
  pthread_create(&echo_thread, NULL, echo_accept, &echo);
  snprintf(target, sizeof target, "127.0.0.1:%d", port);
  OK(connector_server_dial(server, CONNECTOR_SELECT_AGENT, "node-a", target, 10 * SEC, NULL, &stream, &err));
  CHECK(agent_metric_is(agent, "connector_agent_go_aways_total 0"), "no GoAway before the drain");
  drain_call d = {.server = server, .grace_ms = 3600 * 1000};
  pthread_t drainer;
  pthread_create(&drainer, NULL, call_drain, &d);
  /* Until the drain has begun, a dial through an unknown agent fails with
   * NO_AGENT without leaving the server; from then on it fails with CLOSED.
   * A drain that returns at once (does nothing) ends the wait too. */
  while (connector_server_dial(server, CONNECTOR_SELECT_AGENT, "nobody", target, 10 * SEC, NULL, &stream2, NULL) ==
             CONNECTOR_ERR_NO_AGENT &&
         !atomic_load(&d.finished))
    sched_yield();
  CHECK(!atomic_load(&d.finished), "the drain returned with a connection open: %s (%s)", connector_result_name(d.result),
        d.err ? d.err : "no message");
  /* A new dial is refused: the server is shutting down. */
  char *refused = NULL;
  connector_result dialled = connector_server_dial(server, CONNECTOR_SELECT_AGENT, "node-a", target, 10 * SEC, NULL, &stream2, &refused);
  CHECK(dialled == CONNECTOR_ERR_CLOSED && refused != NULL && strstr(refused, "shutting down") != NULL,
        "a dial during the drain: %s (%s)", connector_result_name(dialled), refused ? refused : "no message");
  connector_string_free(refused);
  /* The connection dialled before still carries bytes both ways. */
  const char during[] = "still open while draining";
  OK(connector_stream_write(stream, (const uint8_t *)during, strlen(during), 10 * SEC, NULL, &n, &err));
  for (got = 0; got < strlen(during); got += n) {
    OK(connector_stream_read(stream, (uint8_t *)buf + got, sizeof buf - got, 10 * SEC, NULL, &n, &err));
    CHECK(n > 0, "no early EOF while draining");
  }
  CHECK(memcmp(buf, during, strlen(during)) == 0, "echo while draining");
  CHECK(!atomic_load(&d.finished), "the drain waits for the open connection");
  /* Once it is closed, the drain ends (well before its grace). */
  OK(connector_stream_close_write(stream, 10 * SEC, NULL, &err));
  OK(connector_stream_read(stream, (uint8_t *)buf, sizeof buf, 10 * SEC, NULL, &n, &err));
  CHECK(n == 0, "EOF after half-close while draining, got %zu bytes", n);
  OK(connector_stream_free(stream, &err));
  pthread_join(drainer, NULL);
  CHECK(d.result == CONNECTOR_OK, "drain: %s (%s)", connector_result_name(d.result), d.err ? d.err : "no message");
  connector_string_free(d.err);
  /* The agent was told to go away (it acknowledged before the drain ended). */
  CHECK(agent_metric_is(agent, "connector_agent_go_aways_total 1"), "the agent saw one GoAway");
  OK(connector_server_drain(server, 3600 * 1000, &err)); /* drained already: returns at once */
  EXPECT(CONNECTOR_ERR_CLOSED, connector_server_dial(server, CONNECTOR_SELECT_AGENT, "node-a", target, 10 * SEC, NULL, &stream2, &err));
  pthread_join(echo_thread, NULL);
  close(echo.listen_fd);
  alarm(0);
  EXPECT(CONNECTOR_ERR_INVALID_HANDLE, connector_server_drain(NULL, 0, &err));

  OK(connector_agent_free(agent, &err));
  OK(connector_agent_free(cb_agent, &err));
  OK(connector_server_free(server, &err));
  EXPECT(CONNECTOR_ERR_INVALID_HANDLE, connector_server_free(server, &err));
  /* A grace too long for the clock is no limit (and nothing to wait for here). */
  OK(connector_server_config_new(&scfg, &err));
  OK(connector_server_config_set_listen(scfg, "127.0.0.1:0", &err));
  OK(connector_server_config_set_identity_pem(scfg, (const uint8_t *)cert, strlen(cert), (const uint8_t *)key, strlen(key), &err));
  OK(connector_server_config_add_token(scfg, (const uint8_t *)"token-a", 7, "node-a", "host=node-a", &err));
  OK(connector_server_config_set_worker_threads(scfg, 1, &err));
  OK(connector_server_start(scfg, &server, &err));
  OK(connector_server_config_free(scfg, &err));
  OK(connector_server_drain(server, UINT64_MAX, &err));
  OK(connector_server_free(server, &err));
  connector_string_free(addr);
  connector_string_free(ca);
  connector_string_free(cert);
  connector_string_free(key);
  printf("c e2e: %d checks passed\n", checks);
  return 0;
}
