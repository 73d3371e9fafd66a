/* cli_chunked_feed: whole messages, byte-at-a-time feeding, extensions, trailers, the
 * bytes after the body, and malformed framing. */
#include <errno.h>

#include "check.h"
#include "cli/chunked.h"

/* Feeds msg in pieces of step bytes; returns the feed result and the decoded body. */
static int decode(const char *msg, size_t step, struct strbuf *out, size_t *consumed)
{
	struct cli_chunked ck = CLI_CHUNKED_INIT;
	size_t len = strlen(msg), off = 0, used = 0, n;
	int ret = 0;

	sb_free(out);
	while (off < len && ret == 0) {
		n = len - off < step ? len - off : step;
		ret = cli_chunked_feed(&ck, msg + off, n, out, &used);
		off += ret == 1 ? used : n;
	}
	sb_add(out, "", 0);
	if (consumed)
		*consumed = off;
	return ret;
}

static void test_steps(const char *msg, const char *want)
{
	struct strbuf out = STRBUF_INIT;
	size_t step;

	for (step = 1; step <= strlen(msg); step++) {
		CHECK_INT(decode(msg, step, &out, NULL), 1);
		CHECK_STR(out.buf, want);
	}
	sb_free(&out);
}

int main(void)
{
	struct strbuf out = STRBUF_INIT;
	size_t used;

	test_steps("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world");
	test_steps("A;name=val\r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\n", "0123456789");
	test_steps("3\nabc\n0\n\n", "abc");
	test_steps("0\r\n\r\n", "");
	test_steps("1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n",
		   "abcdefghijklmnopqrstuvwxyz");

	/* Bytes after the final CRLF are not part of the body. */
	CHECK_INT(decode("2\r\nok\r\n0\r\n\r\nGARBAGE", 100, &out, &used), 1);
	CHECK_STR(out.buf, "ok");
	CHECK_INT(used, strlen("2\r\nok\r\n0\r\n\r\n"));

	/* Incomplete input asks for more. */
	CHECK_INT(decode("5\r\nhel", 100, &out, NULL), 0);
	CHECK_INT(decode("5\r\nhello\r\n0\r\n", 100, &out, NULL), 0);

	CHECK_INT(decode("zz\r\n", 100, &out, NULL), -EPROTO);
	CHECK_INT(decode("\r\nabc", 100, &out, NULL), -EPROTO);
	CHECK_INT(decode("2\r\nabc\r\n", 100, &out, NULL), -EPROTO);
	CHECK_INT(decode(";ext\r\n", 100, &out, NULL), -EPROTO);
	CHECK_INT(decode("fffffffffffffffffffff\r\n", 100, &out, NULL), -EPROTO);
	sb_free(&out);
	return check_done("test_chunked");
}
