/* fn_config_json.c - fn_config_t <-> JSON, the form in which a runnable
 * configuration crosses process boundaries (frontend -> assignment ->
 * worker RPCs, see docs/protocol.md).  Every field round-trips. */
#include <errno.h>
#include <string.h>
#include "common/util.h"
#include "store/store.h"

json_t *fn_config_to_json(const fn_config_t *c)
{
    json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:s,s:i,s:i,s:i,s:O,s:s,s:s,s:s,s:i,s:s,s:s,s:i,s:i}",
                          "name", c->name, "version", c->version, "arn", c->arn, "runtime",
                          c->runtime, "handler", c->handler ? c->handler : "", "memory_mb",
                          c->memory_mb, "timeout_s", c->timeout_s, "ephemeral_mb", c->ephemeral_mb,
                          "env_vars", c->env_vars ? c->env_vars : json_object(), "code_sha256",
                          c->code_sha256 ? c->code_sha256 : "", "code_dir",
                          c->code_dir ? c->code_dir : "", "revision_id",
                          c->revision_id ? c->revision_id : "", "reserved_concurrency",
                          c->reserved_concurrency, "config_key", c->config_key ? c->config_key : "",
                          "qualified_arn", c->qualified_arn ? c->qualified_arn : "",
                          "max_retry_attempts", c->max_retry_attempts, "max_event_age_s",
                          c->max_event_age_s);
    if (!c->env_vars) /* json_pack's O took a reference to a fresh object */
        json_decref(json_object_get(o, "env_vars"));
    if (c->code_hex && *c->code_hex)
        json_object_set_new(o, "code_hex", json_string(c->code_hex));
    if (c->alias)
        json_object_set_new(o, "alias", json_string(c->alias));
    if (c->on_success)
        json_object_set_new(o, "on_success", json_string(c->on_success));
    if (c->on_failure)
        json_object_set_new(o, "on_failure", json_string(c->on_failure));
    if (c->isolation)
        json_object_set_new(o, "isolation", json_string(c->isolation));
    if (c->snap_start)
        json_object_set_new(o, "snap_start", json_true());
    if (c->snapshot_path)
        json_object_set_new(o, "snapshot_path", json_string(c->snapshot_path));
    return o;
}

static char *take(json_t *o, const char *k, int *missing)
{
    const char *v = json_string_value(json_object_get(o, k));
    if (!v) {
        (*missing)++;
        return xstrdup("");
    }
    return xstrdup(v);
}

static char *take_opt(json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return v ? xstrdup(v) : NULL;
}

fn_config_t *fn_config_from_json(json_t *o, err_t *err)
{
    if (!json_is_object(o)) {
        err_set(err, EINVAL, "function configuration is not an object");
        return NULL;
    }
    int missing = 0;
    fn_config_t *c = xcalloc(1, sizeof *c);
    c->name = take(o, "name", &missing);
    c->version = take(o, "version", &missing);
    c->arn = take(o, "arn", &missing);
    c->runtime = take(o, "runtime", &missing);
    c->handler = take(o, "handler", &missing);
    c->code_sha256 = take(o, "code_sha256", &missing);
    c->code_dir = take(o, "code_dir", &missing);
    c->revision_id = take(o, "revision_id", &missing);
    c->config_key = take(o, "config_key", &missing);
    c->qualified_arn = take(o, "qualified_arn", &missing);
    c->code_hex = take_opt(o, "code_hex");
    c->alias = take_opt(o, "alias");
    c->on_success = take_opt(o, "on_success");
    c->on_failure = take_opt(o, "on_failure");
    c->isolation = take_opt(o, "isolation");
    c->snap_start = json_is_true(json_object_get(o, "snap_start"));
    c->snapshot_path = take_opt(o, "snapshot_path");
    c->memory_mb = (int)json_integer_value(json_object_get(o, "memory_mb"));
    c->timeout_s = (int)json_integer_value(json_object_get(o, "timeout_s"));
    c->ephemeral_mb = (int)json_integer_value(json_object_get(o, "ephemeral_mb"));
    c->reserved_concurrency = json_is_integer(json_object_get(o, "reserved_concurrency"))
                                  ? (int)json_integer_value(json_object_get(o, "reserved_concurrency"))
                                  : -1;
    c->max_retry_attempts = (int)json_integer_value(json_object_get(o, "max_retry_attempts"));
    c->max_event_age_s = (int)json_integer_value(json_object_get(o, "max_event_age_s"));
    json_t *ev = json_object_get(o, "env_vars");
    c->env_vars = json_is_object(ev) ? json_deep_copy(ev) : json_object();
    if (missing || c->memory_mb <= 0 || c->timeout_s <= 0) {
        err_set(err, EINVAL, "function configuration is incomplete");
        fn_config_free(c);
        return NULL;
    }
    return c;
}
