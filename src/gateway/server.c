/*
 * The HTTP front door: h2o event loops, one per thread, each accepting on its own
 * SO_REUSEPORT socket so the kernel spreads connections. Shutdown: stop accepting,
 * let in-flight requests finish within the grace period, then close.
 */
#include "server.h"
#include "common/log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define GW_ACCESS_FLUSH_BYTES (32 * 1024)
#define GW_ACCESS_FLUSH_NS (200 * 1000000ull)
#define GW_LINGER_NS (500 * 1000000ull)
#define GW_MEM_SAMPLE_NS (200 * 1000000ull)

uint64_t gw_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void gw_access_flush(struct gw_thread *t)
{
	if (t->access.len && write(STDERR_FILENO, t->access.buf, t->access.len) < 0)
		(void)0;	/* nowhere left to report a failing stderr */
	t->access.len = 0;
	t->access_flushed_ns = gw_now_ns();
}

/* The formatted second is cached per thread: every access-log line carries a stamp. */
static void gw_access_stamp(struct gw_thread *t, char out[32])
{
	struct timespec ts;
	struct tm tm;
	int ms;

	clock_gettime(CLOCK_REALTIME, &ts);
	if (ts.tv_sec != t->stamp_sec) {
		gmtime_r(&ts.tv_sec, &tm);
		snprintf(t->stamp, sizeof(t->stamp), "%04d-%02d-%02dT%02d:%02d:%02d",
			 tm.tm_year + 1900, (tm.tm_mon + 1) % 100, tm.tm_mday % 100,
			 tm.tm_hour % 100, tm.tm_min % 100, tm.tm_sec % 100);
		t->stamp_sec = ts.tv_sec;
	}
	ms = (int)(ts.tv_nsec / 1000000);
	memcpy(out, t->stamp, 19);
	out[19] = '.';
	out[20] = (char)('0' + ms / 100);
	out[21] = (char)('0' + ms / 10 % 10);
	out[22] = (char)('0' + ms % 10);
	out[23] = 'Z';
	out[24] = '\0';
}

static void gw_add_uint(struct strbuf *sb, uint64_t v)
{
	char buf[24];
	int i = sizeof(buf);

	do
		buf[--i] = (char)('0' + v % 10);
	while ((v /= 10));
	sb_add(sb, buf + i, sizeof(buf) - (size_t)i);
}

/* Milliseconds with three decimals, from nanoseconds. */
static void gw_add_ms(struct strbuf *sb, uint64_t ns)
{
	uint64_t us = ns / 1000;
	char frac[4] = { (char)('0' + us / 100 % 10), (char)('0' + us / 10 % 10),
			 (char)('0' + us % 10), 0 };

	gw_add_uint(sb, us / 1000);
	sb_add(sb, ".", 1);
	sb_add(sb, frac, 3);
}

static void gw_access_json(struct strbuf *sb, const struct gw_access *a, const char *ts)
{
	sb_printf(sb, "{\"ts\":\"%s\",\"level\":\"info\",\"msg\":\"access\","
		  "\"request_id\":\"%s\",\"method\":", ts, a->request_id);
	sb_json_str(sb, a->method, a->method_len);
	sb_adds(sb, ",\"path\":");
	sb_json_str(sb, a->path, a->path_len);
	sb_printf(sb, ",\"status\":%d,\"bytes\":%zu,\"ms\":%.3f,\"function\":"
		  "\"%s\",\"tier\":\"%s\",\"cold\":%s}\n", a->status, a->bytes,
		  (double)(gw_now_ns() - a->start_ns) / 1e6, a->fn, a->tier,
		  a->cold ? "true" : "false");
}

