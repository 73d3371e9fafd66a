/*
 * Invocations on a worker thread: cold starts, then fetch() and ctx.waitUntil() work run
 * in slices, so that while one request waits for a timer the worker serves others.
 * A tenant runs one request at a time; later ones wait in its FIFO. Each slice runs
 * under the watchdog with what is left of the request's CPU budget.
 */
#include "isolate/iso.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stddef.h>

/* Headers and env go to the shim as they are: struct kv and struct iso_kv must match. */
_Static_assert(sizeof(struct kv) == sizeof(struct iso_kv) &&
	       offsetof(struct kv, name) == offsetof(struct iso_kv, name) &&
	       offsetof(struct kv, value) == offsetof(struct iso_kv, value) &&
	       offsetof(struct kv, name_len) == offsetof(struct iso_kv, name_len) &&
	       offsetof(struct kv, value_len) == offsetof(struct iso_kv, value_len),
	       "struct kv and struct iso_kv differ");

enum slice_start { SLICE_CONTINUE, SLICE_CALL };

static uint32_t or_default(uint32_t v, uint32_t def)
{
	return v ? v : def;
}

/* ---- output of the JavaScript: logs and the response ---- */

static void on_log(void *opaque, int is_stderr, const char *msg, size_t len)
{
	struct iso_call *c = opaque;

	fnlog_write(c->fn_name, c->request_id, is_stderr ? "stderr" : "stdout", msg, len);
}

static int on_header(void *opaque, const char *name, size_t nlen, const char *value,
		     size_t vlen)
{
	struct iso_call *c = opaque;

	return c->inv ? inv_resp_add_header(c->inv, name, nlen, value, vlen) : 0;
}

static void on_body(void *opaque, char *body, size_t len)
{
	struct iso_call *c = opaque;

	if (c->inv)
		inv_resp_set_body(c->inv, body, len);
	else
		free(body);
}

static const struct iso_io iso_call_io_template = {
	.log = on_log, .add_header = on_header, .set_body = on_body,
};

struct iso_failure {
	int status;
	const char *kind;
	const char *what;
};

static struct iso_failure failure_of(int rc)
{
	switch (rc) {
	case ISO_CPU_LIMIT:
		return (struct iso_failure){ 503, "cpu_limit", "exceeded its CPU time limit" };
	case ISO_WALL_LIMIT:
		return (struct iso_failure){ 504, "wall_limit", "exceeded its wall time limit" };
	case ISO_MEMORY_LIMIT:
		return (struct iso_failure){ 503, "memory_limit", "exceeded its memory limit" };
	case ISO_STACK_OVERFLOW:
		return (struct iso_failure){ 500, "stack_overflow", "overflowed its stack" };
	case ISO_NO_RESPONSE:
		return (struct iso_failure){ 500, "no_response", "never produced a response" };
	case ISO_BAD_RESPONSE:
		return (struct iso_failure){ 500, "bad_response", "returned no Response" };
	case ISO_NO_HANDLER:
		return (struct iso_failure){ 500, "no_handler", "has no fetch handler" };
	default:
		return (struct iso_failure){ 500, "exception", "threw an exception" };
	}
}

static void count_failure(struct iso_tier *it, int rc)
{
	if (rc == ISO_CPU_LIMIT)
		atomic_fetch_add(&it->kills_cpu, 1);
	else if (rc == ISO_WALL_LIMIT)
		atomic_fetch_add(&it->kills_wall, 1);
	else if (rc == ISO_MEMORY_LIMIT)
		atomic_fetch_add(&it->kills_memory, 1);
	else if (rc == ISO_STACK_OVERFLOW)
		atomic_fetch_add(&it->kills_stack, 1);
	else
		atomic_fetch_add(&it->exceptions, 1);
}

/* A limit leaves the isolate in an unknown state (half-run code, a full heap): the
 * tenant is discarded and the next request gets a fresh isolate. Plain exceptions keep
 * it, as the script's state is still consistent. */
