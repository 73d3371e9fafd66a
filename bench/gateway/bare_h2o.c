/*
 * bench/gateway's floor: the HTTP library stoke is built on (Debian's libh2o-evloop),
 * answering "Hello, world!" itself, with stoke's thread and socket layout (one event
 * loop per thread, one SO_REUSEPORT listener each, TCP_NODELAY). Whatever stoke adds
 * on top (routing, the hand-off to an isolate worker and back, JavaScript, logs and
 * metrics) is the gap between the two.
 *
 * usage: bare_h2o PORT [THREADS]    (listens on 127.0.0.1; SIGTERM ends it)
 */
#define H2O_USE_LIBUV 0
#include <h2o.h>

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BARE_MAX_THREADS 64

struct bare_thread {
	h2o_context_t ctx;
	h2o_accept_ctx_t accept;
	h2o_globalconf_t *conf;
	int fd;
	pthread_t tid;
};

static int bare_hello(h2o_handler_t *self, h2o_req_t *req)
{
	static h2o_generator_t gen = { NULL, NULL };
	h2o_iovec_t body = h2o_iovec_init(H2O_STRLIT("Hello, world!\n"));

	req->res.status = 200;
	req->res.reason = "OK";
	h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL,
		       H2O_STRLIT("text/plain"));
	req->res.content_length = body.len;
	h2o_start_response(req, &gen);
	h2o_send(req, &body, 1, H2O_SEND_STATE_FINAL);
	return 0;
}

static void bare_on_accept(h2o_socket_t *listener, const char *err)
{
	struct bare_thread *t = listener->data;
	h2o_socket_t *sock;

	if (err)
		return;
	sock = h2o_evloop_socket_accept(listener);
	if (sock)
		h2o_accept(&t->accept, sock);
}

static int bare_listen(int port)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;

	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) || listen(fd, SOMAXCONN)) {
		close(fd);
		return -errno;
	}
	return fd;
}

/* The loop is built on its own thread: h2o keeps buffer lists in thread-local storage. */
static void *bare_thread_main(void *arg)
{
	struct bare_thread *t = arg;
	h2o_evloop_t *loop = h2o_evloop_create();
	h2o_socket_t *listener;

	h2o_context_init(&t->ctx, loop, t->conf);
	t->accept.ctx = &t->ctx;
	t->accept.hosts = t->conf->hosts;
	listener = h2o_evloop_socket_create(loop, t->fd, H2O_SOCKET_FLAG_DONT_READ);
	listener->data = t;
	h2o_socket_read_start(listener, bare_on_accept);
	for (;;)
		h2o_evloop_run(loop, INT32_MAX);
	return NULL;
}

int main(int argc, char **argv)
{
	static h2o_globalconf_t conf;
	static struct bare_thread threads[BARE_MAX_THREADS];
	int port = argc > 1 ? atoi(argv[1]) : 0, n = argc > 2 ? atoi(argv[2]) : 2, i;
	h2o_hostconf_t *host;
	h2o_handler_t *handler;

	if (port <= 0 || port > 65535 || n < 1 || n > BARE_MAX_THREADS) {
		fprintf(stderr, "usage: bare_h2o PORT [THREADS 1-%d]\n", BARE_MAX_THREADS);
		return 2;
	}
	h2o_config_init(&conf);
	host = h2o_config_register_host(&conf, h2o_iovec_init(H2O_STRLIT("default")), 65535);
	handler = h2o_create_handler(h2o_config_register_path(host, "/", 0), sizeof(*handler));
	handler->on_req = bare_hello;
	for (i = 0; i < n; i++) {
		threads[i].conf = &conf;
		threads[i].fd = bare_listen(port);
		if (threads[i].fd < 0) {
			fprintf(stderr, "bare_h2o: cannot listen on 127.0.0.1:%d: %s\n", port,
				strerror(-threads[i].fd));
			return 1;
		}
	}
	for (i = 0; i < n; i++)
		pthread_create(&threads[i].tid, NULL, bare_thread_main, &threads[i]);
	pthread_join(threads[0].tid, NULL);
	return 0;
}
