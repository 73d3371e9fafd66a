/*
 * Internals of the isolate tier shared by its C files (tier.c: workers, pool, limits;
 * prepare.c: deploy-time transpile and compile). The public face is iso_tier_ops.
 */
#ifndef STOKE_ISO_H
#define STOKE_ISO_H

#include "common/invoke.h"
#include "isolate/iso_v8.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#define ISO_DEFAULT_CPU_MS 50
#define ISO_DEFAULT_WALL_MS 30000
#define ISO_DEFAULT_MEMORY_MB 128
/* Module evaluation at a cold start gets its own, larger CPU budget. */
#define ISO_STARTUP_CPU_MS 1000
#define ISO_DEFAULT_POOL 4
/* Instances (isolates) one function version may have at once when limits say 0. */
#define ISO_DEFAULT_MAX_INSTANCES 16
/*
 * Each idle isolate holds 7 memory mappings (measured: two old-space pages, one
 * new-space page, the new large-object space, a code page and its guard, one more
 * small area), one per page beyond that as its heap grows. V8 aborts the process when
 * mmap fails, so live isolates are capped to stay under vm.max_map_count with room left
 * for the rest of the daemon.
 */
#define ISO_MAPS_PER_ISOLATE 8
#define ISO_MAPS_RESERVED 16384
/* Live tenants a host should hold, and the vm.max_map_count that allows it (the value
 * scripts/setup sets; Elasticsearch asks operators for the same). */
#define ISO_WANT_LIVE 10000
#define ISO_WANT_MAP_COUNT 262144
/* A bigger heap takes one more mapping per V8 page (256 KiB) beyond the first MiB. */
#define ISO_HEAP_PAGE (256u << 10)
/*
 * A slice of JavaScript that has run this long while its worker has other work waiting
 * gives the worker to another thread (see tier.c); the slice goes on, on its own thread.
 */
#define ISO_HANDOFF_NS (2 * 1000000u)
/* Threads per worker: one runs the worker, the others run such long slices. */
#define ISO_MAX_THREADS 32
/* A tenant idle this long gets a garbage collection that gives memory back. */
#define ISO_TRIM_IDLE_NS (1000ull * 1000000u)

/* fn->tier_data: what a deploy produced. The fields after `worker` belong to the
 * owning worker thread. */
struct iso_fn {
	struct iso_code *code;
	atomic_int worker;		/* owning worker index; -1 until first request */
	struct iso_tenant *instances;	/* live instances, linked by `sibling` */
	int ninstances;
	int retired;			/* drop instances as soon as they are idle */
	int code_refreshed;		/* caches remade after a request */
	unsigned ninstances_made;	/* cold starts so far */
	struct inv **waiting;		/* requests waiting for an instance (FIFO) */
	size_t nwaiting, waitcap;
};

/* A live instance of a function version: one isolate with the tenant's context. Owned
 * and touched only by its worker thread. */
struct iso_tenant {
	struct fn *fn;			/* referenced while the tenant lives */
	struct iso_vm *vm;
	size_t mem;			/* bytes at the end of its last request */
	long maps;			/* memory mappings it is estimated to hold */
	uint64_t last_used_ns;
	int trimmed;			/* collected since its last request */
	struct iso_call *call;		/* the request running in it, if any */
	struct iso_tenant *sibling;	/* next instance of the same function */
	struct iso_tenant *prev, *next;	/* worker's LRU list, most recent first */
};

/*
 * One invocation in flight on a worker: its fetch() and then its ctx.waitUntil() work.
 * Calls of different tenants interleave on the worker whenever one waits for a timer.
 */
struct iso_call {
	struct iso_call *next;		/* worker's list of calls */
	struct iso_worker *w;
	struct iso_tenant *tn;
	struct inv *inv;		/* NULL once answered (waitUntil work) */
	const char *fn_name;		/* the tenant holds the fn */
	char request_id[24];
	struct iso_io io;
	int draining;
	unsigned round;			/* last round of iso__calls_run() it ran in */
	int running;			/* in a slice, maybe on another thread */
	uint64_t deadline_ns, wake_ns, cpu_limit_ns, cpu_used_ns;
	uint64_t peak_mem;		/* heap in use, highest at the end of a slice */
};

enum iso_msg_kind { ISO_MSG_INVOKE, ISO_MSG_RETIRE };

struct iso_msg {
	enum iso_msg_kind kind;
	struct inv *inv;
	struct fn *fn;			/* ISO_MSG_RETIRE: referenced */
};

struct iso_tier;
struct iso_worker;
struct perf_event_mmap_page;

/* One OS thread of a worker. */
struct iso_thread {
	struct iso_interrupt handoff;	/* asks the thread to give its worker away */
	struct iso_worker *w;
	pthread_t thread;
	clockid_t cpu_clock;
	uint64_t cpu_mark_ns;		/* its CPU time at its last mark (iso__cpu_mark) */
	uint64_t mark_wall_ns;		/* CLOCK_MONOTONIC at that mark */
	uint64_t sync_wall_ns;		/* ... when the CPU clock was last read */
	uint32_t mark_seq;		/* switches->lock at that read */
	/* A perf event's page, whose lock word changes when the thread is switched
	 * out or in; NULL without perf events. */
	const struct perf_event_mmap_page *switches;
	/* Guarded by w->lock: JavaScript running under the watchdog. */
	struct iso_vm *watched;
	uint64_t cpu_start_ns, wall_start_ns, cpu_limit_ns, wall_deadline_ns;
	unsigned slice, asked;		/* slice count; the slice a hand-off was asked in */
	int detached;			/* gave the worker away during this slice */
	int pumping;			/* w->pumping when it did */
};

