/*
 * A one-connection-at-a-time HTTP server on 127.0.0.1, port 0, in a thread, for the CLI
 * tests. It reads each request (head plus Content-Length body) into loop_seen and lets
 * the test's handler answer; then closes the connection.
 */
#ifndef STOKE_TEST_CLI_LOOPBACK_H
#define STOKE_TEST_CLI_LOOPBACK_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int loop_fd;
static pthread_mutex_t loop_lock = PTHREAD_MUTEX_INITIALIZER;
static char loop_seen[1 << 16];		/* the last request, NUL-terminated */
static void (*loop_handler)(int fd, const char *request);

static inline void loop_pause_ms(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static inline void loop_say(int fd, const char *s)
{
	if (send(fd, s, strlen(s), MSG_NOSIGNAL) < 0)
		perror("loopback send");
}

static inline void loop_read_request(int fd)
{
	size_t len = 0, want;
	char *end, *cl;
	ssize_t n;

	while (len < sizeof(loop_seen) - 1) {
		n = recv(fd, loop_seen + len, sizeof(loop_seen) - 1 - len, 0);
		if (n <= 0)
			break;
		len += n;
		loop_seen[len] = '\0';
		end = strstr(loop_seen, "\r\n\r\n");
		if (!end)
			continue;
		cl = strcasestr(loop_seen, "\r\nContent-Length:");
		want = (end - loop_seen) + 4 +
		       (cl && cl < end ? strtoul(cl + 17, NULL, 10) : 0);
		if (len >= want)
			break;
	}
	loop_seen[len] = '\0';
}

static inline void *loop_serve(void *arg)
{
	int fd;

	while ((fd = accept(loop_fd, NULL, NULL)) >= 0) {
		pthread_mutex_lock(&loop_lock);
		loop_read_request(fd);
		loop_handler(fd, loop_seen);
		pthread_mutex_unlock(&loop_lock);
		close(fd);
	}
	return NULL;
}

/* Starts the server; returns its port. */
static inline int loop_start(void (*handler)(int fd, const char *request))
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);
	pthread_t th;

	loop_handler = handler;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	loop_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (loop_fd < 0 || bind(loop_fd, (struct sockaddr *)&sin, sizeof(sin)) ||
	    listen(loop_fd, 8) || getsockname(loop_fd, (struct sockaddr *)&sin, &len)) {
		perror("loopback server");
		exit(2);
	}
	pthread_create(&th, NULL, loop_serve, NULL);
	pthread_detach(th);
	return ntohs(sin.sin_port);
}

/* A loopback port nothing listens on: bound, then released. */
static inline int loop_dead_port(void)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	socklen_t len = sizeof(sin);
	int fd;

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) ||
	    getsockname(fd, (struct sockaddr *)&sin, &len))
		exit(2);
	close(fd);
	return ntohs(sin.sin_port);
}

#endif
