#include "base64.h"

#include <stdint.h>

static const char cli_b64_alphabet[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Encodes the n (1..3) bytes at p into four characters, padding what is missing. */
static void cli_b64_quantum(const uint8_t *p, size_t n, char out[4])
{
	uint32_t v = (uint32_t)p[0] << 16;

	if (n > 1)
		v |= (uint32_t)p[1] << 8;
	if (n > 2)
		v |= p[2];
	out[0] = cli_b64_alphabet[(v >> 18) & 63];
	out[1] = cli_b64_alphabet[(v >> 12) & 63];
	out[2] = n > 1 ? cli_b64_alphabet[(v >> 6) & 63] : '=';
	out[3] = n > 2 ? cli_b64_alphabet[v & 63] : '=';
}

void cli_b64_encode(const void *in, size_t len, struct strbuf *out)
{
	const uint8_t *p = in;
	char chunk[4 * 256];
	size_t used = 0;

	while (len) {
		size_t n = len < 3 ? len : 3;

		cli_b64_quantum(p, n, chunk + used);
		used += 4;
		p += n;
		len -= n;
		/* Batch the appends: one sb_add per 4 output bytes would dominate large files. */
		if (used == sizeof(chunk)) {
			sb_add(out, chunk, used);
			used = 0;
		}
	}
	if (used)
		sb_add(out, chunk, used);
}
