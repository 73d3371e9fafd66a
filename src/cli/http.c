#include "http.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "chunked.h"

#define CLI_HTTP_MAX_HEAD (64 * 1024)
/* Far above anything the daemon sends; only guards against a runaway peer. */
#define CLI_HTTP_MAX_BODY ((size_t)1 << 30)

/* Reads into a fixed buffer; the caller consumes buf[0..len). */
struct cli_http_conn {
	int fd;
	const char *where;	/* "host:port", for messages */
	char buf[64 * 1024];
	size_t len;
};

static int cli_http_wait_connect(int fd, int timeout_ms)
{
	struct pollfd pfd = { .fd = fd, .events = POLLOUT };
	socklen_t len = sizeof(int);
	int ret, soerr = 0;

	do
		ret = poll(&pfd, 1, timeout_ms);
	while (ret < 0 && errno == EINTR);
	if (ret < 0)
		return -errno;
	if (ret == 0)
		return -ETIMEDOUT;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
		return -errno;
	return -soerr;
}

/* Connects to one resolved address, giving up after timeout_ms. Returns fd or -errno. */
static int cli_http_connect_one(const struct addrinfo *ai, int timeout_ms)
{
	int fd, ret;

	fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
		    ai->ai_protocol);
	if (fd < 0)
		return -errno;
	ret = connect(fd, ai->ai_addr, ai->ai_addrlen) < 0 ? -errno : 0;
	if (ret == -EINPROGRESS)
		ret = cli_http_wait_connect(fd, timeout_ms);
	/* Back to blocking: from here on SO_RCVTIMEO/SO_SNDTIMEO bound each wait. */
	if (!ret && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0)
		ret = -errno;
	if (ret) {
		close(fd);
		return ret;
	}
	return fd;
}

static int cli_http_set_timeouts(int fd, int timeout_ms)
{
	struct timeval tv = {
		.tv_sec = timeout_ms / 1000,
		.tv_usec = (timeout_ms % 1000) * 1000,
	};

	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0)
		return -errno;
	return 0;
}

static int cli_http_connect(const struct cli_url *url, const struct cli_http_req *req,
			    struct cli_err *err)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_NUMERICSERV };
	int timeout = req->connect_timeout_ms > 0 ? req->connect_timeout_ms : 5000;
	struct addrinfo *res, *ai;
	int ret, fd = -EHOSTUNREACH;

	ret = getaddrinfo(url->host, url->port, &hints, &res);
	if (ret)
		return cli_err_set(err, -EHOSTUNREACH, "cannot resolve %s: %s", url->host,
				   gai_strerror(ret));
	for (ai = res; ai; ai = ai->ai_next) {
		fd = cli_http_connect_one(ai, timeout);
		if (fd >= 0)
			break;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return cli_err_set(err, fd, "cannot connect to %s port %s: %s", url->host,
				   url->port, strerror(-fd));
	return fd;
}

static int cli_http_send_all(int fd, const void *data, size_t len)
{
	const char *p = data;
	ssize_t n;

	while (len) {
		n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno == EAGAIN ? -ETIMEDOUT : -errno;
		p += n;
		len -= n;
	}
	return 0;
}

static void cli_http_format_head(const struct cli_url *url, const struct cli_http_req *req,
				 struct strbuf *sb)
{
	const char *const *h;

	sb_printf(sb, "%s %s%s HTTP/1.1\r\n", req->method, url->prefix, req->target);
	if (url->ipv6)
		sb_printf(sb, "Host: [%s]:%s\r\n", url->host, url->port);
	else
		sb_printf(sb, "Host: %s:%s\r\n", url->host, url->port);
	sb_adds(sb, "User-Agent: stoke-cli\r\nConnection: close\r\n");
	if (req->body)
		sb_printf(sb, "Content-Length: %zu\r\n", req->body_len);
	for (h = req->headers; h && *h; h++)
		sb_printf(sb, "%s\r\n", *h);
	sb_adds(sb, "\r\n");
}

static int cli_http_send(int fd, const struct cli_url *url, const struct cli_http_req *req)
{
	struct strbuf head = STRBUF_INIT;
	int ret = -ENOMEM;

	cli_http_format_head(url, req, &head);
	if (!sb_failed(&head))
		ret = cli_http_send_all(fd, head.buf, head.len);
	sb_free(&head);
	if (!ret && req->body)
		ret = cli_http_send_all(fd, req->body, req->body_len);
	return ret;
}

/* Reads more bytes into conn->buf after its current content. Returns the count, 0 at
 * end of stream, or -errno (-ETIMEDOUT when the peer stayed silent too long). */
static ssize_t cli_http_fill(struct cli_http_conn *conn)
{
	ssize_t n;

	if (conn->len == sizeof(conn->buf))
		return -ENOBUFS;
	n = recv(conn->fd, conn->buf + conn->len, sizeof(conn->buf) - conn->len, 0);
	if (n < 0)
		return errno == EAGAIN ? -ETIMEDOUT : -errno;
	conn->len += n;
	return n;
}