/* Text lines are assembled by hand: this runs once per request. */
static void gw_access_text(struct strbuf *sb, const struct gw_access *a, const char *ts)
{
	sb_adds(sb, ts);
	sb_adds(sb, " info  access ");
	sb_adds(sb, a->request_id);
	sb_add(sb, " ", 1);
	sb_add(sb, a->method, a->method_len);
	sb_add(sb, " ", 1);
	sb_add(sb, a->path, a->path_len);
	sb_add(sb, " ", 1);
	gw_add_uint(sb, (uint64_t)a->status);
	sb_add(sb, " ", 1);
	gw_add_uint(sb, a->bytes);
	sb_add(sb, "B ", 2);
	gw_add_ms(sb, gw_now_ns() - a->start_ns);
	sb_adds(sb, "ms fn=");
	sb_adds(sb, a->fn);
	sb_adds(sb, " tier=");
	sb_adds(sb, a->tier);
	sb_adds(sb, a->cold ? " cold\n" : "\n");
}

void gw_access_log(struct gw_thread *t, const struct gw_access *a)
{
	char ts[32];

	if (!log_enabled(LOG_INFO))
		return;
	gw_access_stamp(t, ts);
	if (t->gw->cfg->log_json)
		gw_access_json(&t->access, a, ts);
	else
		gw_access_text(&t->access, a, ts);
	if (t->access.len >= GW_ACCESS_FLUSH_BYTES)
		gw_access_flush(t);
}

static void gw_on_accept(h2o_socket_t *listener, const char *err)
{
	struct gw_thread *t = listener->data;
	h2o_socket_t *sock;

	if (err)
		return;
	sock = h2o_evloop_socket_accept(listener);
	if (sock)
		h2o_accept(&t->accept, sock);
}

static int gw_listen_fd(const struct sockaddr_storage *ss, socklen_t len, int reuseport)
{
	int fd, one = 1, ret;

	fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (reuseport)
		setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)ss, len) || listen(fd, SOMAXCONN)) {
		ret = -errno;
		close(fd);
		return ret;
	}
	return fd;
}

/*
 * One SO_REUSEPORT socket per loop thread lets the kernel spread connections evenly.
 * Because SO_REUSEPORT would also let a second daemon share the port, the address is
 * first bound once without it: if that fails, the port is taken.
 */
static int gw_listen_all(struct gw *gw, int *fds)
{
	struct sockaddr_storage ss;
	char why[512];
	socklen_t len;
	int i, probe, ret = daemon_parse_listen(gw->cfg->listen, &ss, &len, why, sizeof(why));

	if (ret) {
		log_error("--listen %s", why);
		return ret;
	}
	probe = gw_listen_fd(&ss, len, 0);
	if (probe < 0)
		return probe;
	close(probe);
	for (i = 0; i < gw->nthreads; i++) {
		fds[i] = gw_listen_fd(&ss, len, 1);
		if (fds[i] < 0) {
			ret = fds[i];
			while (i--)
				close(fds[i]);
			return ret;
		}
	}
	return 0;
}

static void gw_stop_accepting(struct gw_thread *t)
{
	if (!t->listener)
		return;
	h2o_socket_read_stop(t->listener);
	h2o_socket_close(t->listener);
	t->listener = NULL;
	h2o_context_request_shutdown(&t->ctx);
}

static void gw_on_ctl(h2o_multithread_receiver_t *rx, h2o_linklist_t *messages)
{
	struct gw_thread *t = H2O_STRUCT_FROM_MEMBER(struct gw_thread, ctl_rx, rx);

	while (!h2o_linklist_is_empty(messages)) {
		h2o_multithread_message_t *m =
			H2O_STRUCT_FROM_MEMBER(h2o_multithread_message_t, link, messages->next);

		h2o_linklist_unlink(&m->link);
		free(m);
	}
	t->stopping = 1;
	gw_stop_accepting(t);
}

/*
 * Done when nothing is in flight and every connection closed, or the grace ran out.
 * Idle keep-alive connections get a short linger to close on their own, then go.
 */
