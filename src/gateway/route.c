/*
 * The request path: route a request to a function (or the admin API), hand it to a
 * tier as a struct inv, and write the answer when the tier hands it back through the
 * loop thread's message queue. Runs on the event-loop threads only.
 */
#include "gateway.h"
#include "manifest.h"
#include "server.h"
#include "sched/meter.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define GW_MAX_HEADER_BYTES (64 * 1024)

/* Ties an invocation to its h2o request; the request may die first (client gone). */
struct gw_inv {
	struct inv inv;		/* first, so inv_free() frees the whole */
	h2o_multithread_message_t msg;
	struct gw_thread *thread;
	h2o_req_t *req;		/* NULL once the request's memory is gone */
	struct gw_inv **slot;	/* lives in the request's pool */
	struct gw_entry *entry;	/* stats; NULL for the admin API */
	int responded;
};

static const char gw_json[] = "application/json";

/* RFC 9110 section 15 reason phrases; HTTP/1.1 clients show them to people. */
static const char *gw_reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 201: return "Created";
	case 204: return "No Content";
	case 301: return "Moved Permanently";
	case 302: return "Found";
	case 304: return "Not Modified";
	case 307: return "Temporary Redirect";
	case 308: return "Permanent Redirect";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 413: return "Content Too Large";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 507: return "Insufficient Storage";
	default: return status < 300 ? "OK" : status < 400 ? "Redirect" :
			status < 500 ? "Client Error" : "Server Error";
	}
}

void gw_send_json(h2o_req_t *req, int status, const char *body, size_t len)
{
	static h2o_generator_t gen = { NULL, NULL };
	h2o_iovec_t buf = h2o_strdup(&req->pool, body, len);

	req->res.status = status;
	req->res.reason = gw_reason(status);
	req->res.content_length = len;
	h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, gw_json,
		       sizeof(gw_json) - 1);
	h2o_start_response(req, &gen);
	h2o_send(req, &buf, 1, H2O_SEND_STATE_FINAL);
}

/* 16 hex digits: a per-process random prefix and a counter, unique within a run and
 * unlikely to repeat across restarts. Formatted by hand: this runs per request. */
static void gw_new_request_id(char *buf)
{
	static const char hex[] = "0123456789abcdef";
	static atomic_uint_fast64_t counter;
	static uint32_t boot;
	uint64_t id;
	int i;

	if (!boot)
		boot = (uint32_t)(gw_now_ns() ^ (uint64_t)getpid() << 16) | 1;
	id = (uint64_t)boot << 32 | (atomic_fetch_add(&counter, 1) & 0xffffffffu);
	for (i = 15; i >= 0; i--, id >>= 4)
		buf[i] = hex[id & 15];
	buf[16] = '\0';
}

/*
 * The JSON body of an error stoke itself produces, in sb, with a request id added to
 * the response headers; the refusal is logged too (a failed admin login must not be
 * invisible).
 */
static void gw_error_body(h2o_req_t *req, int status, const char *kind, const char *msg,
			  struct strbuf *sb)
{
	char *rid = h2o_mem_alloc_pool(&req->pool, 17);

	gw_new_request_id(rid);
	h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-stoke-request-id"),
			      0, NULL, rid, 16);
	inv_error_json(sb, kind, msg, rid);
	gw_access_log(gw_thread_of(req->conn->ctx), &(struct gw_access){
		.request_id = rid,
		.method = req->input.method.base, .method_len = req->input.method.len,
		.path = req->input.path.base, .path_len = req->input.path.len,
		.fn = "-", .tier = "-", .status = status, .bytes = sb->len,
		.start_ns = gw_now_ns(),
	});
}

/* Answers an error stoke itself produces: always a JSON body and a request id. */
void gw_send_error(h2o_req_t *req, int status, const char *kind, const char *msg)
{
	struct strbuf sb = STRBUF_INIT;

	gw_error_body(req, status, kind, msg, &sb);
	if (sb_failed(&sb))
		h2o_send_error_generic(req, 500, "Internal Server Error", "out of memory\n", 0);
	else
		gw_send_json(req, status, sb.buf, sb.len);
	sb_free(&sb);
}

