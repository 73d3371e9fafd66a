/* A growable byte buffer, always NUL-terminated. Allocation failure is sticky: the
 * buffer stops growing and sb_failed() reports it, so callers check once at the end. */
#ifndef STOKE_STRBUF_H
#define STOKE_STRBUF_H

#include <stdarg.h>
#include <stddef.h>

struct strbuf {
	char *buf;
	size_t len;
	size_t cap;
	int failed;
};

#define STRBUF_INIT { 0 }

void sb_add(struct strbuf *sb, const void *data, size_t len);
void sb_adds(struct strbuf *sb, const char *s);
void sb_printf(struct strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sb_vprintf(struct strbuf *sb, const char *fmt, va_list ap);
/* Appends s as a JSON string literal, quotes included. */
void sb_json_str(struct strbuf *sb, const char *s, size_t len);
/* A Prometheus metric family's HELP and TYPE lines (text format 0.0.4). */
void sb_metric_head(struct strbuf *sb, const char *name, const char *type, const char *help);
/* A metric family of one unlabelled sample: its HELP and TYPE lines and the value. */
void sb_metric(struct strbuf *sb, const char *name, const char *type, long long v,
	       const char *help);
static inline int sb_failed(const struct strbuf *sb) { return sb->failed; }
/* Hands the buffer to the caller (NULL if it failed) and resets sb. */
char *sb_detach(struct strbuf *sb, size_t *len);
void sb_free(struct strbuf *sb);

#endif
