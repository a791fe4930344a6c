/* control_driver.c - runs control_handle() over JSON lines for the botocore
 * compatibility check (tests/compat/botocore_compat.py).
 * stdin:  {"method","path","query","body"} per line (path decoded, query raw)
 * stdout: {"status","error_type","body"} per line.
 * argv[1] is the data dir. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frontend/control.h"

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    err_t e = {0};
    store_t *s = store_open(argv[1], "us-east-1", "123456789012", &e);
    if (!s) {
        fprintf(stderr, "%s\n", e.msg);
        return 1;
    }
    control_config_t cfg = {"us-east-1", "123456789012", 1000, NULL, NULL};
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, stdin) > 0) {
        json_t *in = json_loads(line, 0, NULL);
        if (!in)
            continue;
        const char *body = json_string_value(json_object_get(in, "body"));
        api_request_t rq = {json_string_value(json_object_get(in, "method")),
                            json_string_value(json_object_get(in, "path")),
                            json_string_value(json_object_get(in, "query")), body,
                            body ? strlen(body) : 0};
        api_response_t r;
        control_handle(s, &cfg, &rq, &r);
        json_t *out = json_pack("{s:i, s:s, s:O?}", "status", r.status, "error_type",
                                r.error_type, "body", r.body);
        char *txt = json_dumps(out, JSON_COMPACT);
        printf("%s\n", txt);
        fflush(stdout);
        free(txt);
        json_decref(out);
        json_decref(r.body);
        json_decref(in);
    }
    free(line);
    store_close(s);
    return 0;
}
