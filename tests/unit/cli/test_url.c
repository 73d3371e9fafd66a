/* cli_url_parse: the forms of the daemon URL users type, and the ones we refuse. */
#include <errno.h>

#include "check.h"
#include "cli/url.h"

static void test_good(void)
{
	struct cli_url u;

	CHECK_INT(cli_url_parse("http://127.0.0.1:8080", &u, NULL), 0);
	CHECK_STR(u.host, "127.0.0.1");
	CHECK_STR(u.port, "8080");
	CHECK_STR(u.prefix, "");
	CHECK_INT(u.ipv6, 0);

	CHECK_INT(cli_url_parse("HTTP://localhost/", &u, NULL), 0);
	CHECK_STR(u.host, "localhost");
	CHECK_STR(u.port, "80");
	CHECK_STR(u.prefix, "");

	CHECK_INT(cli_url_parse("http://[::1]:9000/base/path//", &u, NULL), 0);
	CHECK_STR(u.host, "::1");
	CHECK_STR(u.port, "9000");
	CHECK_STR(u.prefix, "/base/path");
	CHECK_INT(u.ipv6, 1);

	CHECK_INT(cli_url_parse("127.0.0.1:81", &u, NULL), 0);
	CHECK_STR(u.host, "127.0.0.1");
	CHECK_STR(u.port, "81");

	CHECK_INT(cli_url_parse("http://[::1]", &u, NULL), 0);
	CHECK_STR(u.port, "80");
}

static void test_bad(void)
{
	struct cli_err err = { 0 };
	struct cli_url u;

	CHECK_INT(cli_url_parse("https://127.0.0.1", &u, &err), -EPROTONOSUPPORT);
	CHECK(strstr(err.msg, "http://") != NULL);
	CHECK_INT(cli_url_parse("http://", &u, &err), -EINVAL);
	CHECK_INT(cli_url_parse("http://:8080", &u, &err), -EINVAL);
	CHECK_INT(cli_url_parse("http://h:0", &u, &err), -EINVAL);
	CHECK_INT(cli_url_parse("http://h:65536", &u, &err), -EINVAL);
	CHECK_INT(cli_url_parse("http://h:80x", &u, &err), -EINVAL);
	CHECK_INT(cli_url_parse("http://h:", &u, &err), -EINVAL);
	CHECK_INT(cli_url_parse("http://[::1", &u, &err), -EINVAL);
	CHECK_INT(cli_url_parse("http://[::1]x", &u, &err), -EINVAL);
	CHECK_INT(cli_url_parse("http://u@h", &u, &err), -EINVAL);
	CHECK_INT(cli_url_parse("http://h/p?q=1", &u, &err), -EINVAL);
	CHECK_INT(cli_url_parse("ftp://h", &u, &err), -EPROTONOSUPPORT);
}

int main(void)
{
	test_good();
	test_bad();
	return check_done("test_url");
}