static void cli_http_consume(struct cli_http_conn *conn, size_t n)
{
	memmove(conn->buf, conn->buf + n, conn->len - n);
	conn->len -= n;
}

/* Length of the head (blank line included) at the start of buf, or 0 if incomplete. */
static size_t cli_http_head_end(const char *buf, size_t len)
{
	size_t i;

	for (i = 0; i + 1 < len; i++) {
		if (buf[i] != '\n')
			continue;
		if (buf[i + 1] == '\n')
			return i + 2;
		if (i + 2 < len && buf[i + 1] == '\r' && buf[i + 2] == '\n')
			return i + 3;
	}
	return 0;
}

static int cli_http_read_head(struct cli_http_conn *conn, struct strbuf *head,
			      struct cli_err *err)
{
	size_t end;
	ssize_t n;

	while (!(end = cli_http_head_end(conn->buf, conn->len))) {
		if (conn->len >= CLI_HTTP_MAX_HEAD)
			return cli_err_set(err, -EPROTO, "%s sent an oversized response head",
					   conn->where);
		n = cli_http_fill(conn);
		if (n == 0)
			return cli_err_set(err, -EPROTO, "%s closed the connection without "
					   "answering", conn->where);
		if (n < 0)
			return cli_err_set(err, n, "reading from %s: %s", conn->where,
					   strerror(-n));
	}
	sb_add(head, conn->buf, end);
	cli_http_consume(conn, end);
	return sb_failed(head) ? cli_err_set(err, -ENOMEM, "out of memory") : 0;
}

static int cli_http_parse_status(const char *line, struct cli_http_resp *resp)
{
	int status;

	if (strncmp(line, "HTTP/1.", 7) || !line[7] || line[8] != ' ')
		return -EPROTO;
	line += 9;
	if (line[0] < '1' || line[0] > '9' || line[1] < '0' || line[1] > '9' ||
	    line[2] < '0' || line[2] > '9' || (line[3] && line[3] != ' '))
		return -EPROTO;
	status = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
	resp->status = status;
	return 0;
}

