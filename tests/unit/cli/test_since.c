/* cli_since_parse: the three forms of --since WHEN, their edges and what is refused. */
#include <errno.h>

#include "check.h"
#include "cli/since.h"

#define NOW 1764806400	/* 2025-12-04T00:00:00Z */

static long long since(const char *text, int want_ret)
{
	struct cli_err err = { 0 };
	long long out = -1;
	int ret = cli_since_parse(text, NOW, &out, &err);

	if (ret != want_ret)
		fprintf(stderr, "'%s': returned %d (%s), want %d\n", text, ret, err.msg,
			want_ret);
	CHECK_INT(ret, want_ret);
	CHECK(ret == 0 || err.msg[0]);
	return out;
}

static void test_unix_seconds(void)
{
	CHECK_INT(since("0", 0), 0);
	CHECK_INT(since("1764547200", 0), 1764547200);
	CHECK_INT(since("253402300799", 0), 253402300799LL);
	since("253402300800", -ERANGE);
	since("99999999999999999999999", -ERANGE);
}

static void test_dates(void)
{
	CHECK_INT(since("1970-01-01", 0), 0);
	CHECK_INT(since("2026-12-01", 0), 1796083200);
	CHECK_INT(since("2024-02-29", 0), 1709164800);
	CHECK_INT(since("2026-12-01T08:30", 0), 1796083200 + 8 * 3600 + 30 * 60);
	CHECK_INT(since("2026-12-01T08:30:15Z", 0), 1796083200 + 8 * 3600 + 30 * 60 + 15);
	CHECK_INT(since("2026-12-01T23:59:59", 0), 1796083200 + 86399);
	since("2025-02-29", -EINVAL);
	since("2026-13-01", -EINVAL);
	since("2026-00-10", -EINVAL);
	since("2026-04-31", -EINVAL);
	since("2026-12-1", -EINVAL);
	since("2026-12-01x", -EINVAL);
	since("2026-12-01T24:00", -EINVAL);
	since("2026-12-01T08", -EINVAL);
	since("2026-12-01T08:30:15+01:00", -EINVAL);
	since("1969-12-31", -ERANGE);
}

static void test_ages(void)
{
	CHECK_INT(since("90s", 0), NOW - 90);
	CHECK_INT(since("30m", 0), NOW - 30 * 60);
	CHECK_INT(since("1h", 0), NOW - 3600);
	CHECK_INT(since("7d", 0), NOW - 7 * 86400);
	CHECK_INT(since("2w", 0), NOW - 14 * 86400);
	CHECK_INT(since("0h", 0), NOW);
	since("1y", -EINVAL);
	since("1hh", -EINVAL);
	since("1 h", -EINVAL);
	since("100000d", -ERANGE);
	since("999999999999w", -ERANGE);
}

static void test_garbage(void)
{
	since("", -EINVAL);
	since("h", -EINVAL);
	since("-1h", -EINVAL);
	since("yesterday", -EINVAL);
	since("1.5h", -EINVAL);
}

int main(void)
{
	test_unix_seconds();
	test_dates();
	test_ages();
	test_garbage();
	return check_done("test_since");
}
