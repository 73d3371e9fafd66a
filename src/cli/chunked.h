/*
 * An incremental decoder for HTTP/1.1 chunked transfer coding (RFC 9112 section 7.1):
 * feed it the bytes as they arrive, it appends the payload and says when the last chunk
 * and trailer section are complete. Chunk extensions and trailers are skipped.
 */
#ifndef STOKE_CLI_CHUNKED_H
#define STOKE_CLI_CHUNKED_H

#include <stddef.h>

#include "common/strbuf.h"

struct cli_chunked {
	int state;
	int digits;		/* hex digits seen in the current size line */
	size_t left;		/* size being parsed, then payload bytes still due */
};

#define CLI_CHUNKED_INIT { 0 }

/*
 * Decodes in[0..len) into out. Returns 1 when the message body is complete (*used then
 * tells how many input bytes belonged to it), 0 when more input is needed (all of it
 * was used), -EPROTO on malformed framing and -ENOMEM if out failed to grow.
 */
int cli_chunked_feed(struct cli_chunked *ck, const char *in, size_t len,
		     struct strbuf *out, size_t *used);

#endif