static int gw_is_admin(const h2o_req_t *req)
{
	const h2o_iovec_t *p = &req->input.path;

	return p->len >= 7 && !memcmp(p->base, "/_stoke", 7) &&
	       (p->len == 7 || p->base[7] == '/' || p->base[7] == '?');
}

/* The body's size: what was read, else what Content-Length announced; 0 if unknown. */
static size_t gw_body_size(const h2o_req_t *req)
{
	ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_CONTENT_LENGTH, -1);
	size_t n;

	if (req->entity.len || i < 0)
		return req->entity.len;
	n = h2o_strtosize(req->headers.entries[i].value.base, req->headers.entries[i].value.len);
	return n == SIZE_MAX ? 0 : n;
}

/* The 413 for a body over its limit: deploys (the admin API) and function requests
 * have a limit each, and the message names it and the flag that sets it. */
static void gw_too_large(const struct gw *gw, const h2o_req_t *req, const char **kind,
			 char *msg, size_t size)
{
	int admin = gw_is_admin(req);
	size_t limit = admin ? gw->cfg->max_deploy : gw->cfg->max_body, n = gw_body_size(req);
	char got[48] = "";

	if (n)
		snprintf(got, sizeof(got), " of %zu bytes", n);
	*kind = admin ? "deploy_too_large" : "body_too_large";
	snprintf(msg, size, admin ? "the request%s is over this daemon's deploy limit of %zu "
		 "bytes (stoke serve --max-deploy; file contents count 4/3 of their size, "
		 "as base64)" : "the request body%s is over this daemon's limit of %zu bytes "
		 "(stoke serve --max-body)", got, limit);
}

static void gw_send_too_large(const struct gw *gw, h2o_req_t *req)
{
	const char *kind;
	char msg[256];

	gw_too_large(gw, req, &kind, msg, sizeof(msg));
	gw_send_error(req, 413, kind, msg);
}

/* Sends the JSON body instead of whatever h2o sends, once. */
struct gw_json_413 {
	h2o_ostream_t super;
	h2o_iovec_t body;
};

static void gw_json_413_send(h2o_ostream_t *self, h2o_req_t *req, h2o_iovec_t *bufs,
			     size_t n, h2o_send_state_t state)
{
	struct gw_json_413 *o = (struct gw_json_413 *)self;
	h2o_iovec_t body = o->body;

	o->body.len = 0;
	h2o_ostream_send_next(self, req, &body, n && body.len ? 1 : 0, state);
}

/*
 * h2o refuses a body over max_request_entity_size itself, before any handler runs
 * (from Content-Length at once, or while reading a chunked body), with a plain-text
 * 413 bound to the host's fallback path. This filter sits there and turns that answer
 * into stoke's JSON error, so every 413 names the limit.
 */
static void gw_on_fallback_response(h2o_filter_t *self, h2o_req_t *req, h2o_ostream_t **slot)
{
	struct strbuf sb = STRBUF_INIT;
	struct gw_json_413 *o;
	const char *kind;
	char msg[256];

	if (req->res.status != 413)
		goto next;
	gw_too_large(gw_thread_of(req->conn->ctx)->gw, req, &kind, msg, sizeof(msg));
	gw_error_body(req, 413, kind, msg, &sb);
	if (sb_failed(&sb))
		goto next;
	o = (struct gw_json_413 *)h2o_add_ostream(req, sizeof(*o), slot);
	o->super.do_send = gw_json_413_send;
	o->body = h2o_strdup(&req->pool, sb.buf, sb.len);
	req->res.content_length = sb.len;
	h2o_set_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, gw_json,
		       sizeof(gw_json) - 1, 1);
	slot = &o->super.next;
next:
	sb_free(&sb);
	h2o_setup_next_ostream(req, slot);
}

void gw_register_fallback_filter(h2o_hostconf_t *host)
{
	h2o_filter_t *f = h2o_create_filter(&host->fallback_path, sizeof(*f));

	f->on_setup_ostream = gw_on_fallback_response;
}

static void gw_on_req_dispose(void *p)
{
	struct gw_inv *gi = *(struct gw_inv **)p;

	if (!gi)
		return;
	if (gi->responded) {
		inv_free(&gi->inv);
		return;
	}
	gi->req = NULL;		/* still running: gw_finish frees it */
	gi->slot = NULL;
}

