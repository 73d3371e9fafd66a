/* Event-loop threads: one h2o loop per thread, each with its own SO_REUSEPORT listener. */
#ifndef STOKE_SERVER_H
#define STOKE_SERVER_H

#include "gateway.h"

struct gw_thread {
	h2o_context_t ctx;	/* first: gw_thread_of() maps a context back */
	struct gw *gw;
	int index;
	pthread_t tid;
	h2o_evloop_t *loop;
	h2o_accept_ctx_t accept;
	h2o_socket_t *listener;
	int listen_fd;
	h2o_multithread_queue_t *queue;
	h2o_multithread_receiver_t done_rx;	/* finished invocations */
	h2o_multithread_receiver_t ctl_rx;	/* shutdown */
	struct strbuf access;
	uint64_t access_flushed_ns;
	time_t stamp_sec;	/* the second stamp[] holds */
	uint64_t mem_sampled_ns;
	char stamp[32];
	int stopping;
};

static inline struct gw_thread *gw_thread_of(h2o_context_t *ctx)
{
	return (struct gw_thread *)ctx;
}

void gw_send_json(h2o_req_t *req, int status, const char *body, size_t len);
void gw_send_error(h2o_req_t *req, int status, const char *kind, const char *msg);
/* Makes h2o's own 413 (a body over max_request_entity_size, refused before stoke's
 * handler runs) stoke's JSON error naming the limit. */
void gw_register_fallback_filter(h2o_hostconf_t *host);

#endif
