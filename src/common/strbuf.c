#include "strbuf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int sb_grow(struct strbuf *sb, size_t more)
{
	size_t need, cap;
	char *p;

	if (sb->failed)
		return -1;
	need = sb->len + more + 1;
	if (need <= sb->cap)
		return 0;
	cap = sb->cap ? sb->cap : 64;
	while (cap < need)
		cap *= 2;
	p = realloc(sb->buf, cap);
	if (!p) {
		sb->failed = 1;
		return -1;
	}
	sb->buf = p;
	sb->cap = cap;
	return 0;
}

void sb_add(struct strbuf *sb, const void *data, size_t len)
{
	if (sb_grow(sb, len))
		return;
	memcpy(sb->buf + sb->len, data, len);
	sb->len += len;
	sb->buf[sb->len] = '\0';
}

void sb_adds(struct strbuf *sb, const char *s)
{
	sb_add(sb, s, strlen(s));
}

void sb_vprintf(struct strbuf *sb, const char *fmt, va_list ap)
{
	va_list cp;
	int n;

	va_copy(cp, ap);
	n = vsnprintf(NULL, 0, fmt, cp);
	va_end(cp);
	if (n < 0 || sb_grow(sb, (size_t)n))
		return;
	vsnprintf(sb->buf + sb->len, (size_t)n + 1, fmt, ap);
	sb->len += (size_t)n;
}

void sb_printf(struct strbuf *sb, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	sb_vprintf(sb, fmt, ap);
	va_end(ap);
}

void sb_metric_head(struct strbuf *sb, const char *name, const char *type, const char *help)
{
	sb_printf(sb, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void sb_metric(struct strbuf *sb, const char *name, const char *type, long long v,
	       const char *help)
{
	sb_metric_head(sb, name, type, help);
	sb_printf(sb, "%s %lld\n", name, v);
}

void sb_json_str(struct strbuf *sb, const char *s, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	size_t i;

	sb_add(sb, "\"", 1);
	for (i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		char esc[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };

		if (c == '"' || c == '\\') {
			char two[2] = { '\\', (char)c };
			sb_add(sb, two, 2);
		} else if (c == '\n') {
			sb_add(sb, "\\n", 2);
		} else if (c < 0x20) {
			sb_add(sb, esc, 6);
		} else {
			sb_add(sb, &s[i], 1);
		}
	}
	sb_add(sb, "\"", 1);
}

char *sb_detach(struct strbuf *sb, size_t *len)
{
	char *p = sb->failed ? NULL : sb->buf;

	if (sb->failed)
		free(sb->buf);
	else if (!p)
		p = calloc(1, 1);
	if (len)
		*len = p ? sb->len : 0;
	memset(sb, 0, sizeof(*sb));
	return p;
}

void sb_free(struct strbuf *sb)
{
	free(sb->buf);
	memset(sb, 0, sizeof(*sb));
}