static void gw_post_done(struct inv *inv)
{
	struct gw_inv *gi = (struct gw_inv *)inv;

	h2o_multithread_send_message(&gi->thread->done_rx, &gi->msg);
}

/*
 * The copy of a request the tier gets lives in the same allocation as its gw_inv:
 * the header array, then every string NUL-terminated. One malloc per request instead
 * of two per header and five more, on a path that runs for every request.
 */
struct gw_packer {
	char *p;
};

static const char *gw_pack(struct gw_packer *k, const char *s, size_t len)
{
	char *d = k->p;

	if (len)
		memcpy(d, s, len);
	d[len] = '\0';
	k->p += len + 1;
	return d;
}

static void gw_pack_header(struct inv_request *r, struct gw_packer *k, const char *name,
			   size_t nlen, const char *value, size_t vlen)
{
	struct kv *kv = &r->headers[r->nheaders++];

	kv->name = (char *)gw_pack(k, name, nlen);
	kv->value = (char *)gw_pack(k, value, vlen);
	kv->name_len = nlen;
	kv->value_len = vlen;
}

/* The authority the function's URL carries; HTTP/1.0 requests may have none. */
static h2o_iovec_t gw_host(const h2o_req_t *req)
{
	return req->input.authority.len ? req->input.authority :
	       h2o_iovec_init(H2O_STRLIT("localhost"));
}

/* Bytes the packed request takes after its gw_inv (see gw_fill_request). */
static size_t gw_request_size(const h2o_req_t *req, size_t plen)
{
	size_t i, n = sizeof("http://") + gw_host(req).len + plen;

	n += req->input.method.len + 1 + 2 * (plen + 1) + req->entity.len + 1;
	n += (req->headers.size + 1) * sizeof(struct kv) + req->input.authority.len + 6;
	for (i = 0; i < req->headers.size; i++)
		n += req->headers.entries[i].name->len + req->headers.entries[i].value.len + 2;
	return n;
}

/*
 * path is what the function sees (starting with '/'), with the query if any; mem has
 * gw_request_size() bytes, aligned for struct kv. h2o keeps Host out of req->headers
 * (it is the authority); the function sees it.
 */
static void gw_fill_request(struct inv_request *r, const h2o_req_t *req, const char *path,
			    size_t plen, char *mem)
{
	const char *q = memchr(path, '?', plen);
	size_t path_len = q ? (size_t)(q - path) : plen, i;
	h2o_iovec_t host = gw_host(req);
	struct gw_packer k;

	r->headers = (struct kv *)mem;
	k.p = mem + (req->headers.size + 1) * sizeof(struct kv);
	r->url = k.p;
	memcpy(k.p, "http://", 7);
	memcpy(k.p + 7, host.base, host.len);
	k.p += 7 + host.len;
	gw_pack(&k, path, plen);
	r->method = gw_pack(&k, req->input.method.base, req->input.method.len);
	r->path = gw_pack(&k, path, path_len);
	r->query = q ? gw_pack(&k, q + 1, plen - path_len - 1) : gw_pack(&k, "", 0);
	r->body = gw_pack(&k, req->entity.base ? req->entity.base : "", req->entity.len);
	r->body_len = req->entity.len;
	if (req->input.authority.len)
		gw_pack_header(r, &k, "host", 4, req->input.authority.base,
			       req->input.authority.len);
	for (i = 0; i < req->headers.size; i++) {
		const h2o_header_t *h = &req->headers.entries[i];

		gw_pack_header(r, &k, h->name->base, h->name->len, h->value.base, h->value.len);
	}
}

static struct gw_inv *gw_inv_new(struct gw_thread *t, h2o_req_t *req, const char *path,
				 size_t plen)
{
	size_t head = (sizeof(struct gw_inv) + _Alignof(struct kv) - 1) &
		      ~(_Alignof(struct kv) - 1);
	struct gw_inv *gi = malloc(head + gw_request_size(req, plen));

	if (!gi)
		return NULL;
	memset(gi, 0, sizeof(*gi));
	gi->thread = t;
	gi->req = req;
	gi->inv.on_done = gw_post_done;
	gi->inv.start_ns = gw_now_ns();
	gi->inv.req_packed = 1;
	gw_new_request_id(gi->inv.request_id);
	gw_fill_request(&gi->inv.req, req, path, plen, (char *)gi + head);
	gi->slot = h2o_mem_alloc_shared(&req->pool, sizeof(*gi->slot), gw_on_req_dispose);
	*gi->slot = gi;
	return gi;
}

