#include "chunked.h"

#include <errno.h>
#include <stdint.h>

enum {
	CK_SIZE,		/* hex chunk size */
	CK_EXT,			/* chunk extension, up to the end of the size line */
	CK_DATA,		/* payload */
	CK_DATA_END,		/* CRLF after the payload */
	CK_TRAILER,		/* start of a trailer line; an empty one ends the body */
	CK_TRAILER_LINE,	/* inside a trailer field, skipped */
	CK_DONE,
};

static int cli_chunked_hex(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* The size line ended: a zero size starts the trailer section. */
static int cli_chunked_size_done(struct cli_chunked *ck)
{
	if (!ck->digits)
		return -EPROTO;
	ck->state = ck->left ? CK_DATA : CK_TRAILER;
	return 0;
}

static int cli_chunked_size(struct cli_chunked *ck, char c)
{
	int v = cli_chunked_hex(c);

	if (v >= 0) {
		if (ck->left > (SIZE_MAX >> 4))
			return -EPROTO;
		ck->left = ck->left * 16 + v;
		ck->digits++;
		return 0;
	}
	if (c == ';' || c == ' ' || c == '\t') {
		ck->state = CK_EXT;
		return ck->digits ? 0 : -EPROTO;
	}
	if (c == '\r')
		return 0;
	if (c == '\n')
		return cli_chunked_size_done(ck);
	return -EPROTO;
}

/* Handles one framing byte (anything but payload) in the current state. */
static int cli_chunked_byte(struct cli_chunked *ck, char c)
{
	switch (ck->state) {
	case CK_SIZE:
		return cli_chunked_size(ck, c);
	case CK_EXT:
		return c == '\n' ? cli_chunked_size_done(ck) : 0;
	case CK_DATA_END:
		if (c == '\r')
			return 0;
		if (c != '\n')
			return -EPROTO;
		ck->state = CK_SIZE;
		ck->digits = 0;
		ck->left = 0;
		return 0;
	case CK_TRAILER:
		if (c == '\n')
			ck->state = CK_DONE;
		else if (c != '\r')
			ck->state = CK_TRAILER_LINE;
		return 0;
	case CK_TRAILER_LINE:
		if (c == '\n')
			ck->state = CK_TRAILER;
		return 0;
	}
	return -EPROTO;
}

int cli_chunked_feed(struct cli_chunked *ck, const char *in, size_t len,
		     struct strbuf *out, size_t *used)
{
	size_t i = 0;
	int ret;

	while (i < len && ck->state != CK_DONE) {
		if (ck->state == CK_DATA) {
			size_t n = len - i < ck->left ? len - i : ck->left;

			sb_add(out, in + i, n);
			if (sb_failed(out))
				return -ENOMEM;
			i += n;
			ck->left -= n;
			if (!ck->left)
				ck->state = CK_DATA_END;
			continue;
		}
		ret = cli_chunked_byte(ck, in[i++]);
		if (ret)
			return ret;
	}
	if (used)
		*used = i;
	return ck->state == CK_DONE;
}
