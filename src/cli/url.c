#include "url.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Splits off the scheme; returns the rest of s or NULL for a scheme we do not speak. */
static const char *cli_url_scheme(const char *s, struct cli_err *err)
{
	const char *sep = strstr(s, "://");

	if (!sep)
		return s;
	if (sep - s == 4 && !strncasecmp(s, "http", 4))
		return sep + 3;
	cli_err_set(err, -EPROTONOSUPPORT, "unsupported URL scheme in '%s' (only http://)", s);
	return NULL;
}

/* Parses HOST or [V6] at *p into url->host and advances *p past it. */
static int cli_url_host(const char **p, struct cli_url *url, struct cli_err *err)
{
	const char *s = *p, *end;
	size_t len;

	if (*s == '[') {
		end = strchr(s, ']');
		if (!end)
			return cli_err_set(err, -EINVAL, "unterminated '[' in URL host");
		s++;
		url->ipv6 = 1;
		*p = end + 1;
	} else {
		end = s + strcspn(s, ":/?#");
		*p = end;
	}
	len = end - s;
	if (!len)
		return cli_err_set(err, -EINVAL, "URL has no host");
	if (len >= sizeof(url->host))
		return cli_err_set(err, -EINVAL, "URL host is too long");
	if (memchr(s, '@', len))
		return cli_err_set(err, -EINVAL, "user names in URLs are not supported");
	memcpy(url->host, s, len);
	url->host[len] = '\0';
	return 0;
}

static int cli_url_port(const char **p, struct cli_url *url, struct cli_err *err)
{
	const char *s = *p;
	char *end;
	long port;

	strcpy(url->port, "80");
	if (*s != ':')
		return 0;
	s++;
	if (*s < '0' || *s > '9')
		return cli_err_set(err, -EINVAL, "URL port is not a number");
	port = strtol(s, &end, 10);
	if (port < 1 || port > 65535 || (*end && *end != '/'))
		return cli_err_set(err, -EINVAL, "URL port must be 1..65535");
	snprintf(url->port, sizeof(url->port), "%ld", port);
	*p = end;
	return 0;
}

static int cli_url_prefix(const char *s, struct cli_url *url, struct cli_err *err)
{
	size_t len = strlen(s);

	if (strpbrk(s, "?#"))
		return cli_err_set(err, -EINVAL, "the daemon URL cannot carry a query");
	while (len && s[len - 1] == '/')
		len--;
	if (len >= sizeof(url->prefix))
		return cli_err_set(err, -EINVAL, "URL path is too long");
	memcpy(url->prefix, s, len);
	url->prefix[len] = '\0';
	return 0;
}

int cli_url_parse(const char *s, struct cli_url *url, struct cli_err *err)
{
	const char *p;
	int ret;

	memset(url, 0, sizeof(*url));
	p = cli_url_scheme(s, err);
	if (!p)
		return err ? err->code : -EPROTONOSUPPORT;
	ret = cli_url_host(&p, url, err);
	if (!ret)
		ret = cli_url_port(&p, url, err);
	if (!ret && *p && *p != '/')
		ret = cli_err_set(err, -EINVAL, "unexpected '%c' after the URL host", *p);
	if (!ret)
		ret = cli_url_prefix(p, url, err);
	return ret;
}
