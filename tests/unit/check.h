/* check.h - a minimal unit-test harness: each test binary runs its TEST()s
 * and prints one "PASS name" / "FAIL name: why" line per test, then exits
 * non-zero if any failed.  scripts/unit.sh counts the lines. */
#ifndef FLICKER_CHECK_H
#define FLICKER_CHECK_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_failed_, check_any_failed_;
#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            printf("  check failed at %s:%d: %s\n", __FILE__, __LINE__, #cond);       \
            check_failed_ = 1;                                                         \
            return;                                                                    \
        }                                                                              \
    } while (0)
#define CHECK_STR(a, b) CHECK(strcmp((a), (b)) == 0)
/* CHECK_ONLY=name1,name2 runs only the tests whose names it contains. */
#define RUN(test)                                                                      \
    do {                                                                               \
        if (getenv("CHECK_ONLY") && !strstr(getenv("CHECK_ONLY"), #test)) break;        \
        check_failed_ = 0;                                                             \
        test();                                                                        \
        printf("%s %s\n", check_failed_ ? "FAIL" : "PASS", #test);                     \
        check_any_failed_ |= check_failed_;                                            \
    } while (0)
#define SKIP(test, why) printf("SKIP %s: %s\n", #test, why)
#define CHECK_EXIT() return check_any_failed_ ? 1 : 0
#endif
