/*
 * cli_http_do against a tiny server on 127.0.0.1 (port 0) running in a thread: bodies
 * framed by Content-Length, chunked in pieces, or by closing; what the request looks
 * like on the wire; and the failures: nothing listening, a server that never answers,
 * a malformed answer.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "cli/http.h"

static int listen_fd;
static pthread_mutex_t seen_lock = PTHREAD_MUTEX_INITIALIZER;
static char seen[8192];		/* the last request head and body the server read */

static void pause_ms(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static void say(int fd, const char *s)
{
	if (send(fd, s, strlen(s), MSG_NOSIGNAL) < 0)
		perror("test server send");
}

/* Reads one request (head, then Content-Length bytes) into seen. */
static void read_request(int fd)
{
	size_t len = 0, want = 0;
	char *end, *cl;
	ssize_t n;

	while (len < sizeof(seen) - 1) {
		n = recv(fd, seen + len, sizeof(seen) - 1 - len, 0);
		if (n <= 0)
			break;
		len += n;
		seen[len] = '\0';
		end = strstr(seen, "\r\n\r\n");
		if (!end)
			continue;
		cl = strcasestr(seen, "\r\nContent-Length:");
		want = (end - seen) + 4 + (cl && cl < end ? strtoul(cl + 17, NULL, 10) : 0);
		if (len >= want)
			break;
	}
	seen[len] = '\0';
}

/* Whether the request line (read into seen) ends in path: the URL prefix comes first. */
static int asked(const char *path)
{
	char want[64];

	snprintf(want, sizeof(want), "%s HTTP/1.1\r\n", path);
	return strstr(seen, want) != NULL;
}

/* Answers according to the request path. */
static void respond(int fd)
{
	if (asked("/length"))
		say(fd, "HTTP/1.1 201 Created\r\nContent-Length: 5\r\n"
		    "X-Thing:  a b \r\n\r\nhello");
	else if (asked("/chunked")) {
		say(fd, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwi");
		pause_ms(20);
		say(fd, "ki\r\n");
		pause_ms(20);
		say(fd, "5;ext=1\r\npedia\r\n0\r\nTrailer: x\r\n\r\n");
	} else if (asked("/close"))
		say(fd, "HTTP/1.0 404 Not Found\r\nContent-Type: text/plain\r\n\r\nuntil close");
	else if (asked("/continue"))
		say(fd, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n");
	else if (asked("/short"))
		say(fd, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
	else if (asked("/garbage"))
		say(fd, "SMTP ready\r\n\r\n");
	else if (asked("/silent"))
		pause_ms(1500);
	else
		say(fd, "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n");
}

static void *serve(void *arg)
{
	int fd;

	while ((fd = accept(listen_fd, NULL, NULL)) >= 0) {
		pthread_mutex_lock(&seen_lock);
		read_request(fd);
		pthread_mutex_unlock(&seen_lock);
		respond(fd);
		close(fd);
	}
	return NULL;
}

static int start_server(void)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);
	pthread_t th;

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&sin, sizeof(sin)) ||
	    listen(listen_fd, 8) || getsockname(listen_fd, (struct sockaddr *)&sin, &len)) {
		perror("test server");
		exit(2);
	}
	pthread_create(&th, NULL, serve, NULL);
	pthread_detach(th);
	return ntohs(sin.sin_port);
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
	pthread_mutex_lock(&seen_lock);
	CHECK(strncmp(seen, "PUT /pre/length HTTP/1.1\r\n", 26) == 0);
	CHECK(strstr(seen, "\r\nHost: 127.0.0.1:") != NULL);
	CHECK(strstr(seen, "\r\nContent-Length: 7\r\n") != NULL);
	CHECK(strstr(seen, "\r\nX-Test: yes\r\n") != NULL);
	CHECK(strstr(seen, "\r\nConnection: close\r\n") != NULL);
	CHECK(strstr(seen, "\r\n\r\n{\"a\":1}") != NULL);
	pthread_mutex_unlock(&seen_lock);

	CHECK_INT(call(url, "GET", "/chunked", NULL, &resp, &err), 0);
	CHECK_INT(resp.status, 200);
	CHECK_STR(resp.body.buf, "wikipedia");
	pthread_mutex_lock(&seen_lock);
	CHECK(strstr(seen, "Content-Length") == NULL);
	pthread_mutex_unlock(&seen_lock);

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

/* A port that was just bound and released has no listener: connecting is refused. */
static void test_refused(void)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	struct cli_http_resp resp = { 0 };
	socklen_t len = sizeof(sin);
	struct cli_url url;
	struct cli_err err;
	char text[64];
	int fd;

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) ||
	    getsockname(fd, (struct sockaddr *)&sin, &len))
		exit(2);
	close(fd);
	snprintf(text, sizeof(text), "http://127.0.0.1:%d", ntohs(sin.sin_port));
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

	snprintf(text, sizeof(text), "http://127.0.0.1:%d/pre/", start_server());
	CHECK_INT(cli_url_parse(text, &url, NULL), 0);
	test_framing(&url);
	test_failures(&url);
	test_refused();
	return check_done("test_http");
}
