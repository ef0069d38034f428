/* What the C test programs share: CHECK counts and asserts, EXPECT calls a
 * function ending in `&err` and requires a result code. */
#ifndef CONNECTOR_TEST_CHECK_H
#define CONNECTOR_TEST_CHECK_H

#include "connector.h"

#include <stdio.h>
#include <stdlib.h>

static int checks = 0;

#define CHECK(cond, ...)                                                        \
  do {                                                                          \
    checks++;                                                                   \
    if (!(cond)) {                                                              \
      fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);           \
      fprintf(stderr, __VA_ARGS__);                                             \
      fprintf(stderr, "\n");                                                    \
      exit(1);                                                                  \
    }                                                                           \
  } while (0)

/* Calls `call` (which ends in `&err`) and requires `expected`. */
#define EXPECT(expected, call)                                                  \
  do {                                                                          \
    char *err = NULL;                                                           \
    connector_result got = (call);                                              \
    CHECK(got == (expected), "%s returned %s (%s), expected %s", #call,         \
          connector_result_name(got), err ? err : "no message",                 \
          connector_result_name(expected));                                     \
    CHECK((got == CONNECTOR_OK) == (err == NULL), "message iff error");         \
    connector_string_free(err);                                                 \
  } while (0)

#define OK(call) EXPECT(CONNECTOR_OK, call)

#endif