/*
 * h2o's HTTP/1 code stops reading a connection while its request is served and starts
 * again once the answer is sent. When the answer comes back from another thread, the
 * loop applies both changes and each is an epoll_ctl (the connection is removed from
 * epoll and added back: about 15 % of a loop thread under load). Reading stays on
 * instead; bytes that arrive meanwhile (a pipelined request, the client closing) stop
 * it, and stay in the socket's buffer, where h2o looks first when it starts reading
 * the next request (lib/http1.c, reqread_start).
 */
static void gw_hold_on_read(h2o_socket_t *sock, const char *err)
{
	h2o_socket_read_stop(sock);
}

static void gw_keep_reading(h2o_req_t *req)
{
	h2o_socket_t *sock;

	/* HTTP/2 multiplexes requests on one socket its own code reads. */
	if (req->version >= 0x200 || !req->conn->callbacks->get_socket)
		return;
	sock = req->conn->callbacks->get_socket(req->conn);
	if (sock && !h2o_socket_is_reading(sock))
		h2o_socket_read_start(sock, gw_hold_on_read);
}

static void gw_dispatch(struct gw_thread *t, h2o_req_t *req, struct tier *tier,
			struct fn *fn, struct gw_entry *e, const char *path, size_t plen)
{
	struct gw_inv *gi = gw_inv_new(t, req, path, plen);

	if (!gi) {
		fn_unref(fn);
		gw_send_error(req, 503, "overloaded", "out of memory for this request");
		return;
	}
	gi->inv.fn = fn;
	gi->entry = e;
	atomic_fetch_add(&t->gw->inflight, 1);
	atomic_fetch_add(&t->gw->requests, 1);
	gw_keep_reading(req);
	tier->ops->invoke(tier, &gi->inv);
}

static int gw_headers_too_big(const h2o_req_t *req)
{
	size_t i, total = req->input.path.len;

	for (i = 0; i < req->headers.size; i++)
		total += req->headers.entries[i].name->len + req->headers.entries[i].value.len + 4;
	return total > GW_MAX_HEADER_BYTES;
}

/*
 * Host: NAME.<domain>[:port] routes to NAME with the path unchanged. Host names are
 * case-insensitive and may end with the root's dot (RFC 9110 section 4.2.3).
 */
static int gw_route_host(const struct gw *gw, const h2o_req_t *req, char *name, size_t *len)
{
	const char *host = req->input.authority.base, *colon, *dot;
	size_t hlen = req->input.authority.len, dlen = strlen(gw->cfg->domain), i;

	if (!hlen || host[0] == '[')
		return 0;
	colon = memchr(host, ':', hlen);
	if (colon)
		hlen = (size_t)(colon - host);
	if (hlen && host[hlen - 1] == '.')
		hlen--;
	dot = memchr(host, '.', hlen);
	if (!dot || hlen - (size_t)(dot + 1 - host) != dlen ||
	    strncasecmp(dot + 1, gw->cfg->domain, dlen) || dot - host > 63)
		return 0;
	*len = (size_t)(dot - host);
	for (i = 0; i < *len; i++)
		name[i] = (char)tolower((unsigned char)host[i]);
	return 1;
}

/*
 * RFC 9112 section 3.2: Host is uri-host[:port]; anything else is a 400, since it goes
 * into the URL the function parses.
 */
