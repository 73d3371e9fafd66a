/*
 * The isolate tier: worker threads that own V8 isolates, a pool of blank isolates per
 * worker refilled between requests, per-function tenants kept warm in LRU order under
 * the memory budget, and a watchdog thread that enforces CPU and wall time.
 *
 * Each function version is pinned to one worker on its first request, so an isolate is
 * only ever touched by the thread that created it and no V8 Locker is needed. The
 * gateway's thread only queues messages; JavaScript never runs on it.
 */
#include "isolate/iso.h"
#include "common/strbuf.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* How often the watchdog samples busy workers' CPU clocks. */
#define ISO_WATCH_NS 1000000u
/* The watchdog keeps ticking this long after the last request before it sleeps, so
 * a busy host never pays a wake-up system call per request. */
#define ISO_WATCH_LINGER 1000

static uint64_t clock_ns(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static uint32_t or_default(uint32_t v, uint32_t def)
{
	return v ? v : def;
}

/* ---- the watchdog ---- */

static void watch_begin(struct iso_worker *w, struct iso_vm *vm, uint32_t cpu_ms,
			uint64_t wall_deadline)
{
	struct iso_tier *it = w->tier;

	pthread_mutex_lock(&w->lock);
	w->watched = vm;
	w->cpu_start_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID);
	w->cpu_limit_ns = (uint64_t)cpu_ms * 1000000u;
	w->wall_deadline_ns = wall_deadline;
	pthread_mutex_unlock(&w->lock);
	if (atomic_fetch_add(&it->nbusy, 1) == 0 && atomic_load(&it->wd_sleeping)) {
		pthread_mutex_lock(&it->wd_lock);
		pthread_cond_signal(&it->wd_cond);
		pthread_mutex_unlock(&it->wd_lock);
	}
}

static void watch_end(struct iso_worker *w)
{
	pthread_mutex_lock(&w->lock);
	w->watched = NULL;
	pthread_mutex_unlock(&w->lock);
	atomic_fetch_sub(&w->tier->nbusy, 1);
}

static void watch_check(struct iso_worker *w, uint64_t now)
{
	uint64_t cpu;

	pthread_mutex_lock(&w->lock);
	if (w->watched) {
		cpu = clock_ns(w->cpu_clock);
		if (cpu - w->cpu_start_ns > w->cpu_limit_ns)
			iso_vm_terminate(w->watched, ISO_CPU_LIMIT);
		else if (now > w->wall_deadline_ns)
			iso_vm_terminate(w->watched, ISO_WALL_LIMIT);
	}
	pthread_mutex_unlock(&w->lock);
}

static void *watchdog_main(void *arg)
{
	struct iso_tier *it = arg;
	struct timespec nap = { 0, ISO_WATCH_NS };
	int i, idle_ticks = 0;

	pthread_mutex_lock(&it->wd_lock);
	while (!it->wd_stop) {
		idle_ticks = atomic_load(&it->nbusy) ? 0 : idle_ticks + 1;
		if (idle_ticks > ISO_WATCH_LINGER) {
			/* Set before the last look at nbusy: a worker that raises nbusy
			 * after it sees the flag and signals under wd_lock. */
			atomic_store(&it->wd_sleeping, 1);
			if (!atomic_load(&it->nbusy))
				pthread_cond_wait(&it->wd_cond, &it->wd_lock);
			atomic_store(&it->wd_sleeping, 0);
			idle_ticks = 0;
			continue;
		}
		pthread_mutex_unlock(&it->wd_lock);
		for (i = 0; i < it->nworkers; i++)
			watch_check(&it->workers[i], clock_ns(CLOCK_MONOTONIC));
		nanosleep(&nap, NULL);
		pthread_mutex_lock(&it->wd_lock);
	}
	pthread_mutex_unlock(&it->wd_lock);
	return NULL;
}

/* ---- the pool of blank isolates ---- */

static struct iso_vm *pool_take(struct iso_worker *w)
{
	struct iso_tier *it = w->tier;

	if (w->npool) {
		atomic_fetch_sub(&it->pool_size, 1);
		return w->pool[--w->npool];
	}
	atomic_fetch_add(&it->pool_misses, 1);
	return iso_vm_new();
}

