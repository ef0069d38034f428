/* Soundness of the C ABI (issue 16, items 5 and 6):
 *
 *  1. Enum arguments out of range. C lets a caller pass any integer where an
 *     enum is declared; the library takes enums as uint32_t and answers
 *     CONNECTOR_ERR_INVALID_ARGUMENT (connector_result_name: a static
 *     "unknown" string). Before, the values reached Rust enums: undefined
 *     behaviour, a crash or a pointer into code.
 *  2. The auth callback and connector_server_free. Called inside the
 *     callback, free returns CONNECTOR_ERR_WRONG_THREAD and frees nothing.
 *     Called from another thread while the callback runs, it returns only
 *     after the callback has returned, however long that takes, so the
 *     callback's user_data can be freed as soon as it returns. Before, free
 *     inside the callback freed the server, and free from another thread
 *     returned success after about 40 s with the callback still running.
 *
 * Run by run-tests.sh under Valgrind and, built with ASan and UBSan, by the
 * sanitizer step. CONNECTOR_ABI_HOLD_MS (default 1000) is how long the test
 * holds the callback while free waits. Against the old library, 41000 shows
 * free returning CONNECTOR_OK with the callback still running: it waited 30 s
 * for callbacks, then 10 s for the runtime's threads. */

#include "check.h"
#include "connector.h"

#include <pthread.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const uint64_t SEC = 1000000; /* microseconds */

/* ---- 1. enums ---- */

static void enums_out_of_range(connector_server *server) {
  /* Just past the last constant, far out, and -1 as C converts it. */
  const uint32_t bad_result[] = {19, 100, 1000, (uint32_t)-1};
  const uint32_t bad_kind[] = {4, 100, 1000, (uint32_t)-1};
  const uint32_t bad_protocol[] = {2, 100, 1000, (uint32_t)-1};
  for (int i = 0; i < 4; i++) {
    const char *name = connector_result_name(bad_result[i]);
    CHECK(name != NULL && strcmp(name, "(unknown connector_result)") == 0, "connector_result_name(%u)", bad_result[i]);
  }
  CHECK(strcmp(connector_result_name(CONNECTOR_ERR_WRONG_THREAD), "CONNECTOR_ERR_WRONG_THREAD") == 0, "a real name");

  for (int i = 0; i < 4; i++) {
    connector_stream *stream = NULL;
    int fd = -1;
    char *where = NULL;
    EXPECT(CONNECTOR_ERR_INVALID_ARGUMENT,
           connector_server_dial(server, bad_kind[i], "node", "127.0.0.1:1", SEC, NULL, &stream, &err));
    EXPECT(CONNECTOR_ERR_INVALID_ARGUMENT,
           connector_server_dial_fd(server, bad_kind[i], "node", "127.0.0.1:1", SEC, NULL, &fd, &stream, &err));
    CHECK(stream == NULL && fd == -1, "nothing handed out for kind %u", bad_kind[i]);
    EXPECT(CONNECTOR_ERR_INVALID_ARGUMENT,
           connector_server_start_frontend(server, bad_protocol[i], "tcp://127.0.0.1:0", NULL, NULL, NULL, NULL, NULL, &where, &err));
    CHECK(where == NULL, "no frontend for protocol %u", bad_protocol[i]);
  }
  /* The message names the argument and the value. */
  connector_stream *stream = NULL;
  char *err = NULL;
  connector_server_dial(server, 1000, NULL, "127.0.0.1:1", SEC, NULL, &stream, &err);
  CHECK(err != NULL && strstr(err, "kind 1000") != NULL, "message: %s", err ? err : "none");
  connector_string_free(err);
}

/* ---- 2. the callback and connector_server_free ---- */

enum mode { FREE_INSIDE, HOLD };

/* The callback's user_data, allocated here and freed once
 * connector_server_free has returned. */
typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  enum mode mode;
  connector_server *server;
  /* FREE_INSIDE: what the calls made inside the callback returned. */
  connector_result free_inside, wait_inside;
  char *free_inside_message;
  /* The callback has started (FREE_INSIDE: made its calls); HOLD: the test
   * lets it go on; it has ended. */
  int entered, release, finished;
} auth_state;