static int gw_valid_authority(const h2o_iovec_t *a)
{
	static const char extra[] = "-._~%!$&'()*+,;=";
	const char *s = a->base, *end = a->base + a->len, *colon = NULL;
	unsigned long port;

	if (a->len && s[0] == '[') {	/* IP-literal */
		const char *close = memchr(s, ']', a->len);

		if (!close)
			return 0;
		for (s++; s < close; s++)
			if (!isxdigit((unsigned char)*s) && *s != ':' && *s != '.')
				return 0;
		s = close + 1;
		if (s < end && *s != ':')
			return 0;
		colon = s < end ? s : NULL;
	} else {
		for (; s < end && *s != ':'; s++)
			if (!isalnum((unsigned char)*s) && (!*s || !strchr(extra, *s)))
				return 0;
		colon = s < end ? s : NULL;
	}
	if (!colon)
		return 1;
	for (s = colon + 1, port = 0; s < end; s++) {
		if (!isdigit((unsigned char)*s) || (port = port * 10 + (unsigned)(*s - '0')) > 65535)
			return 0;
	}
	return 1;
}

/*
 * RFC 9112 section 3.2.2: a server must accept the absolute form
 * (GET http://host/path); its authority then replaces Host.
 */
static void gw_absolute_form(h2o_req_t *req)
{
	h2o_iovec_t *p = &req->input.path;
	const char *a, *end = p->base + p->len, *s;
	size_t skip = 0;

	if (p->len > 7 && !strncasecmp(p->base, "http://", 7))
		skip = 7;
	else if (p->len > 8 && !strncasecmp(p->base, "https://", 8))
		skip = 8;
	if (!skip)
		return;
	a = p->base + skip;
	for (s = a; s < end && *s != '/' && *s != '?'; s++)
		;
	req->input.authority = h2o_iovec_init(a, (size_t)(s - a));
	if (s < end && *s == '/') {
		*p = h2o_iovec_init(s, (size_t)(end - s));
	} else {
		char *np = h2o_mem_alloc_pool(&req->pool, (size_t)(end - s) + 1);

		np[0] = '/';
		memcpy(np + 1, s, (size_t)(end - s));
		*p = h2o_iovec_init(np, (size_t)(end - s) + 1);
	}
}

/* /fn/NAME/rest routes to NAME, which sees /rest. */
static int gw_route_path(const h2o_req_t *req, const char **name, size_t *len,
			 const char **rest, size_t *rlen)
{
	const char *p = req->input.path.base, *end = p + req->input.path.len, *s;

	if (req->input.path.len < 4 || memcmp(p, "/fn/", 4))
		return 0;
	p += 4;
	for (s = p; s < end && *s != '/' && *s != '?'; s++)
		;
	*name = p;
	*len = (size_t)(s - p);
	*rest = s;
	*rlen = (size_t)(end - s);
	return 1;
}

/*
 * Admission: at most max_instances x concurrency requests run and `queue` more wait
 * (in the tier); beyond that the caller is told to come back rather than left hanging.
 */
static int gw_admit(struct gw_entry *e, const struct fn *fn)
{
	uint64_t cap = (uint64_t)fn->limits.max_instances * fn->limits.concurrency +
		       fn->limits.queue;

	if (atomic_fetch_add(&e->inflight, 1) < cap)
		return 1;
	atomic_fetch_sub(&e->inflight, 1);
	return 0;
}

static void gw_send_busy(h2o_req_t *req, const char *name)
{
	char msg[256];

	snprintf(msg, sizeof(msg), "function %s has as many requests running and queued as "
		 "its limits allow (limits.max_instances x concurrency, plus queue); "
		 "retry later", name);
	h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL,
		       H2O_STRLIT("1"));
	gw_send_error(req, 429, "too_many_requests", msg);
}

static void gw_send_not_routed(struct gw *gw, h2o_req_t *req)
{
	char msg[512];

	snprintf(msg, sizeof(msg), "no route: call a function at /fn/NAME/ or with "
		 "Host: NAME.%s; the admin API is under /_stoke/", gw->cfg->domain);
	gw_send_error(req, 404, "not_found", msg);
}

/* Answers the request itself when the function cannot take it now; returns whether. */
static int gw_refused(struct gw *gw, h2o_req_t *req, struct gw_entry *e, const struct fn *fn)
{
	if (req->entity.len > gw->cfg->max_body) {
		gw_send_too_large(gw, req);
		return 1;
	}
	if (atomic_load(&gw->low_memory)) {
		h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_RETRY_AFTER, NULL,
			       H2O_STRLIT("5"));
		gw_send_error(req, 503, "host_out_of_memory", "the host is short of memory; "
			      "retry later");
		return 1;
	}
	if (!gw_admit(e, fn)) {
		gw_send_busy(req, e->name);
		return 1;
	}
	return 0;
}