static int is_fatal(int rc)
{
	return rc != ISO_OK && rc != ISO_EXCEPTION && rc != ISO_BAD_RESPONSE &&
	       rc != ISO_NO_RESPONSE;
}

static void fail_call(struct iso_call *c, struct inv *inv, int rc, const char *err)
{
	struct fn *fn = inv->fn;
	struct iso_failure f = failure_of(rc);
	char line[600];
	int n;

	/* Each limit names the manifest field that sets it. */
	if (rc == ISO_CPU_LIMIT)
		n = snprintf(line, sizeof(line), "stoke: the request %s (%u ms, limits.cpu_ms)",
			     f.what, or_default(fn->limits.cpu_ms, ISO_DEFAULT_CPU_MS));
	else if (rc == ISO_WALL_LIMIT)
		n = snprintf(line, sizeof(line), "stoke: the request %s (%u ms, limits.wall_s)",
			     f.what, or_default(fn->limits.wall_ms, ISO_DEFAULT_WALL_MS));
	else if (rc == ISO_MEMORY_LIMIT)
		n = snprintf(line, sizeof(line), "stoke: the request %s (%u MB, "
			     "limits.memory_mb)", f.what,
			     or_default(fn->limits.memory_mb, ISO_DEFAULT_MEMORY_MB));
	else
		n = snprintf(line, sizeof(line), "stoke: the function %s: %s", f.what, err);
	on_log(c, 1, line, n < (int)sizeof(line) ? (size_t)n : sizeof(line) - 1);
	inv_fail(inv, f.status, f.kind, "%s", rc == ISO_EXCEPTION || rc == ISO_NO_HANDLER ||
		 rc == ISO_BAD_RESPONSE || rc == ISO_NO_RESPONSE ? err : line + 7);
}

/* ---- cold start ---- */

/* A pooled isolate gets the function's limits, env and its modules from the code
 * cache (its runtime context was made from the snapshot while it sat in the pool). */
static int tenant_create(struct iso_call *c, struct fn *fn, struct iso_tenant **out,
			 char *err, size_t errlen)
{
	struct iso_worker *w = c->w;
	struct iso_fn *f = fn->tier_data;
	size_t mem = (size_t)or_default(fn->limits.memory_mb, ISO_DEFAULT_MEMORY_MB) << 20;
	struct iso_tenant *tn = calloc(1, sizeof(*tn));
	int rc;

	if (!tn)
		return -ENOMEM;
	tn->vm = iso__pool_take(w);
	if (!tn->vm) {
		free(tn);
		return -ENOMEM;
	}
	iso_vm_set_io(tn->vm, &c->io);
	iso_vm_set_limits(tn->vm, mem, mem);
	iso__watch_begin(w, tn->vm, (uint64_t)ISO_STARTUP_CPU_MS * 1000000u, c->deadline_ns);
	rc = iso_vm_load(tn->vm, f->code, (const struct iso_kv *)fn->env, fn->nenv,
			 c->deadline_ns, err, errlen);
	iso__watch_end(w);
	iso_vm_set_io(tn->vm, NULL);
	if (rc != ISO_OK) {
		iso_vm_free(tn->vm);
		free(tn);
		return rc;
	}
	tn->fn = fn_ref(fn);
	iso__tenant_add(w, tn);
	atomic_fetch_add(&w->tier->cold_starts, 1);
	*out = tn;
	return ISO_OK;
}

/* ---- slices ---- */

static void fill_req(struct iso_req *r, const struct inv *inv, uint64_t deadline)
{
	r->method = inv->req.method;
	r->url = inv->req.url;
	r->headers = (const struct iso_kv *)inv->req.headers;
	r->nheaders = inv->req.nheaders;
	r->body = inv->req.body;
	r->body_len = inv->req.body_len;
	r->wall_deadline_ns = deadline;
}

