#include "log.h"
#include "strbuf.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum log_level log_max = LOG_INFO;
static int log_json;
static const char *const log_names[] = { "error", "warn", "info", "debug" };

void log_setup(enum log_level max, int json)
{
	log_max = max;
	log_json = json;
}

int log_enabled(enum log_level level)
{
	return level <= log_max;
}

void log_timestamp(char *buf, size_t len)
{
	struct timespec ts;
	struct tm tm;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		 ts.tv_nsec / 1000000);
}

void log_msg(enum log_level level, const char *file, int line, const char *fmt, ...)
{
	struct strbuf msg = STRBUF_INIT, out = STRBUF_INIT;
	char stamp[64];
	va_list ap;

	if (!log_enabled(level))
		return;
	va_start(ap, fmt);
	sb_vprintf(&msg, fmt, ap);
	va_end(ap);
	log_timestamp(stamp, sizeof(stamp));
	if (log_json) {
		sb_printf(&out, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":", stamp,
			  log_names[level]);
		sb_json_str(&out, msg.buf ? msg.buf : "", msg.len);
		if (level == LOG_DEBUG)
			sb_printf(&out, ",\"src\":\"%s:%d\"", file, line);
		sb_adds(&out, "}\n");
	} else {
		sb_printf(&out, "%s %-5s %s", stamp, log_names[level], msg.buf ? msg.buf : "");
		if (level == LOG_DEBUG)
			sb_printf(&out, " (%s:%d)", file, line);
		sb_adds(&out, "\n");
	}
	/* One write per line keeps lines from different threads whole. */
	if (!sb_failed(&out) && write(STDERR_FILENO, out.buf, out.len) < 0)
		(void)0;
	sb_free(&msg);
	sb_free(&out);
}