static void gw_route_fn(struct gw_thread *t, h2o_req_t *req, const char *name, size_t len,
			const char *path, size_t plen)
{
	struct gw *gw = t->gw;
	struct gw_entry *e;
	struct fn *fn;
	char msg[160];

	if (!mf_valid_name(name, len)) {
		gw_send_error(req, 404, "not_found", "not a function name: names are 1-63 "
			      "characters of a-z, 0-9 and '-'");
		return;
	}
	fn = gw_fn_lookup(gw, name, len, &e);
	if (!fn && e && e->load_error) {
		/* The reason (a traceback, host paths) is for the function's owner. */
		snprintf(msg, sizeof(msg), "%.*s could not be loaded when the daemon started; "
			 "stoke show %.*s says why", (int)len, name, (int)len, name);
		gw_send_error(req, 503, "unavailable", msg);
		return;
	}
	if (!fn) {
		snprintf(msg, sizeof(msg), "no function named %.*s", (int)len, name);
		gw_send_error(req, 404, "not_found", msg);
		return;
	}
	if (gw_refused(gw, req, e, fn)) {
		fn_unref(fn);
		return;
	}
	if (!plen) {
		path = "/";
		plen = 1;
	} else if (path[0] == '?') {
		/* /fn/NAME?x=1: the function sees /?x=1 */
		char *p = h2o_mem_alloc_pool(&req->pool, plen + 2);

		p[0] = '/';
		memcpy(p + 1, path, plen);
		path = p;
		plen++;
	}
	gw_dispatch(t, req, &gw->tiers[fn->tier], fn, e, path, plen);
}

static void gw_send_health(struct gw *gw, h2o_req_t *req)
{
	struct strbuf sb = STRBUF_INIT;

	gw_health_json(gw, &sb);
	if (sb_failed(&sb))
		gw_send_error(req, 503, "overloaded", "out of memory for this request");
	else
		gw_send_json(req, 200, sb.buf, sb.len);
	sb_free(&sb);
}

static const char gw_wrong_token[] =
	"wrong token: it is not the one in this daemon's data directory";

/* Returns NULL when the request carries the admin token, else why not (for the 401). */
static const char *gw_unauthorized(const struct gw *gw, const h2o_req_t *req)
{
	ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
	const h2o_iovec_t *v;
	unsigned char diff = 0;
	size_t k, tlen = strlen(gw->token);

	if (i < 0)
		return "no token: admin requests need 'Authorization: Bearer TOKEN' (the "
		       "token is the file 'token' in the daemon's data directory)";
	v = &req->headers.entries[i].value;
	if (v->len < 7 || strncasecmp(v->base, "Bearer ", 7))
		return "the Authorization header must be 'Bearer TOKEN'";
	if (v->len != 7 + tlen)
		return gw_wrong_token;
	for (k = 0; k < tlen; k++)	/* constant time: no early exit on a mismatch */
		diff |= (unsigned char)(v->base[7 + k] ^ gw->token[k]);
	return diff ? gw_wrong_token : NULL;
}

static void gw_route_admin(struct gw_thread *t, h2o_req_t *req)
{
	struct gw *gw = t->gw;
	int get = h2o_memis(req->input.method.base, req->input.method.len, H2O_STRLIT("GET"));
	const char *why;

	/* Health is answered here: it must stay quick whatever the admin threads do. */
	if (h2o_memis(req->input.path.base, req->input.path.len, H2O_STRLIT("/_stoke/health"))) {
		gw_send_health(gw, req);
		return;
	}
	if ((why = gw_unauthorized(gw, req))) {
		gw_send_error(req, 401, "unauthorized", why);
		return;
	}
	if (req->entity.len > gw->cfg->max_deploy) {
		gw_send_too_large(gw, req);
		return;
	}
	gw_dispatch(t, req, get ? &gw->admin_read : &gw->admin, NULL, NULL,
		    req->input.path.base, req->input.path.len);
}