static int gw_drained(struct gw_thread *t, uint64_t deadline, uint64_t *idle_since)
{
	uint64_t now = gw_now_ns();

	if (now >= deadline)
		return 1;
	if (atomic_load(&t->gw->inflight)) {
		*idle_since = 0;
		return 0;
	}
	if (h2o_linklist_is_empty(&t->ctx.http1._conns))
		return 1;
	if (!*idle_since)
		*idle_since = now;
	return now - *idle_since > GW_LINGER_NS;
}

/*
 * Runs on the loop thread itself: h2o keeps its buffer recycling lists in thread-local
 * storage and every socket remembers the list of the thread that created it, so a
 * loop, its queue and its listener built on another thread would share that thread's
 * lists with no lock (heap corruption under load).
 */
static void gw_thread_init(struct gw_thread *t)
{
	struct gw *gw = t->gw;

	t->loop = h2o_evloop_create();
	h2o_context_init(&t->ctx, t->loop, &gw->h2o);
	t->accept.ctx = &t->ctx;
	t->accept.hosts = gw->h2o.hosts;
	t->queue = h2o_multithread_create_queue(t->loop);
	h2o_multithread_register_receiver(t->queue, &t->done_rx, gw_on_done);
	h2o_multithread_register_receiver(t->queue, &t->ctl_rx, gw_on_ctl);
	t->listener = h2o_evloop_socket_create(t->loop, t->listen_fd, H2O_SOCKET_FLAG_DONT_READ);
	t->listener->data = t;
	h2o_socket_read_start(t->listener, gw_on_accept);
	t->access_flushed_ns = gw_now_ns();
}

