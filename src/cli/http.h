/*
 * A small blocking HTTP/1.1 client: one request per connection ("Connection: close"),
 * bodies sent with Content-Length, responses read with Content-Length, chunked transfer
 * coding or until the server closes.
 */
#ifndef STOKE_CLI_HTTP_H
#define STOKE_CLI_HTTP_H

#include <stddef.h>

#include "common/strbuf.h"
#include "err.h"
#include "url.h"

struct cli_http_req {
	const char *method;
	const char *target;		/* origin-form: path and query, starting with '/' */
	const char *const *headers;	/* "Name: value" lines, NULL-terminated; may be NULL */
	const void *body;		/* sent with Content-Length when non-NULL */
	size_t body_len;
	int connect_timeout_ms;		/* <= 0 means 5 s */
	int io_timeout_ms;		/* longest silence in send or receive; <= 0: 120 s */
};

struct cli_http_field {
	char *name;
	char *value;
};

struct cli_http_resp {
	int connected;			/* a connection was made (refusal vs failure) */
	int status;
	struct strbuf head;		/* status line and fields as received, CRLFs included */
	struct cli_http_field *fields;	/* parsed copy of head, for lookups */
	size_t nfields;
	struct strbuf body;		/* decoded payload */
	char *fieldbuf;			/* storage behind fields */
};

/*
 * Sends req to the server at url and reads the whole response into resp (which the
 * caller releases with cli_http_resp_free, also after a failure).
 * Returns 0 when a response arrived, whatever its status, or a negative errno with err
 * set: -ECONNREFUSED, -ETIMEDOUT, -EHOSTUNREACH... while connecting (resp->connected is
 * then 0), -EPROTO for a malformed response, -ETIMEDOUT or another -errno from I/O.
 */
int cli_http_do(const struct cli_url *url, const struct cli_http_req *req,
		struct cli_http_resp *resp, struct cli_err *err);

/* The value of the first field named name (case-insensitive), or NULL. */
const char *cli_http_field(const struct cli_http_resp *resp, const char *name);

void cli_http_resp_free(struct cli_http_resp *resp);

#endif
