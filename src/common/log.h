/*
 * The daemon's log: one sink (stderr), levels error/warn/info/debug, text for people
 * or one JSON object per line for machines. Thread-safe. Only boundaries log (the
 * HTTP handlers, the daemon's main loop, the CLI); library code returns -errno.
 */
#ifndef STOKE_LOG_H
#define STOKE_LOG_H

#include <stddef.h>

enum log_level { LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG };

void log_setup(enum log_level max, int json);
int log_enabled(enum log_level level);
/* The current UTC time as 2026-12-04T18:00:00.123Z (len >= 32). */
void log_timestamp(char *buf, size_t len);
/* Messages are one line; in JSON mode they become the "msg" field. */
void log_msg(enum log_level level, const char *file, int line, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

#define log_error(...) log_msg(LOG_ERROR, __FILE__, __LINE__, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __FILE__, __LINE__, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __FILE__, __LINE__, __VA_ARGS__)
#define log_debug(...) \
	do { if (log_enabled(LOG_DEBUG)) log_msg(LOG_DEBUG, __FILE__, __LINE__, __VA_ARGS__); } \
	while (0)

#endif