/* Runs one slice of a call under the watchdog; returns the shim's status. */
static int call_slice(struct iso_call *c, enum slice_start start, int *status,
		      char *err, size_t errlen)
{
	struct iso_vm *vm = c->tn->vm;
	uint64_t cpu0 = iso__cpu_marked();
	uint64_t left = c->cpu_limit_ns > c->cpu_used_ns ? c->cpu_limit_ns - c->cpu_used_ns : 0;
	struct iso_req req;
	uint64_t mem, mark;
	int rc;

	iso_vm_set_io(vm, &c->io);
	c->running = 1;
	iso__watch_begin(c->w, vm, left, c->deadline_ns);
	if (start == SLICE_CALL) {
		fill_req(&req, c->inv, c->deadline_ns);
		rc = iso_vm_call(vm, &req, status, &c->wake_ns, err, errlen);
	} else {
		rc = iso_vm_step(vm, status, &c->wake_ns, err, errlen);
	}
	iso__watch_end(c->w);
	c->running = 0;
	iso_vm_set_io(vm, NULL);
	/* A mark that re-reads the CPU clock can land below an estimated one (see
	 * iso__cpu_mark): a slice is never charged less than nothing. */
	mark = iso__cpu_mark();
	c->cpu_used_ns += mark > cpu0 ? mark - cpu0 : 0;
	/* Sampled where the call pauses: the metered peak, not every allocation's. A
	 * call that ends here is sampled once, by answer(). */
	mem = rc == ISO_PENDING ? iso_vm_memory(vm) : 0;
	if (mem > c->peak_mem)
		c->peak_mem = mem;
	return rc;
}

/* ---- the life of a call ---- */

static void list_add(struct iso_worker *w, struct iso_call *c)
{
	c->next = w->calls;
	w->calls = c;
	atomic_fetch_add(&w->ncalls, 1);
}

static void list_remove(struct iso_worker *w, struct iso_call *c)
{
	struct iso_call **p;

	for (p = &w->calls; *p; p = &(*p)->next) {
		if (*p == c) {
			*p = c->next;
			atomic_fetch_sub(&w->ncalls, 1);
			return;
		}
	}
}

/* Returns the tenant's heap bytes it read (0 without a tenant). */
static uint64_t answer(struct iso_call *c, int rc, int status, const char *err)
{
	struct inv *inv = c->inv;
	uint64_t mem = c->tn ? iso_vm_memory(c->tn->vm) : 0;

	inv->cpu_ns = c->cpu_used_ns;
	inv->peak_mem_bytes = mem > c->peak_mem ? mem : c->peak_mem;
	if (rc == ISO_OK) {
		inv->resp.status = status;
	} else {
		count_failure(c->w->tier, rc);
		fail_call(c, inv, rc < 0 ? ISO_EXCEPTION : rc, rc < 0 ? strerror(-rc) : err);
	}
	c->inv = NULL;
	inv_done(inv);
	return mem;
}

static void log_drain_failure(struct iso_call *c, int rc, const char *err)
{
	struct iso_failure f = failure_of(rc);
	char line[600];
	int n = snprintf(line, sizeof(line), "stoke: waitUntil work %s %s", f.what, err);

	on_log(c, 1, line, n < (int)sizeof(line) ? (size_t)n : sizeof(line) - 1);
	count_failure(c->w->tier, rc);
}

static void call_start(struct iso_worker *w, struct inv *inv, struct iso_tenant *tn);

static int max_instances(const struct fn *fn)
{
	return (int)or_default(fn->limits.max_instances, ISO_DEFAULT_MAX_INSTANCES);
}

/* An idle instance of the function, most recently used first (its caches are warm). */
static struct iso_tenant *idle_instance(struct iso_fn *f)
{
	struct iso_tenant *tn, *best = NULL;

	for (tn = f->instances; tn; tn = tn->sibling)
		if (!tn->call && (!best || tn->last_used_ns > best->last_used_ns))
			best = tn;
	return best;
}

/*
 * Starts waiting requests while there is an idle instance or room for a new one.
 * A request leaves the queue before it starts: starting may finish it and re-enter.
 */