static void authenticate(void *user_data, const connector_auth_request *req, connector_auth_decision *decision) {
  (void)req;
  auth_state *s = user_data;
  pthread_mutex_lock(&s->mu);
  enum mode mode = s->mode;
  connector_server *server = s->server;
  pthread_mutex_unlock(&s->mu);
  if (mode == FREE_INSIDE) {
    char *free_err = NULL, *wait_err = NULL;
    connector_result freed = connector_server_free(server, &free_err);
    connector_result waited = connector_server_wait_agent(server, NULL, SEC, NULL, &wait_err);
    connector_string_free(wait_err);
    pthread_mutex_lock(&s->mu);
    s->free_inside = freed;
    s->free_inside_message = free_err;
    s->wait_inside = waited;
    s->entered = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    connector_auth_accept(decision, "node-inside", "*", NULL);
    return;
  }
  pthread_mutex_lock(&s->mu);
  s->entered = 1;
  pthread_cond_broadcast(&s->cv);
  while (!s->release) pthread_cond_wait(&s->cv, &s->mu);
  pthread_mutex_unlock(&s->mu);
  usleep(100 * 1000); /* still running a while after being let go */
  connector_auth_reject(decision, "held", NULL);
  pthread_mutex_lock(&s->mu);
  s->finished = 1; /* touches user_data: after free returned, a use after free */
  pthread_mutex_unlock(&s->mu);
}

/* connector_server_free on its own thread; records whether the callback had
 * finished when free returned (read before the test frees user_data). */
typedef struct {
  connector_server *server;
  auth_state *state;
  pthread_mutex_t mu;
  int returned;
  connector_result result;
  int callback_finished;
} freer;

static void *free_server(void *arg) {
  freer *f = arg;
  connector_result result = connector_server_free(f->server, NULL);
  pthread_mutex_lock(&f->state->mu);
  int finished = f->state->finished;
  pthread_mutex_unlock(&f->state->mu);
  pthread_mutex_lock(&f->mu);
  f->returned = 1;
  f->result = result;
  f->callback_finished = finished;
  pthread_mutex_unlock(&f->mu);
  return NULL;
}

static connector_agent *start_agent(const char *server_addr, const char *ca, const char *id) {
  connector_agent_config *cfg = NULL;
  connector_agent *agent = NULL;
  OK(connector_agent_config_new(&cfg, &err));
  OK(connector_agent_config_set_server(cfg, server_addr, &err));
  OK(connector_agent_config_set_server_name(cfg, "localhost", &err));
  OK(connector_agent_config_add_server_ca_pem(cfg, (const uint8_t *)ca, strlen(ca), &err));
  OK(connector_agent_config_set_agent_id(cfg, id, &err));
  OK(connector_agent_config_set_token(cfg, (const uint8_t *)"ask-the-callback", 16, &err));
  OK(connector_agent_config_set_worker_threads(cfg, 1, &err));
  OK(connector_agent_start(cfg, &agent, &err));
  OK(connector_agent_config_free(cfg, &err));
  return agent;
}

static long hold_ms(void) {
  const char *text = getenv("CONNECTOR_ABI_HOLD_MS");
  long ms = text != NULL ? atol(text) : 0;
  return ms > 0 ? ms : 1000;
}

static char *ca, *cert, *key;

/* Waits (at most a minute) until the callback has run its first steps. */
static void wait_entered(auth_state *state) {
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 60;
  pthread_mutex_lock(&state->mu);
  while (!state->entered) CHECK(pthread_cond_timedwait(&state->cv, &state->mu, &deadline) == 0, "the callback is called");
  pthread_mutex_unlock(&state->mu);
}

/* A server whose only authentication is the callback, with `state` as its user_data. */
static connector_server *start_server(auth_state *state, char **addr) {
  connector_server_config *scfg = NULL;
  connector_server *server = NULL;
  OK(connector_server_config_new(&scfg, &err));
  OK(connector_server_config_set_listen(scfg, "127.0.0.1:0", &err));
  OK(connector_server_config_set_identity_pem(scfg, (const uint8_t *)cert, strlen(cert), (const uint8_t *)key, strlen(key), &err));
  OK(connector_server_config_set_authenticator(scfg, authenticate, state, &err));
  OK(connector_server_config_set_tcp_listen(scfg, "off", &err));
  OK(connector_server_config_set_worker_threads(scfg, 2, &err));
  OK(connector_server_start(scfg, &server, &err));
  OK(connector_server_config_free(scfg, &err));
  OK(connector_server_local_addr(server, addr, &err));
  pthread_mutex_lock(&state->mu);
  state->server = server;
  pthread_mutex_unlock(&state->mu);
  return server;
}

