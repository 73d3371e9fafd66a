/* The daemon's address as the user names it: http://HOST[:PORT][/PREFIX]. */
#ifndef STOKE_CLI_URL_H
#define STOKE_CLI_URL_H

#include "err.h"

struct cli_url {
	char host[256];		/* without the brackets of an IPv6 literal */
	char port[6];		/* decimal, "80" when the URL names none */
	char prefix[1024];	/* path before /_stoke or /fn, no trailing '/'; may be "" */
	int ipv6;		/* host was a bracketed literal, so Host: needs brackets */
};

/* Parses s into url. The scheme may be left out; only http is supported (the daemon
 * speaks plain HTTP on loopback). Returns 0 or -EINVAL, -EPROTONOSUPPORT with err set. */
int cli_url_parse(const char *s, struct cli_url *url, struct cli_err *err);

#endif