static void pool_refill_one(struct iso_worker *w)
{
	struct iso_vm *vm = iso_vm_new();

	if (!vm)
		return;
	w->pool[w->npool++] = vm;
	atomic_fetch_add(&w->tier->pool_size, 1);
}

/* ---- tenants ---- */

static void lru_unlink(struct iso_worker *w, struct iso_tenant *tn)
{
	if (tn->prev)
		tn->prev->next = tn->next;
	else
		w->lru_head = tn->next;
	if (tn->next)
		tn->next->prev = tn->prev;
	else
		w->lru_tail = tn->prev;
	tn->prev = tn->next = NULL;
}

static void lru_push_front(struct iso_worker *w, struct iso_tenant *tn)
{
	tn->next = w->lru_head;
	tn->prev = NULL;
	if (w->lru_head)
		w->lru_head->prev = tn;
	w->lru_head = tn;
	if (!w->lru_tail)
		w->lru_tail = tn;
}

static void set_trimmed(struct iso_worker *w, struct iso_tenant *tn, int trimmed)
{
	if (tn->trimmed == trimmed)
		return;
	tn->trimmed = trimmed;
	w->untrimmed += trimmed ? -1 : 1;
	atomic_fetch_add(&w->tier->trim_pending, trimmed ? -1 : 1);
}

static void tenant_drop(struct iso_worker *w, struct iso_tenant *tn)
{
	struct iso_tier *it = w->tier;

	set_trimmed(w, tn, 1);
	lru_unlink(w, tn);
	((struct iso_fn *)tn->fn->tier_data)->tenant = NULL;
	w->mem -= tn->mem;
	atomic_fetch_sub(&it->mem_bytes, (long)tn->mem);
	atomic_fetch_sub(&it->live, 1);
	iso_vm_free(tn->vm);
	fn_unref(tn->fn);
	free(tn);
}

static void tenant_account(struct iso_worker *w, struct iso_tenant *tn)
{
	size_t mem = iso_vm_memory(tn->vm);

	w->mem += mem - tn->mem;
	atomic_fetch_add(&w->tier->mem_bytes, (long)mem - (long)tn->mem);
	tn->mem = mem;
}

/* Collects one tenant that has been idle long enough; returns whether it did. Idle
 * tenants sit behind the recently used ones in the LRU list, so the walk is short. */
static int tenants_trim_one(struct iso_worker *w)
{
	uint64_t now = clock_ns(CLOCK_MONOTONIC);
	struct iso_tenant *tn;

	for (tn = w->lru_head; tn && w->untrimmed; tn = tn->next) {
		if (tn->trimmed || now - tn->last_used_ns < ISO_TRIM_IDLE_NS)
			continue;
		iso_vm_idle(tn->vm);
		set_trimmed(w, tn, 1);
		tenant_account(w, tn);
		atomic_fetch_add(&w->tier->trims, 1);
		return 1;
	}
	return 0;
}

/* Evicts least recently used tenants until the worker is within its share of the
 * budget; `keep` (the one just used) stays. */
static void tenants_evict(struct iso_worker *w, struct iso_tenant *keep)
{
	struct iso_tier *it = w->tier;

	while (w->mem > it->budget_per_worker && w->lru_tail && w->lru_tail != keep) {
		tenant_drop(w, w->lru_tail);
		atomic_fetch_add(&it->evictions, 1);
	}
}

/* ---- running one invocation ---- */

/* What the shim's output callbacks write to. inv is NULL once the response is out
 * (ctx.waitUntil work after it), when only logging still has somewhere to go. */