static void fn_pump(struct iso_worker *w, struct fn *fn)
{
	struct iso_fn *f = fn->tier_data;
	struct iso_tenant *tn;
	struct inv *inv;

	while (f->nwaiting) {
		tn = idle_instance(f);
		if (!tn && f->ninstances >= max_instances(fn))
			return;
		inv = f->waiting[0];
		memmove(f->waiting, f->waiting + 1, --f->nwaiting * sizeof(*f->waiting));
		call_start(w, inv, tn);
	}
}

/* Queues a function for fn_pump(); takes its own reference. */
static void pump_later(struct iso_worker *w, struct fn *fn)
{
	struct fn **q;
	size_t cap;

	if (w->npumps == w->pumpcap) {
		cap = w->pumpcap ? w->pumpcap * 2 : 16;
		q = realloc(w->pumps, cap * sizeof(*q));
		if (!q)
			return;	/* the next request or call end of fn pumps it */
		w->pumps = q;
		w->pumpcap = cap;
	}
	w->pumps[w->npumps++] = fn_ref(fn);
}

/*
 * Runs queued pumps. A call that ends while a pump starts it queues its function
 * instead of pumping in place, so a burst of quick requests is a loop here, not a
 * recursion as deep as the queue.
 */
static void pumps_run(struct iso_worker *w)
{
	struct fn *fn;

	if (w->pumping)
		return;
	w->pumping = 1;
	while (w->npumps) {
		fn = w->pumps[--w->npumps];
		fn_pump(w, fn);
		fn_unref(fn);
	}
	w->pumping = 0;
}

/* mem: the tenant's heap bytes if read since its JavaScript last ran, else 0. */
static void call_end(struct iso_call *c, int rc, size_t mem)
{
	struct iso_worker *w = c->w;
	struct iso_tenant *tn = c->tn;
	/* Held across the drop: the instance may hold the last reference. */
	struct fn *fn = fn_ref(tn->fn);
	struct iso_fn *f = fn->tier_data;

	list_remove(w, c);
	tn->call = NULL;
	free(c);
	if (is_fatal(rc) || (f->retired && !f->nwaiting))
		iso__tenant_drop(w, tn);
	else
		iso__tenant_idle(w, tn, mem);
	pump_later(w, fn);
	fn_unref(fn);
	pumps_run(w);
}

/* Moves a call on after a slice: wait, answer and start waitUntil work, or end. */
static void call_after(struct iso_call *c, int rc, int status, const char *err)
{
	char err2[512] = "";
	size_t mem;

	if (rc == ISO_PENDING)
		return;
	if (!c->draining) {
		mem = answer(c, rc, status, err);
		if (rc != ISO_OK || !iso_vm_busy(c->tn->vm)) {
			call_end(c, rc, mem);	/* no JavaScript ran since */
			return;
		}
		c->draining = 1;	/* answered; waitUntil work goes on */
		rc = call_slice(c, SLICE_CONTINUE, &status, err2, sizeof(err2));
		if (rc == ISO_PENDING)
			return;
		err = err2;
	}
	if (rc != ISO_OK)
		log_drain_failure(c, rc, err);
	call_end(c, rc, 0);
}

static void call_start(struct iso_worker *w, struct inv *inv, struct iso_tenant *tn)
{
	struct fn *fn = inv->fn;
	struct iso_call *c = calloc(1, sizeof(*c));
	char err[1024] = "";
	int rc = ISO_OK, status = 200;

	if (!c) {
		inv_fail(inv, 503, "overloaded", "out of memory starting the request");
		inv_done(inv);
		return;
	}
	c->w = w;
	c->inv = inv;
	c->fn_name = fn->name;
	memcpy(c->request_id, inv->request_id, sizeof(c->request_id));
	c->io = iso_call_io_template;
	c->io.opaque = c;
	c->deadline_ns = iso_v8_now_ns() + (uint64_t)or_default(fn->limits.wall_ms,
							       ISO_DEFAULT_WALL_MS) * 1000000u;
	c->cpu_limit_ns = (uint64_t)or_default(fn->limits.cpu_ms, ISO_DEFAULT_CPU_MS) * 1000000u;
	if (!tn) {
		inv->cold = 1;
		rc = tenant_create(c, fn, &tn, err, sizeof(err));
		iso__cpu_mark();	/* the platform's work, not the request's */
	}
	if (rc != ISO_OK) {
		answer(c, rc, 0, err);
		free(c);
		return;
	}
	c->tn = tn;
	tn->call = c;
	iso__tenant_touch(w, tn);
	list_add(w, c);
	rc = call_slice(c, SLICE_CALL, &status, err, sizeof(err));
	call_after(c, rc, status, err);
}

