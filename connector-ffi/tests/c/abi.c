/* Soundness of the C ABI (issue 16, item 5): enum arguments out of range.
 * C lets a caller pass any integer where an enum is declared; the library
 * takes enums as uint32_t and answers CONNECTOR_ERR_INVALID_ARGUMENT
 * (connector_result_name: a static "unknown" string). Before, the values
 * reached Rust enums: undefined behaviour, a crash or a pointer into code.
 *
 * Run by run-tests.sh under Valgrind. */

#include "check.h"
#include "connector.h"

#include <string.h>

static const uint64_t SEC = 1000000; /* microseconds */

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
           connector_server_start_frontend(server, bad_protocol[i], "tcp://127.0.0.1:0", NULL, NULL, NULL, NULL, &where, &err));
    CHECK(where == NULL, "no frontend for protocol %u", bad_protocol[i]);
  }
  /* The message names the argument and the value. */
  connector_stream *stream = NULL;
  char *err = NULL;
  connector_server_dial(server, 1000, NULL, "127.0.0.1:1", SEC, NULL, &stream, &err);
  CHECK(err != NULL && strstr(err, "kind 1000") != NULL, "message: %s", err ? err : "none");
  connector_string_free(err);
}

int main(void) {
  char *ca = NULL, *cert = NULL, *key = NULL;
  OK(connector_test_certificates("localhost,127.0.0.1", &ca, &cert, &key, &err));
  connector_server_config *scfg = NULL;
  connector_server *server = NULL;
  OK(connector_server_config_new(&scfg, &err));
  OK(connector_server_config_set_listen(scfg, "127.0.0.1:0", &err));
  OK(connector_server_config_set_identity_pem(scfg, (const uint8_t *)cert, strlen(cert), (const uint8_t *)key, strlen(key), &err));
  OK(connector_server_config_add_token(scfg, (const uint8_t *)"token", 5, "node", "*", &err));
  OK(connector_server_config_set_tcp_listen(scfg, "off", &err));
  OK(connector_server_config_set_worker_threads(scfg, 2, &err));
  OK(connector_server_start(scfg, &server, &err));
  OK(connector_server_config_free(scfg, &err));
  enums_out_of_range(server);
  OK(connector_server_free(server, &err));
  connector_string_free(ca);
  connector_string_free(cert);
  connector_string_free(key);
  printf("c abi: %d checks passed\n", checks);
  return 0;
}