struct iso_call {
	struct inv *inv;
	const char *fn_name;
	char request_id[24];
};

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

	if (rc == ISO_CPU_LIMIT)
		n = snprintf(line, sizeof(line), "stoke: the request %s (%u ms)", f.what,
			     or_default(fn->limits.cpu_ms, ISO_DEFAULT_CPU_MS));
	else if (rc == ISO_WALL_LIMIT)
		n = snprintf(line, sizeof(line), "stoke: the request %s (%u ms)", f.what,
			     or_default(fn->limits.wall_ms, ISO_DEFAULT_WALL_MS));
	else if (rc == ISO_MEMORY_LIMIT)
		n = snprintf(line, sizeof(line), "stoke: the request %s (%u MB)", f.what,
			     or_default(fn->limits.memory_mb, ISO_DEFAULT_MEMORY_MB));
	else
		n = snprintf(line, sizeof(line), "stoke: the function %s: %s", f.what, err);
	on_log(c, 1, line, n < (int)sizeof(line) ? (size_t)n : sizeof(line) - 1);
	inv_fail(inv, f.status, f.kind, "%s", rc == ISO_EXCEPTION || rc == ISO_NO_HANDLER ||
		 rc == ISO_BAD_RESPONSE || rc == ISO_NO_RESPONSE ? err : line + 7);
}

/* A cold start: a pooled isolate gets the function's limits, a context from the
 * snapshot and its modules from the code cache. */
static int tenant_create(struct iso_worker *w, struct iso_call *c, struct fn *fn,
			 struct iso_tenant **out, char *err, size_t errlen)
{
	struct iso_fn *f = fn->tier_data;
	size_t mem = (size_t)or_default(fn->limits.memory_mb, ISO_DEFAULT_MEMORY_MB) << 20;
	struct iso_io io = iso_call_io_template;
	struct iso_tenant *tn = calloc(1, sizeof(*tn));
	int rc;

	if (!tn)
		return -ENOMEM;
	tn->vm = pool_take(w);
	if (!tn->vm) {
		free(tn);
		return -ENOMEM;
	}
	io.opaque = c;
	iso_vm_set_io(tn->vm, &io);
	iso_vm_set_limits(tn->vm, mem, mem);
	watch_begin(w, tn->vm, ISO_STARTUP_CPU_MS,
		    iso_v8_now_ns() + (uint64_t)or_default(fn->limits.wall_ms,
							   ISO_DEFAULT_WALL_MS) * 1000000u);
	rc = iso_vm_load(tn->vm, f->code, (const struct iso_kv *)fn->env, fn->nenv, err, errlen);
	watch_end(w);
	iso_vm_set_io(tn->vm, NULL);
	if (rc != ISO_OK) {
		iso_vm_free(tn->vm);
		free(tn);
		return rc;
	}
	tn->fn = fn_ref(fn);
	tn->trimmed = 1;
	f->tenant = tn;
	lru_push_front(w, tn);
	atomic_fetch_add(&w->tier->live, 1);
	atomic_fetch_add(&w->tier->cold_starts, 1);
	*out = tn;
	return ISO_OK;
}

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

/* ctx.waitUntil() work runs after the gateway has the response. Returns whether the
 * tenant is still alive. */
static int run_drain(struct iso_worker *w, struct iso_call *c, struct iso_tenant *tn,
		      uint32_t cpu_ms, uint64_t deadline)
{
	char err[512] = "";
	int rc;

	watch_begin(w, tn->vm, cpu_ms, deadline);
	rc = iso_vm_drain(tn->vm, deadline, err, sizeof(err));
	watch_end(w);
	if (rc != ISO_OK) {
		struct iso_failure f = failure_of(rc);
		char line[600];
		int n = snprintf(line, sizeof(line), "stoke: waitUntil work %s %s", f.what, err);

		on_log(c, 1, line, n < (int)sizeof(line) ? (size_t)n : sizeof(line) - 1);
		count_failure(w->tier, rc);
	}
	if (!is_fatal(rc))
		return 1;
	tenant_drop(w, tn);
	return 0;
}