static int waiting_push(struct iso_fn *f, struct inv *inv)
{
	struct inv **q;
	size_t cap;

	if (f->nwaiting == f->waitcap) {
		cap = f->waitcap ? f->waitcap * 2 : 4;
		q = realloc(f->waiting, cap * sizeof(*q));
		if (!q)
			return -ENOMEM;
		f->waiting = q;
		f->waitcap = cap;
	}
	f->waiting[f->nwaiting++] = inv;
	return 0;
}

/* Requests of a function start on an idle instance, on a new one up to
 * limits.max_instances, or wait in order for one. */
void iso__invoke(struct iso_worker *w, struct inv *inv)
{
	struct fn *fn = fn_ref(inv->fn);

	atomic_fetch_add(&w->tier->invocations, 1);
	if (waiting_push(fn->tier_data, inv)) {
		inv_fail(inv, 503, "overloaded", "out of memory queueing the request");
		inv_done(inv);
	} else {
		pump_later(w, fn);
	}
	fn_unref(fn);
	pumps_run(w);
}

uint64_t iso__calls_run(struct iso_worker *w)
{
	struct iso_call *c;
	uint64_t now, wake = UINT64_MAX;
	char err[1024];
	unsigned round = ++w->round;
	int rc, status;

	/* Each call gets at most one slice per round, so the queue is looked at again
	 * soon even when a call keeps being due. A running call is in a slice on a
	 * thread the worker was handed away from. */
	for (;;) {
		now = iso_v8_now_ns();
		for (c = w->calls; c; c = c->next)
			if (!c->running && c->round != round && c->wake_ns <= now)
				break;
		if (!c)
			break;
		c->round = round;
		err[0] = '\0';
		status = 200;
		rc = call_slice(c, SLICE_CONTINUE, &status, err, sizeof(err));
		call_after(c, rc, status, err);
	}
	for (c = w->calls; c; c = c->next)
		if (!c->running)
			wake = c->wake_ns < wake ? c->wake_ns : wake;
	return wake;
}

void iso__fn_retire(struct iso_worker *w, struct fn *fn)
{
	struct iso_fn *f = fn->tier_data;
	struct iso_tenant *tn, *next;

	f->retired = 1;
	for (tn = f->instances; tn; tn = next) {
		next = tn->sibling;
		if (!tn->call)
			iso__tenant_drop(w, tn);
	}
}

static void fail_waiting(struct iso_fn *f)
{
	size_t i;

	for (i = 0; i < f->nwaiting; i++) {
		inv_fail(f->waiting[i], 503, "shutting_down", "the isolate tier is stopping");
		inv_done(f->waiting[i]);
	}
	f->nwaiting = 0;
}

void iso__calls_abort(struct iso_worker *w)
{
	struct iso_call *c;
	struct iso_tenant *tn;

	while ((c = w->calls)) {
		w->calls = c->next;
		c->tn->call = NULL;
		if (c->inv) {
			inv_fail(c->inv, 503, "shutting_down", "the isolate tier is stopping");
			inv_done(c->inv);
		}
		free(c);
	}
	/* Requests wait only while every instance of their function is busy, so each
	 * function with waiting requests has a tenant in the LRU list. */
	for (tn = w->lru_head; tn; tn = tn->next)
		fail_waiting(tn->fn->tier_data);
}
