#include "check.h"
#include "common/strbuf.h"

#include <stdlib.h>

int main(void)
{
	struct strbuf sb = STRBUF_INIT;
	size_t len;
	char *p;
	int i;

	sb_adds(&sb, "a");
	sb_printf(&sb, "%d-%s", 42, "x");
	CHECK_STR(sb.buf, "a42-x");
	for (i = 0; i < 10000; i++)
		sb_add(&sb, "0123456789", 10);
	CHECK(sb.len == 5 + 100000);
	sb_free(&sb);

	sb_json_str(&sb, "q\"b\\n\n\x01", 7);
	CHECK_STR(sb.buf, "\"q\\\"b\\\\n\\n\\u0001\"");
	p = sb_detach(&sb, &len);
	CHECK(p && len == strlen(p));
	CHECK(sb.buf == NULL && sb.len == 0);
	free(p);

	p = sb_detach(&sb, &len);	/* empty buffer detaches as "" */
	CHECK(p && *p == '\0' && len == 0);
	free(p);
	return check_done();
}