/*
 * A worker: a queue, a pool, tenants and calls, run by whichever of its threads holds
 * `run`. Normally that is always the same thread.
 */
struct iso_worker {
	struct iso_tier *tier;
	int idx;
	pthread_mutex_t run;

	pthread_mutex_t lock;		/* guards the queue, the threads and hand-offs */
	pthread_cond_t cond;		/* messages, stop, want_back */
	pthread_cond_t spare_cond;	/* handoffs, stop */
	struct iso_msg *q;
	size_t qhead, qlen, qcap;
	int stop;
	struct iso_thread threads[ISO_MAX_THREADS];
	int nthreads;
	int nspare;			/* threads waiting for a hand-off */
	int handoffs;			/* hand-offs no thread took yet */
	int nready;			/* threads that took one, waiting for `run` */
	int want_back;			/* detached threads whose slice ended */
	int ndetached;			/* threads in a slice without `run` */
	int cleaned;
	atomic_int ncalls;		/* calls in flight */

	/* The thread holding `run` only. */
	struct iso_vm **pool;
	int npool;
	struct iso_call *calls;		/* in flight, any order */
	unsigned round;
	struct fn **pumps;		/* functions whose waiting requests may start */
	size_t npumps, pumpcap;
	int pumping;
	struct iso_tenant *lru_head, *lru_tail;
	size_t mem;
	int untrimmed;			/* tenants used since their last trim */
	int nlive;			/* tenants on this worker */
	long maps;			/* their estimated memory mappings */
};

struct iso_tier {
	struct tier *t;
	atomic_int cancel;		/* the daemon stops: a deploy's esbuild ends */
	int nworkers;
	int pool_target;
	uint64_t budget_per_worker;
	int max_live_per_worker;	/* tenants, from vm.max_map_count */
	struct iso_worker *workers;
	atomic_uint next_worker;

	pthread_t watchdog;
	pthread_mutex_t wd_lock;
	pthread_cond_t wd_cond;
	int wd_stop;
	atomic_int nbusy;
	atomic_int wd_sleeping;		/* the watchdog waits for a wake-up */
	atomic_ullong wd_next_ns;	/* when it wakes next, CLOCK_MONOTONIC */
	int wd_kick;			/* under wd_lock: why it was woken early */
	uint64_t wd_short_until;	/* the watchdog's: 1 ms horizon until then */

	atomic_long live, pool_size, mem_bytes;
	atomic_ulong cold_starts, invocations, evictions, pool_misses, trims, handoffs;
	atomic_ulong code_refreshes;
	atomic_long threads;
	atomic_long trim_pending;
	atomic_ulong kills_cpu, kills_wall, kills_memory, kills_stack, exceptions;
};

/* tier.c */
void iso__deadline_after(struct timespec *ts, uint64_t ns);
uint64_t iso__cpu_mark(void);
uint64_t iso__cpu_marked(void);
void iso__watch_begin(struct iso_worker *w, struct iso_vm *vm, uint64_t cpu_limit_ns,
		      uint64_t wall_deadline);
void iso__watch_end(struct iso_worker *w);

/* tenant.c: the thread holding w->run only */
struct iso_vm *iso__pool_take(struct iso_worker *w);
void iso__pool_refill_one(struct iso_worker *w);
void iso__tenant_add(struct iso_worker *w, struct iso_tenant *tn);
void iso__tenant_touch(struct iso_worker *w, struct iso_tenant *tn);
/* mem: the tenant's heap bytes if measured since its JavaScript last ran, else 0
 * (reading V8's heap statistics walks every space: once per request is enough). */
void iso__tenant_idle(struct iso_worker *w, struct iso_tenant *tn, size_t mem);
void iso__tenant_drop(struct iso_worker *w, struct iso_tenant *tn);
void iso__tenant_account(struct iso_worker *w, struct iso_tenant *tn, size_t mem);
int iso__tenants_trim_one(struct iso_worker *w);
void iso__tenants_evict(struct iso_worker *w, struct iso_tenant *keep);

/* call.c: the thread holding w->run only */
void iso__invoke(struct iso_worker *w, struct inv *inv);
/* Steps every call that is due; returns the earliest wake-up time of the rest
 * (UINT64_MAX if none). */
uint64_t iso__calls_run(struct iso_worker *w);
/* Drops a function's idle instances; busy ones go when their call ends. */
void iso__fn_retire(struct iso_worker *w, struct fn *fn);
/* At stop: answers every call and queued request with 503 shutting_down. */
void iso__calls_abort(struct iso_worker *w);

/* prepare.c */
int iso__prepare(struct tier *t, struct fn *fn, char *err, size_t errlen);
/* bundle.c: bundles entry (in dir) into outfile with esbuild, sandboxed. 0 or -errno
 * with the reason for the user in err; -ECANCELED once *cancel is set. */
int iso__bundle(const char *dir, const char *entry, const char *outfile,
		const atomic_int *cancel, char *err, size_t errlen);
void iso__release(struct tier *t, struct fn *fn);

#endif