int gw_on_req(h2o_handler_t *self, h2o_req_t *req)
{
	struct gw_thread *t = gw_thread_of(req->conn->ctx);
	const char *name, *rest;
	char host_name[64];
	size_t len, rlen;

	if (gw_headers_too_big(req)) {
		gw_send_error(req, 431, "headers_too_large", "request headers over 64 KiB");
		return 0;
	}
	gw_absolute_form(req);
	if (req->version >= 0x101 && !req->input.authority.len) {
		/* RFC 9112 section 3.2: an HTTP/1.1 request without Host is a 400. */
		gw_send_error(req, 400, "bad_host", "HTTP/1.1 requests need a Host header");
		return 0;
	}
	if (!gw_valid_authority(&req->input.authority)) {
		gw_send_error(req, 400, "bad_host", "the Host header is not a valid host[:port]");
		return 0;
	}
	if (gw_route_host(t->gw, req, host_name, &len))
		gw_route_fn(t, req, host_name, len, req->input.path.base, req->input.path.len);
	else if (gw_is_admin(req))
		gw_route_admin(t, req);
	else if (gw_route_path(req, &name, &len, &rest, &rlen))
		gw_route_fn(t, req, name, len, rest, rlen);
	else
		gw_send_not_routed(t->gw, req);
	return 0;
}

static int gw_hop_by_hop(const struct kv *h)
{
	static const struct { const char *s; size_t len; } names[] = {
		{ H2O_STRLIT("connection") }, { H2O_STRLIT("content-length") },
		{ H2O_STRLIT("keep-alive") }, { H2O_STRLIT("transfer-encoding") },
		{ H2O_STRLIT("upgrade") }, { H2O_STRLIT("proxy-connection") },
	};
	size_t i;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (h->name_len == names[i].len && !strncasecmp(h->name, names[i].s, h->name_len))
			return 1;
	}
	return 0;
}

/* RFC 9110 section 5.6.2: a field name is a token. A table: this runs for every
 * header of every response. */
static int gw_valid_name(const char *s, size_t len)
{
	static const char tchar[] = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
				    "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
	static _Thread_local unsigned char table[256];
	size_t i;

	if (!table['a'])
		for (i = 0; tchar[i]; i++)
			table[(unsigned char)tchar[i]] = 1;
	for (i = 0; i < len; i++)
		if (!table[(unsigned char)s[i]])
			return 0;
	return len > 0;
}

/* RFC 9110 section 5.5: no CR, LF or NUL in a field value (they would split it). */
static int gw_valid_value(const char *s, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0')
			return 0;
	return 1;
}

/*
 * A function's answer is untrusted: a final status outside 200-599 or a header that
 * would split the response becomes a 502 here, whatever the tier let through.
 */
static void gw_check_response(struct inv *inv)
{
	struct inv_response *r = &inv->resp;
	size_t i, total = 0;

	if (r->status < 200 || r->status > 599) {
		inv_fail(inv, 502, "bad_response", "the function answered status %d; a final "
			 "status is 200-599", r->status);
		return;
	}
	for (i = 0; i < r->nheaders; i++) {
		const struct kv *h = &r->headers[i];

		total += h->name_len + h->value_len;
		if (total > GW_MAX_HEADER_BYTES) {
			inv_fail(inv, 502, "bad_response", "the function answered over 64 KiB of "
				 "headers");
			return;
		}
		if (gw_valid_name(h->name, h->name_len) && gw_valid_value(h->value, h->value_len))
			continue;
		inv_fail(inv, 502, "bad_response", "the function answered an invalid header "
			 "(a name must be a token; a value may not hold CR, LF or NUL)");
		return;
	}
}

/* RFC 9110 sections 9.3.2, 15.3.5, 15.4.5: HEAD, 204 and 304 answers carry no content. */
static int gw_no_content(const h2o_req_t *req, int status)
{
	return status == 204 || status == 304 ||
	       h2o_memis(req->input.method.base, req->input.method.len, H2O_STRLIT("HEAD"));
}