static void handle_invoke(struct iso_worker *w, struct inv *inv)
{
	struct fn *fn = inv->fn;
	struct iso_fn *f = fn->tier_data;
	struct iso_call c = { .inv = inv, .fn_name = fn->name };
	struct iso_io io = iso_call_io_template;
	uint32_t cpu_ms = or_default(fn->limits.cpu_ms, ISO_DEFAULT_CPU_MS);
	uint64_t cpu0 = clock_ns(CLOCK_THREAD_CPUTIME_ID), deadline;
	struct iso_tenant *tn = f->tenant;
	struct iso_req req;
	char err[1024] = "";
	int rc = ISO_OK, status = 200;

	memcpy(c.request_id, inv->request_id, sizeof(c.request_id));
	io.opaque = &c;
	atomic_fetch_add(&w->tier->invocations, 1);
	deadline = iso_v8_now_ns() + (uint64_t)or_default(fn->limits.wall_ms,
							  ISO_DEFAULT_WALL_MS) * 1000000u;
	if (!tn) {
		inv->cold = 1;
		rc = tenant_create(w, &c, fn, &tn, err, sizeof(err));
	}
	if (rc == ISO_OK) {
		lru_unlink(w, tn);
		lru_push_front(w, tn);
		iso_vm_set_io(tn->vm, &io);
		fill_req(&req, inv, deadline);
		watch_begin(w, tn->vm, cpu_ms, deadline);
		rc = iso_vm_call(tn->vm, &req, &status, err, sizeof(err));
		watch_end(w);
	}
	inv->cpu_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID) - cpu0;
	if (rc == ISO_OK) {
		inv->resp.status = status;
	} else {
		count_failure(w->tier, rc);
		fail_call(&c, inv, rc < 0 ? ISO_EXCEPTION : rc, rc < 0 ? strerror(-rc) : err);
	}
	c.inv = NULL;
	inv_done(inv);
	if (!tn || !f->tenant)
		return;
	if (is_fatal(rc)) {
		tenant_drop(w, tn);
		return;
	}
	if (!run_drain(w, &c, tn, cpu_ms, deadline))
		return;
	iso_vm_set_io(tn->vm, NULL);
	tn->last_used_ns = clock_ns(CLOCK_MONOTONIC);
	set_trimmed(w, tn, 0);
	tenant_account(w, tn);
	tenants_evict(w, tn);
}

/* ---- worker threads and their queues ---- */

static int queue_push(struct iso_worker *w, struct iso_msg m)
{
	struct iso_msg *q;
	size_t i, cap;

	pthread_mutex_lock(&w->lock);
	if (w->qlen == w->qcap) {
		cap = w->qcap ? w->qcap * 2 : 64;
		q = malloc(cap * sizeof(*q));
		if (!q) {
			pthread_mutex_unlock(&w->lock);
			return -ENOMEM;
		}
		for (i = 0; i < w->qlen; i++)
			q[i] = w->q[(w->qhead + i) % w->qcap];
		free(w->q);
		w->q = q;
		w->qhead = 0;
		w->qcap = cap;
	}
	w->q[(w->qhead + w->qlen++) % w->qcap] = m;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
	return 0;
}

/* Idle work, one step at a time so a request never waits for more than one step:
 * refill the pool, then collect idle tenants. Returns whether it did something. */
static int idle_step(struct iso_worker *w)
{
	if (w->npool < w->tier->pool_target) {
		pool_refill_one(w);
		return 1;
	}
	return w->untrimmed && tenants_trim_one(w);
}

/* Waits for the next message, doing idle work while the queue is empty (off the
 * request path: it only runs when nothing is waiting). 0 means stop. */
static int queue_pop(struct iso_worker *w, struct iso_msg *m)
{
	struct timespec until;

	pthread_mutex_lock(&w->lock);
	while (!w->qlen && !w->stop) {
		pthread_mutex_unlock(&w->lock);
		if (idle_step(w)) {
			pthread_mutex_lock(&w->lock);
			continue;
		}
		pthread_mutex_lock(&w->lock);
		if (w->qlen || w->stop)
			break;
		if (!w->untrimmed) {
			pthread_cond_wait(&w->cond, &w->lock);
			continue;
		}
		/* Tenants are waiting to become idle enough to trim. */
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += 100 * 1000000;
		if (until.tv_nsec >= 1000000000) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&w->cond, &w->lock, &until);
	}
	if (w->stop) {
		pthread_mutex_unlock(&w->lock);
		return 0;
	}
	*m = w->q[w->qhead];
	w->qhead = (w->qhead + 1) % w->qcap;
	w->qlen--;
	pthread_mutex_unlock(&w->lock);
	return 1;
}

