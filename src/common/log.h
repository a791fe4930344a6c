/* log.h - the daemon's own log (not function logs: see worker/fnlog.h).
 *
 * Lines go to stderr as "2026-12-07T00:00:00.123Z LEVEL [role] message".
 * Thread-safe (one write(2) per line).  log_set_level() filters. */
#ifndef FLICKER_LOG_H
#define FLICKER_LOG_H

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

void log_set_level(enum log_level level);
void log_msg(enum log_level level, const char *role, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_debug(role, ...) log_msg(LOG_DEBUG, role, __VA_ARGS__)
#define log_info(role, ...)  log_msg(LOG_INFO, role, __VA_ARGS__)
#define log_warn(role, ...)  log_msg(LOG_WARN, role, __VA_ARGS__)
#define log_error(role, ...) log_msg(LOG_ERROR, role, __VA_ARGS__)
#endif