static char *cli_http_trim(char *s)
{
	size_t len;

	while (*s == ' ' || *s == '\t')
		s++;
	len = strlen(s);
	while (len && (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\r'))
		s[--len] = '\0';
	return s;
}

/* Adds the "name: value" line to resp->fields; lines without a colon are ignored, as
 * are obsolete folded continuations (RFC 9112 section 5.2 lets a client drop them). */
static int cli_http_add_field(struct cli_http_resp *resp, char *line, size_t *cap)
{
	char *colon = strchr(line, ':');
	struct cli_http_field *f;

	if (!colon || line[0] == ' ' || line[0] == '\t')
		return 0;
	if (resp->nfields == *cap) {
		*cap = *cap ? *cap * 2 : 16;
		f = realloc(resp->fields, *cap * sizeof(*f));
		if (!f)
			return -ENOMEM;
		resp->fields = f;
	}
	*colon = '\0';
	f = &resp->fields[resp->nfields++];
	f->name = cli_http_trim(line);
	f->value = cli_http_trim(colon + 1);
	return 0;
}

static int cli_http_parse_head(struct cli_http_resp *resp)
{
	char *line, *next;
	size_t cap = 0;
	int ret;

	free(resp->fieldbuf);
	free(resp->fields);
	resp->fields = NULL;
	resp->nfields = 0;
	resp->fieldbuf = strndup(resp->head.buf, resp->head.len);
	if (!resp->fieldbuf)
		return -ENOMEM;
	line = resp->fieldbuf;
	next = strchr(line, '\n');
	*next++ = '\0';
	ret = cli_http_parse_status(cli_http_trim(line), resp);
	for (line = next; !ret && (next = strchr(line, '\n')); line = next) {
		*next++ = '\0';
		ret = cli_http_add_field(resp, line, &cap);
	}
	return ret;
}

const char *cli_http_field(const struct cli_http_resp *resp, const char *name)
{
	size_t i;

	for (i = 0; i < resp->nfields; i++)
		if (!strcasecmp(resp->fields[i].name, name))
			return resp->fields[i].value;
	return NULL;
}

enum cli_http_framing { FRAME_NONE, FRAME_LENGTH, FRAME_CHUNKED, FRAME_CLOSE };

/* Decides how the body is delimited (RFC 9112 section 6.3). */
static int cli_http_framing(const struct cli_http_resp *resp, const char *method,
			    size_t *length)
{
	const char *te = cli_http_field(resp, "Transfer-Encoding");
	const char *cl = cli_http_field(resp, "Content-Length");
	char *end;

	if (!strcmp(method, "HEAD") || resp->status < 200 || resp->status == 204 ||
	    resp->status == 304)
		return FRAME_NONE;
	if (te)
		return strcasestr(te, "chunked") ? FRAME_CHUNKED : FRAME_CLOSE;
	if (!cl)
		return FRAME_CLOSE;
	errno = 0;
	*length = strtoull(cl, &end, 10);
	if (cl[0] < '0' || cl[0] > '9' || *end || errno)
		return -EPROTO;
	return FRAME_LENGTH;
}

static int cli_http_take(struct cli_http_resp *resp, struct cli_http_conn *conn, size_t n)
{
	if (resp->body.len + n > CLI_HTTP_MAX_BODY)
		return -EFBIG;
	sb_add(&resp->body, conn->buf, n);
	cli_http_consume(conn, n);
	return sb_failed(&resp->body) ? -ENOMEM : 0;
}

/* Reads a Content-Length body, or (length SIZE_MAX) everything until the peer closes. */
static int cli_http_read_plain(struct cli_http_conn *conn, struct cli_http_resp *resp,
			       size_t length)
{
	size_t want;
	ssize_t n = 1;
	int ret;

	if (length != SIZE_MAX && length > CLI_HTTP_MAX_BODY)
		return -EFBIG;
	for (;;) {
		want = length - resp->body.len;
		ret = cli_http_take(resp, conn, conn->len < want ? conn->len : want);
		if (ret || resp->body.len == length)
			return ret;
		if (n == 0)
			return length == SIZE_MAX ? 0 : -EPROTO;
		n = cli_http_fill(conn);
		if (n < 0)
			return n;
	}
}

static int cli_http_read_chunked(struct cli_http_conn *conn, struct cli_http_resp *resp)
{
	struct cli_chunked ck = CLI_CHUNKED_INIT;
	size_t used;
	ssize_t n;
	int ret;

	for (;;) {
		ret = cli_chunked_feed(&ck, conn->buf, conn->len, &resp->body, &used);
		if (ret)
			return ret < 0 ? ret : 0;
		if (resp->body.len > CLI_HTTP_MAX_BODY)
			return -EFBIG;
		conn->len = 0;
		n = cli_http_fill(conn);
		if (n == 0)
			return -EPROTO;
		if (n < 0)
			return n;
	}
}

static int cli_http_read_body(struct cli_http_conn *conn, struct cli_http_resp *resp,
			      const char *method, struct cli_err *err)
{
	size_t length = 0;
	int ret, framing = cli_http_framing(resp, method, &length);

	if (framing == FRAME_LENGTH || framing == FRAME_CLOSE)
		ret = cli_http_read_plain(conn, resp, framing == FRAME_CLOSE ? SIZE_MAX : length);
	else if (framing == FRAME_CHUNKED)
		ret = cli_http_read_chunked(conn, resp);
	else
		ret = framing;
	/* sb_add never ran for an empty body; callers may still want a string. */
	if (!ret)
		sb_add(&resp->body, "", 0);
	if (ret == -EPROTO)
		return cli_err_set(err, ret, "%s sent a malformed or truncated response body",
				   conn->where);
	if (ret)
		return cli_err_set(err, ret, "reading the response from %s: %s", conn->where,
				   strerror(-ret));
	return 0;
}

/* Reads heads until a final one: interim 1xx responses (other than 101) carry nothing. */
static int cli_http_read(struct cli_http_conn *conn, struct cli_http_resp *resp,
			 const char *method, struct cli_err *err)
{
	int ret;

	do {
		resp->head.len = 0;
		ret = cli_http_read_head(conn, &resp->head, err);
		if (ret)
			return ret;
		ret = cli_http_parse_head(resp);
		if (ret)
			return cli_err_set(err, ret, "%s sent a malformed response head",
					   conn->where);
	} while (resp->status >= 100 && resp->status < 200 && resp->status != 101);
	return cli_http_read_body(conn, resp, method, err);
}

int cli_http_do(const struct cli_url *url, const struct cli_http_req *req,
		struct cli_http_resp *resp, struct cli_err *err)
{
	int io_timeout = req->io_timeout_ms > 0 ? req->io_timeout_ms : 120000;
	struct cli_http_conn *conn;
	char where[300];
	int fd, ret, sent;

	memset(resp, 0, sizeof(*resp));
	snprintf(where, sizeof(where), url->ipv6 ? "[%s]:%s" : "%s:%s", url->host, url->port);
	fd = cli_http_connect(url, req, err);
	if (fd < 0)
		return fd;
	resp->connected = 1;
	conn = calloc(1, sizeof(*conn));
	if (!conn) {
		close(fd);
		return cli_err_set(err, -ENOMEM, "out of memory");
	}
	conn->fd = fd;
	conn->where = where;
	ret = cli_http_set_timeouts(fd, io_timeout);
	if (ret) {
		cli_err_set(err, ret, "%s: cannot set timeouts: %s", where, strerror(-ret));
		goto out;
	}
	sent = cli_http_send(fd, url, req);
	/* A server may answer early and close (413 for an oversized deploy): when sending
	 * failed, the response it left behind is worth more than the send error. */
	ret = cli_http_read(conn, resp, req->method, err);
	if (ret && sent)
		ret = cli_err_set(err, sent, "sending the request to %s: %s", where,
				  strerror(-sent));
out:
	close(fd);
	free(conn);
	return ret;
}

void cli_http_resp_free(struct cli_http_resp *resp)
{
	sb_free(&resp->head);
	sb_free(&resp->body);
	free(resp->fields);
	free(resp->fieldbuf);
	memset(resp, 0, sizeof(*resp));
}