static void handle_retire(struct iso_worker *w, struct fn *fn)
{
	struct iso_fn *f = fn->tier_data;

	if (f && f->tenant)
		tenant_drop(w, f->tenant);
	fn_unref(fn);
}

static void worker_cleanup(struct iso_worker *w)
{
	struct iso_msg m;

	while (w->lru_head)
		tenant_drop(w, w->lru_head);
	while (w->npool) {
		iso_vm_free(w->pool[--w->npool]);
		atomic_fetch_sub(&w->tier->pool_size, 1);
	}
	/* Messages that arrived after stop: fail them so the gateway can answer. */
	while (w->qlen) {
		m = w->q[w->qhead];
		w->qhead = (w->qhead + 1) % w->qcap;
		w->qlen--;
		if (m.kind == ISO_MSG_RETIRE) {
			fn_unref(m.fn);
			continue;
		}
		inv_fail(m.inv, 503, "shutting_down", "the isolate tier is stopping");
		inv_done(m.inv);
	}
}

static void *worker_main(void *arg)
{
	struct iso_worker *w = arg;
	struct iso_msg m;

	pthread_getcpuclockid(pthread_self(), &w->cpu_clock);
	while (queue_pop(w, &m)) {
		if (m.kind == ISO_MSG_INVOKE)
			handle_invoke(w, m.inv);
		else
			handle_retire(w, m.fn);
	}
	worker_cleanup(w);
	return NULL;
}

static struct iso_worker *worker_of(struct iso_tier *it, struct fn *fn)
{
	struct iso_fn *f = fn->tier_data;
	int idx = atomic_load(&f->worker), none = -1;

	if (idx < 0) {
		idx = (int)(atomic_fetch_add(&it->next_worker, 1) % (unsigned)it->nworkers);
		if (!atomic_compare_exchange_strong(&f->worker, &none, idx))
			idx = none;
	}
	return &it->workers[idx];
}

/* ---- tier_ops ---- */

static int env_int(const char *name, int def)
{
	const char *v = getenv(name);

	return v && *v ? atoi(v) : def;
}

static uint64_t default_budget(void)
{
	long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);

	return pages > 0 && psize > 0 ? (uint64_t)pages * (uint64_t)psize / 2 : 1ull << 30;
}

static void worker_init(struct iso_tier *it, int i)
{
	struct iso_worker *w = &it->workers[i];

	w->tier = it;
	w->idx = i;
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->cond, NULL);
	w->pool = calloc(it->pool_target ? it->pool_target : 1, sizeof(*w->pool));
}

static int iso_start(struct tier *t)
{
	struct iso_tier *it;
	char err[1024];
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int i, rc;

	rc = iso_v8_init(err, sizeof(err));
	if (rc) {
		fprintf(stderr, "isolate tier: %s\n", err);
		return rc;
	}
	it = calloc(1, sizeof(*it));
	if (!it)
		return -ENOMEM;
	it->t = t;
	it->nworkers = t->nworkers > 0 ? t->nworkers : (ncpu > 0 ? (int)ncpu : 1);
	it->pool_target = env_int("STOKE_ISO_POOL", ISO_DEFAULT_POOL);
	it->budget_per_worker = (t->memory_budget ? t->memory_budget : default_budget()) /
				it->nworkers;
	it->workers = calloc(it->nworkers, sizeof(*it->workers));
	pthread_mutex_init(&it->wd_lock, NULL);
	pthread_cond_init(&it->wd_cond, NULL);
	for (i = 0; i < it->nworkers; i++)
		worker_init(it, i);
	t->priv = it;
	pthread_create(&it->watchdog, NULL, watchdog_main, it);
	for (i = 0; i < it->nworkers; i++)
		pthread_create(&it->workers[i].thread, NULL, worker_main, &it->workers[i]);
	return 0;
}