/* MemAvailable from /proc/meminfo, in MiB; -1 if unknown. */
static long gw_mem_available_mb(void)
{
	char line[128];
	long kb = -1;
	FILE *f = fopen("/proc/meminfo", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb < 0 ? -1 : kb / 1024;
}

/*
 * Loop thread 0 samples host memory a few times a second; while less than
 * --min-free-mb is available, new function requests get 503 (the tiers evict idle
 * instances under their own budgets before this point).
 */
static void gw_update_memory(struct gw *gw)
{
	long avail = gw_mem_available_mb();

	atomic_store(&gw->mem_available_mb, avail);
	atomic_store(&gw->low_memory, avail >= 0 && (uint64_t)avail < gw->min_free_mb);
}

static void gw_sample_memory(struct gw_thread *t)
{
	uint64_t now = gw_now_ns();

	if (t->index || now - t->mem_sampled_ns < GW_MEM_SAMPLE_NS)
		return;
	t->mem_sampled_ns = now;
	gw_update_memory(t->gw);
}

void gw_health_get(struct gw *gw, struct gw_health *h)
{
	h->accepting = !atomic_load(&gw->low_memory);
	h->reason = h->accepting ? NULL : "host_out_of_memory";
	h->mem_available_mb = atomic_load(&gw->mem_available_mb);
	h->min_free_mb = gw->min_free_mb;
}

/*
 * Health stays 200 while the daemon runs (liveness), and says whether function
 * requests are admitted: a host short of memory answers them all 503.
 */
void gw_health_json(struct gw *gw, struct strbuf *sb)
{
	struct gw_health h;

	gw_health_get(gw, &h);
	sb_printf(sb, "{\"ok\":true,\"accepting\":%s", h.accepting ? "true" : "false");
	if (h.reason)
		sb_printf(sb, ",\"reason\":\"%s\",\"message\":\"the host has %lld MiB of "
			  "memory available, under the %llu MiB floor (STOKE_MIN_FREE_MB): "
			  "function requests get 503\"", h.reason, h.mem_available_mb,
			  (unsigned long long)h.min_free_mb);
	sb_printf(sb, ",\"mem_available_mb\":%lld,\"min_free_mb\":%llu}\n",
		  h.mem_available_mb, (unsigned long long)h.min_free_mb);
}

static void *gw_thread_main(void *arg)
{
	struct gw_thread *t = arg;
	uint64_t deadline = 0, idle_since = 0;

	pthread_setname_np(pthread_self(), "gw-loop");
	gw_thread_init(t);
	pthread_barrier_wait(&t->gw->ready);	/* gw_signal_threads needs ctl_rx */
	for (;;) {
		h2o_evloop_run(t->loop, 100);
		if (t->access.len && gw_now_ns() - t->access_flushed_ns > GW_ACCESS_FLUSH_NS)
			gw_access_flush(t);
		gw_sample_memory(t);
		if (!t->stopping)
			continue;
		if (!deadline)
			deadline = gw_now_ns() + (uint64_t)t->gw->cfg->shutdown_grace_ms * 1000000ull;
		if (gw_drained(t, deadline, &idle_since))
			break;
	}
	gw_access_flush(t);
	return NULL;
}

static void gw_register_handler(struct gw *gw)
{
	h2o_hostconf_t *host;
	h2o_pathconf_t *path;
	h2o_handler_t *handler;

	host = h2o_config_register_host(&gw->h2o, h2o_iovec_init(H2O_STRLIT("default")), 65535);
	gw_register_fallback_filter(host);
	path = h2o_config_register_path(host, "/", 0);
	handler = h2o_create_handler(path, sizeof(*handler));
	handler->on_req = gw_on_req;
}

static void gw_signal_threads(struct gw *gw)
{
	int i;

	atomic_store(&gw->stopping, 1);
	for (i = 0; i < gw->nthreads; i++) {
		h2o_multithread_message_t *m = calloc(1, sizeof(*m));

		if (m)
			h2o_multithread_send_message(&gw->threads[i].ctl_rx, m);
	}
}

static int gw_wait_signal(void)
{
	sigset_t set;
	int sig = 0;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigwait(&set, &sig);
	return sig;
}

static int gw_start_threads(struct gw *gw)
{
	int i, ret, *fds = calloc((size_t)gw->nthreads, sizeof(*fds));

	if (!fds)
		return -ENOMEM;
	ret = gw_listen_all(gw, fds);
	if (!ret)
		pthread_barrier_init(&gw->ready, NULL, (unsigned)gw->nthreads + 1);
	for (i = 0; !ret && i < gw->nthreads; i++) {
		gw->threads[i].gw = gw;
		gw->threads[i].index = i;
		gw->threads[i].listen_fd = fds[i];
		pthread_create(&gw->threads[i].tid, NULL, gw_thread_main, &gw->threads[i]);
	}
	free(fds);
	if (!ret)
		pthread_barrier_wait(&gw->ready);
	return ret;
}

int gw_run(struct gw *gw)
{
	unsigned long long n;
	int i, ret, sig;

	gw_register_handler(gw);
	gw_update_memory(gw);	/* health is right from the first request */
	gw->threads = calloc((size_t)gw->nthreads, sizeof(*gw->threads));
	if (!gw->threads)
		return -ENOMEM;
	ret = gw_start_threads(gw);
	if (ret) {
		log_error("cannot listen on %s: %s%s", gw->cfg->listen, strerror(-ret),
			  ret == -EADDRINUSE ? " (another process uses it: stop it, or choose "
			  "another address with --listen HOST:PORT)" : "");
		return ret;
	}
	log_info("stoke listening on http://%s (data %s, %d loop threads)", gw->cfg->listen,
		 gw->cfg->data_dir, gw->nthreads);
	sig = gw_wait_signal();
	n = atomic_load(&gw->inflight);
	log_info("%s: finishing %llu in-flight request%s (at most %u ms), then exiting",
		 strsignal(sig), n, n == 1 ? "" : "s", gw->cfg->shutdown_grace_ms);
	gw_signal_threads(gw);
	for (i = 0; i < gw->nthreads; i++)
		pthread_join(gw->threads[i].tid, NULL);
	return 0;
}
