/*
 * cli_http_do against a tiny server on 127.0.0.1 (port 0) running in a thread: bodies
 * framed by Content-Length, chunked in pieces, or by closing; what the request looks
 * like on the wire; and the failures: nothing listening, a server that never answers,
 * a malformed answer.
 */
#include <errno.h>

#include "check.h"
#include "cli/http.h"
#include "loopback.h"

/* Whether the request line ends in path (the URL prefix comes first). */
static int asked(const char *path)
{
	char want[64];

	snprintf(want, sizeof(want), "%s HTTP/1.1\r\n", path);
	return strstr(loop_seen, want) != NULL;
}

/* Answers according to the request path. */
static void respond(int fd, const char *request)
{
	if (asked("/length"))
		loop_say(fd, "HTTP/1.1 201 Created\r\nContent-Length: 5\r\n"
		    "X-Thing:  a b \r\n\r\nhello");
	else if (asked("/chunked")) {
		loop_say(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwi");
		loop_pause_ms(20);
		loop_say(fd, "ki\r\n");
		loop_pause_ms(20);
		loop_say(fd, "5;ext=1\r\npedia\r\n0\r\nTrailer: x\r\n\r\n");
	} else if (asked("/close"))
		loop_say(fd, "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n\r\nuntil close");
	else if (asked("/continue"))
		loop_say(fd, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n");
	else if (asked("/short"))
		loop_say(fd, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
	else if (asked("/garbage"))
		loop_say(fd, "SMTP ready\r\n\r\n");
	else if (asked("/silent"))
		loop_pause_ms(1500);
	else
		loop_say(fd, "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n");
}

static int call(struct cli_url *url, const char *method, const char *target, const char *body,
		struct cli_http_resp *resp, struct cli_err *err)
{
	static const char *const headers[] = { "X-Test: yes", NULL };
	struct cli_http_req req = {
		.method = method, .target = target, .headers = headers, .body = body,
		.body_len = body ? strlen(body) : 0, .io_timeout_ms = 500,
	};

	cli_http_resp_free(resp);
	memset(err, 0, sizeof(*err));
	return cli_http_do(url, &req, resp, err);
}

static void test_framing(struct cli_url *url)
{
	struct cli_http_resp resp = { 0 };
	struct cli_err err;

	CHECK_INT(call(url, "PUT", "/length", "{\"a\":1}", &resp, &err), 0);
	CHECK_INT(resp.status, 201);
	CHECK_STR(resp.body.buf, "hello");
	CHECK_STR(cli_http_field(&resp, "x-thing"), "a b");
	CHECK_STR(cli_http_field(&resp, "content-length"), "5");
	CHECK(cli_http_field(&resp, "missing") == NULL);
	CHECK(strncmp(resp.head.buf, "HTTP/1.1 201 Created\r\n", 22) == 0);

	/* The request on the wire: prefix, Host, length, our header, body. */
	pthread_mutex_lock(&loop_lock);
	CHECK(strncmp(loop_seen, "PUT /pre/length HTTP/1.1\r\n", 26) == 0);
	CHECK(strstr(loop_seen, "\r\nHost: 127.0.0.1:") != NULL);
	CHECK(strstr(loop_seen, "\r\nContent-Length: 7\r\n") != NULL);
	CHECK(strstr(loop_seen, "\r\nX-Test: yes\r\n") != NULL);
	CHECK(strstr(loop_seen, "\r\nConnection: close\r\n") != NULL);
	CHECK(strstr(loop_seen, "\r\n\r\n{\"a\":1}") != NULL);
	pthread_mutex_unlock(&loop_lock);

	CHECK_INT(call(url, "GET", "/chunked", NULL, &resp, &err), 0);
	CHECK_INT(resp.status, 200);
	CHECK_STR(resp.body.buf, "wikipedia");
	pthread_mutex_lock(&loop_lock);
	CHECK(strstr(loop_seen, "Content-Length") == NULL);
	pthread_mutex_unlock(&loop_lock);

	CHECK_INT(call(url, "GET", "/close", NULL, &resp, &err), 0);
	CHECK_INT(resp.status, 404);
	CHECK_STR(resp.body.buf, "until close");

	CHECK_INT(call(url, "GET", "/continue", NULL, &resp, &err), 0);
	CHECK_INT(resp.status, 204);
	CHECK_STR(resp.body.buf, "");

	CHECK_INT(call(url, "HEAD", "/length", NULL, &resp, &err), 0);
	CHECK_INT(resp.status, 201);
	CHECK_STR(resp.body.buf, "");
	cli_http_resp_free(&resp);
}

static void test_failures(struct cli_url *url)
{
	struct cli_http_resp resp = { 0 };
	struct cli_err err;

	CHECK_INT(call(url, "GET", "/short", NULL, &resp, &err), -EPROTO);
	CHECK_INT(resp.connected, 1);
	CHECK(strstr(err.msg, "truncated") != NULL);

	CHECK_INT(call(url, "GET", "/garbage", NULL, &resp, &err), -EPROTO);

	CHECK_INT(call(url, "GET", "/silent", NULL, &resp, &err), -ETIMEDOUT);
	CHECK_INT(resp.connected, 1);
	cli_http_resp_free(&resp);
}

/* Nothing listens on the port: connecting is refused, before any connection. */
static void test_refused(void)
{
	struct cli_http_resp resp = { 0 };
	struct cli_url url;
	struct cli_err err;
	char text[64];

	snprintf(text, sizeof(text), "http://127.0.0.1:%d", loop_dead_port());
	CHECK_INT(cli_url_parse(text, &url, NULL), 0);
	CHECK_INT(call(&url, "GET", "/", NULL, &resp, &err), -ECONNREFUSED);
	CHECK_INT(resp.connected, 0);
	CHECK(strstr(err.msg, "127.0.0.1") != NULL);
	cli_http_resp_free(&resp);
}

int main(void)
{
	struct cli_url url;
	char text[64];

	snprintf(text, sizeof(text), "http://127.0.0.1:%d/pre/", loop_start(respond));
	CHECK_INT(cli_url_parse(text, &url, NULL), 0);
	test_framing(&url);
	test_failures(&url);
	test_refused();
	return check_done("test_http");
}