static void iso_invoke(struct tier *t, struct inv *inv)
{
	struct iso_tier *it = t->priv;
	struct iso_msg m = { .kind = ISO_MSG_INVOKE, .inv = inv };

	if (!inv->fn->tier_data) {
		inv_fail(inv, 500, "not_prepared", "the function was not deployed to this tier");
		inv_done(inv);
		return;
	}
	if (queue_push(worker_of(it, inv->fn), m)) {
		inv_fail(inv, 503, "overloaded", "out of memory queueing the request");
		inv_done(inv);
	}
}

static void iso_retire(struct tier *t, struct fn *fn)
{
	struct iso_tier *it = t->priv;
	struct iso_fn *f = fn->tier_data;
	struct iso_msg m = { .kind = ISO_MSG_RETIRE, .fn = fn };
	int idx;

	if (!f || (idx = atomic_load(&f->worker)) < 0)
		return;
	fn_ref(fn);
	if (queue_push(&it->workers[idx], m))
		fn_unref(fn);
}

static void iso_metrics(struct tier *t, struct strbuf *out)
{
	struct iso_tier *it = t->priv;

	sb_printf(out, "stoke_isolate_live %ld\n", atomic_load(&it->live));
	sb_printf(out, "stoke_isolate_pool_size %ld\n", atomic_load(&it->pool_size));
	sb_printf(out, "stoke_isolate_memory_bytes %ld\n", atomic_load(&it->mem_bytes));
	sb_printf(out, "stoke_isolate_snapshot_bytes %zu\n", iso_v8_snapshot_size());
	sb_printf(out, "stoke_isolate_cold_starts_total %lu\n", atomic_load(&it->cold_starts));
	sb_printf(out, "stoke_isolate_pool_misses_total %lu\n", atomic_load(&it->pool_misses));
	sb_printf(out, "stoke_isolate_invocations_total %lu\n", atomic_load(&it->invocations));
	sb_printf(out, "stoke_isolate_evictions_total %lu\n", atomic_load(&it->evictions));
	sb_printf(out, "stoke_isolate_idle_trims_total %lu\n", atomic_load(&it->trims));
	sb_printf(out, "stoke_isolate_trim_pending %ld\n", atomic_load(&it->trim_pending));
	sb_printf(out, "stoke_isolate_exceptions_total %lu\n", atomic_load(&it->exceptions));
	sb_printf(out, "stoke_isolate_limit_kills_total{limit=\"cpu\"} %lu\n",
		  atomic_load(&it->kills_cpu));
	sb_printf(out, "stoke_isolate_limit_kills_total{limit=\"wall\"} %lu\n",
		  atomic_load(&it->kills_wall));
	sb_printf(out, "stoke_isolate_limit_kills_total{limit=\"memory\"} %lu\n",
		  atomic_load(&it->kills_memory));
	sb_printf(out, "stoke_isolate_limit_kills_total{limit=\"stack\"} %lu\n",
		  atomic_load(&it->kills_stack));
}

static void iso_stop(struct tier *t)
{
	struct iso_tier *it = t->priv;
	struct iso_worker *w;
	int i;

	if (!it)
		return;
	for (i = 0; i < it->nworkers; i++) {
		w = &it->workers[i];
		pthread_mutex_lock(&w->lock);
		w->stop = 1;
		if (w->watched)
			iso_vm_terminate(w->watched, ISO_WALL_LIMIT);
		pthread_cond_signal(&w->cond);
		pthread_mutex_unlock(&w->lock);
	}
	for (i = 0; i < it->nworkers; i++)
		pthread_join(it->workers[i].thread, NULL);
	pthread_mutex_lock(&it->wd_lock);
	it->wd_stop = 1;
	pthread_cond_signal(&it->wd_cond);
	pthread_mutex_unlock(&it->wd_lock);
	pthread_join(it->watchdog, NULL);
	for (i = 0; i < it->nworkers; i++) {
		free(it->workers[i].q);
		free(it->workers[i].pool);
	}
	free(it->workers);
	free(it);
	t->priv = NULL;
}

const struct tier_ops iso_tier_ops = {
	.name = "isolate",
	.start = iso_start,
	.prepare = iso__prepare,
	.invoke = iso_invoke,
	.retire = iso_retire,
	.release = iso__release,
	.metrics = iso_metrics,
	.stop = iso_stop,
};
