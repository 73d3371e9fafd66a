/* cli_b64_encode against the RFC 4648 section 10 vectors, binary data and a size that
 * crosses the encoder's internal batching. */
#include <stdlib.h>

#include "check.h"
#include "cli/base64.h"

static const char *enc(const void *p, size_t len, struct strbuf *sb)
{
	sb_free(sb);
	cli_b64_encode(p, len, sb);
	sb_add(sb, "", 0);
	return sb->buf;
}

int main(void)
{
	static const unsigned char bin[] = { 0x00, 0xff, 0xfe, 0x10, 0x80 };
	struct strbuf sb = STRBUF_INIT;
	char *big;
	size_t i;

	CHECK_STR(enc("", 0, &sb), "");
	CHECK_STR(enc("f", 1, &sb), "Zg==");
	CHECK_STR(enc("fo", 2, &sb), "Zm8=");
	CHECK_STR(enc("foo", 3, &sb), "Zm9v");
	CHECK_STR(enc("foob", 4, &sb), "Zm9vYg==");
	CHECK_STR(enc("fooba", 5, &sb), "Zm9vYmE=");
	CHECK_STR(enc("foobar", 6, &sb), "Zm9vYmFy");
	CHECK_STR(enc(bin, sizeof(bin), &sb), "AP/+EIA=");

	/* 3000 bytes of "abc" encode to 1000 repetitions of "YWJj". */
	big = malloc(3000);
	for (i = 0; i < 3000; i++)
		big[i] = "abc"[i % 3];
	enc(big, 3000, &sb);
	CHECK_INT(sb.len, 4000);
	for (i = 0; i < sb.len; i += 4)
		if (memcmp(sb.buf + i, "YWJj", 4)) {
			CHECK(!"repetition broken");
			break;
		}
	free(big);
	sb_free(&sb);
	return check_done("test_base64");
}