static auth_state *new_state(enum mode mode) {
  auth_state *state = calloc(1, sizeof *state);
  CHECK(state != NULL, "calloc");
  pthread_mutex_init(&state->mu, NULL);
  pthread_cond_init(&state->cv, NULL);
  state->mode = mode;
  return state;
}

static void free_state(auth_state *state) {
  pthread_mutex_destroy(&state->mu);
  pthread_cond_destroy(&state->cv);
  free(state);
}

/* Free and a blocking call inside the callback are refused; the server
 * lives on and admits the agent. */
static void free_inside_the_callback(void) {
  auth_state *state = new_state(FREE_INSIDE);
  char *addr = NULL;
  connector_server *server = start_server(state, &addr);
  connector_agent *agent = start_agent(addr, ca, "node-inside");
  wait_entered(state);
  pthread_mutex_lock(&state->mu);
  CHECK(state->free_inside == CONNECTOR_ERR_WRONG_THREAD, "connector_server_free inside the callback: %s",
        connector_result_name(state->free_inside));
  CHECK(state->free_inside_message != NULL && strstr(state->free_inside_message, "inside an auth callback") != NULL,
        "its message: %s", state->free_inside_message ? state->free_inside_message : "none");
  CHECK(state->wait_inside == CONNECTOR_ERR_WRONG_THREAD, "a blocking call inside the callback: %s",
        connector_result_name(state->wait_inside));
  connector_string_free(state->free_inside_message);
  pthread_mutex_unlock(&state->mu);
  OK(connector_agent_wait_connected(agent, 30 * SEC, NULL, &err));
  size_t count = 0;
  OK(connector_server_agent_count(server, &count, &err)); /* the handle is still valid */
  CHECK(count == 1, "the agent admitted by the callback is connected (%zu)", count);
  OK(connector_agent_free(agent, &err));
  OK(connector_server_free(server, &err));
  free_state(state);
  connector_string_free(addr);
}

/* A callback held by the test while another thread frees the server: free
 * returns only after the callback has returned. */
static void free_waits_for_a_running_callback(void) {
  auth_state *state = new_state(HOLD);
  char *addr = NULL;
  connector_server *server = start_server(state, &addr);
  connector_agent *agent = start_agent(addr, ca, "node-held");
  wait_entered(state);
  freer f = {.server = server, .state = state};
  pthread_mutex_init(&f.mu, NULL);
  pthread_t freeing;
  pthread_create(&freeing, NULL, free_server, &f);
  long held = hold_ms();
  usleep((useconds_t)held * 1000);
  pthread_mutex_lock(&f.mu);
  int returned = f.returned;
  connector_result early = f.result;
  pthread_mutex_unlock(&f.mu);
  CHECK(!returned, "connector_server_free returned (%s) while the callback was still running, after %ld ms",
        connector_result_name(early), held);
  pthread_mutex_lock(&state->mu);
  state->release = 1;
  pthread_cond_broadcast(&state->cv);
  pthread_mutex_unlock(&state->mu);
  pthread_join(freeing, NULL);
  CHECK(f.result == CONNECTOR_OK, "connector_server_free: %s", connector_result_name(f.result));
  CHECK(f.callback_finished, "connector_server_free returned before the callback did");
  pthread_mutex_destroy(&f.mu);
  free_state(state); /* what docs/ffi.md promises: user_data may go now */
  EXPECT(CONNECTOR_ERR_INVALID_HANDLE, connector_server_free(server, &err));
  OK(connector_agent_free(agent, &err));
  connector_string_free(addr);
}

/* Runs every part, or those named: enums, inside, hold. */
int main(int argc, char **argv) {
  OK(connector_test_certificates("localhost,127.0.0.1", &ca, &cert, &key, &err));
  for (int i = 1; i < argc || (argc == 1 && i == 1); i++) {
    const char *part = argc == 1 ? "all" : argv[i];
    int all = strcmp(part, "all") == 0;
    if (all || strcmp(part, "enums") == 0) {
      auth_state *state = new_state(FREE_INSIDE);
      char *addr = NULL;
      connector_server *server = start_server(state, &addr);
      enums_out_of_range(server);
      OK(connector_server_free(server, &err));
      free_state(state);
      connector_string_free(addr);
    }
    if (all || strcmp(part, "inside") == 0) free_inside_the_callback();
    if (all || strcmp(part, "hold") == 0) free_waits_for_a_running_callback();
  }
  connector_string_free(ca);
  connector_string_free(cert);
  connector_string_free(key);
  printf("c abi: %d checks passed\n", checks);
  return 0;
}