static void gw_respond(struct gw_inv *gi)
{
	static h2o_generator_t gen = { NULL, NULL };
	h2o_req_t *req = gi->req;
	struct inv_response *r = &gi->inv.resp;
	h2o_iovec_t body = h2o_iovec_init(r->body ? r->body : "", r->body_len);
	size_t i;

	req->res.status = r->status;
	req->res.reason = gw_reason(r->status);
	req->res.content_length = r->status == 204 || r->status == 304 ? 0 : r->body_len;
	if (gw_no_content(req, r->status))
		body.len = 0;
	for (i = 0; i < r->nheaders; i++) {
		if (gw_hop_by_hop(&r->headers[i]))
			continue;
		h2o_add_header_by_str(&req->pool, &req->res.headers, r->headers[i].name,
				      r->headers[i].name_len, 1, NULL, r->headers[i].value,
				      r->headers[i].value_len);
	}
	h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-stoke-request-id"),
			      0, NULL, gi->inv.request_id, strlen(gi->inv.request_id));
	gi->responded = 1;
	h2o_start_response(req, &gen);
	h2o_send(req, &body, 1, H2O_SEND_STATE_FINAL);
}

static void gw_meter(struct gw *gw, const struct gw_inv *gi, const char *tier)
{
	struct meter_rec rec = {
		.tier = tier,
		.cold = gi->inv.cold,
		.error = gi->inv.resp.status >= 500,
		.wall_us = (gw_now_ns() - gi->inv.start_ns) / 1000,
		.cpu_us = gi->inv.cpu_ns / 1000,
		.memory_mb = gi->inv.fn->limits.memory_mb,
		.peak_kb = gi->inv.peak_mem_bytes >> 10,
	};

	if (!gw->meter)
		return;
	memcpy(rec.function, gi->entry->name, sizeof(rec.function));
	meter_record(gw->meter, &rec);
}

/*
 * An exception's text can hold the tenant's internals (paths, data, stack frames): the
 * caller gets the kind and the request id, the function's logs (where the isolate tier
 * writes every exception) have the text.
 */
static void gw_redact(struct inv *inv)
{
	const char *kind = inv->resp.error_kind;

	if (kind && !strcmp(kind, "exception"))
		inv_fail(inv, inv->resp.status, kind, "the function threw an exception; its "
			 "logs have the details: stoke logs %s", inv->fn->name);
}

static void gw_finish(struct gw_inv *gi)
{
	struct gw *gw = gi->thread->gw;
	const char *tier = gi->inv.fn ? gw->tiers[gi->inv.fn->tier].ops->name : "admin";
	int gone = gi->req == NULL;

	if (!gi->inv.resp.status)
		inv_fail(&gi->inv, 500, "internal", "the tier returned no response");
	else if (gi->inv.fn)
		gw_check_response(&gi->inv);
	if (gi->inv.fn)
		gw_redact(&gi->inv);
	if (gi->entry) {
		gw_stats_record(&gi->entry->stats, gi->inv.resp.status,
				gw_now_ns() - gi->inv.start_ns, gi->inv.cold);
		gw_meter(gw, gi, tier);
		atomic_fetch_sub(&gi->entry->inflight, 1);
	}
	gw_access_log(gi->thread, &(struct gw_access){
		.request_id = gi->inv.request_id,
		.method = gi->inv.req.method, .method_len = strlen(gi->inv.req.method),
		.path = gi->inv.req.path, .path_len = strlen(gi->inv.req.path),
		.fn = gi->entry ? gi->entry->name : "-", .tier = tier,
		.status = gone ? 499 : gi->inv.resp.status, .cold = gi->inv.cold,
		.bytes = gi->inv.resp.body_len, .start_ns = gi->inv.start_ns,
	});
	atomic_fetch_sub(&gw->inflight, 1);
	if (gone) {
		inv_free(&gi->inv);
		return;
	}
	gw_respond(gi);	/* gw_on_req_dispose frees gi once h2o is done with the body */
}

void gw_on_done(h2o_multithread_receiver_t *rx, h2o_linklist_t *messages)
{
	while (!h2o_linklist_is_empty(messages)) {
		h2o_multithread_message_t *m =
			H2O_STRUCT_FROM_MEMBER(h2o_multithread_message_t, link, messages->next);

		h2o_linklist_unlink(&m->link);
		gw_finish(H2O_STRUCT_FROM_MEMBER(struct gw_inv, msg, m));
	}
}
