/*
 * The isolate tier: workers that own V8 isolates, a pool of blank isolates per worker
 * refilled between requests, per-function tenants kept warm in LRU order under the
 * memory budget, and a watchdog thread that enforces CPU and wall time and hands a
 * worker to another of its threads while one slice of JavaScript runs long.
 *
 * Each function version is pinned to one worker on its first request. A worker's state
 * is touched only by the thread holding its `run` mutex; isolates move between the
 * worker's threads under v8::Locker (see the shim). The gateway's thread only queues
 * messages; JavaScript never runs on it.
 */
#include "isolate/iso.h"
#include "common/log.h"
#include "common/strbuf.h"

#include <errno.h>
#include <linux/perf_event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

/*
 * The watchdog does not tick at a fixed rate: it sleeps until the first moment a
 * running slice could need it. A slice that has run for less wall time than its CPU
 * budget cannot have used that budget, one that has run less than ISO_HANDOFF_NS is
 * not handed off, and wall deadlines are known. Past a threshold it looks again when
 * the slice's CPU could first exceed its budget (not sooner than ISO_WATCH_MIN_NS), or
 * every ISO_WATCH_NS for a hand-off waiting for work to arrive. It sleeps at most
 * ISO_WATCH_HORIZON_NS; a slice due sooner than the watchdog's next wake-up (a
 * function whose CPU budget is under the horizon) wakes it as it starts, and for a
 * second after that the horizon is ISO_WATCH_NS, so such slices wake it at most
 * once a second. At fixed 1 ms ticks the watchdog's wake-ups cost about 0.3 us of CPU
 * per request under load.
 */
#define ISO_WATCH_NS 1000000u
#define ISO_WATCH_MIN_NS 100000u
#define ISO_WATCH_HORIZON_NS ISO_HANDOFF_NS
/* The watchdog keeps watching this long after the last slice before it sleeps for
 * good, so a busy host never pays a wake-up system call per request. */
#define ISO_WATCH_LINGER_NS 1000000000ull

static uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

static uint64_t clock_ns(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

/* The worker thread this thread is, NULL on other threads. */
static __thread struct iso_thread *iso_self;

/*
 * A thread marks its CPU time once per slice of JavaScript, at the end: the slice is
 * charged what the thread used since its previous mark, which includes taking the
 * request off the queue. Work done for no request (idle steps, retiring, creating a
 * tenant) moves the mark.
 *
 * Reading a thread's CPU clock is a system call that takes the run-queue lock: about
 * 0.5 us here, a tenth of a warm request's CPU. A thread that has not been switched out
 * since its last mark used the wall time that passed (plus at most the interrupts and
 * hypervisor steal in between, which the CPU clock leaves out), and the kernel bumps
 * the lock word of a perf event's mapped page whenever the thread is switched out or
 * in. So a mark reads the clock only after a switch, or when the clock was last read
 * ISO_CPU_RESYNC_NS ago, which bounds how far the estimate can drift from the clock.
 * Such a read may land a little below the estimate it replaces, so callers clamp the
 * differences of marks at zero. Without perf events (a seccomp filter,
 * perf_event_paranoid 3) every mark reads it.
 */
#define ISO_CPU_RESYNC_NS 1000000u

static void switches_watch(struct iso_thread *th)
{
	struct perf_event_attr attr = {
		.type = PERF_TYPE_SOFTWARE,
		.size = sizeof(attr),
		.config = PERF_COUNT_SW_DUMMY,	/* counts nothing; only its page is used */
		.exclude_kernel = 1,
		.exclude_hv = 1,
	};
	long psize = sysconf(_SC_PAGESIZE);
	void *page;
	int fd;

	fd = (int)syscall(SYS_perf_event_open, &attr, 0, -1, -1, PERF_FLAG_FD_CLOEXEC);
	if (fd < 0)
		return;
	page = mmap(NULL, (size_t)psize, PROT_READ, MAP_SHARED, fd, 0);
	close(fd);	/* the mapping keeps the event */
	if (page != MAP_FAILED)
		th->switches = page;
}

static void switches_unwatch(struct iso_thread *th)
{
	if (th->switches)
		munmap((void *)th->switches, (size_t)sysconf(_SC_PAGESIZE));
	th->switches = NULL;
}

static uint32_t switches_seq(const struct iso_thread *th)
{
	return th->switches ? __atomic_load_n(&th->switches->lock, __ATOMIC_ACQUIRE) : 0;
}

uint64_t iso__cpu_mark(void)
{
	struct iso_thread *th = iso_self;
	uint64_t wall = clock_ns(CLOCK_MONOTONIC);
	uint32_t seq = switches_seq(th);

	if (th->switches && seq == th->mark_seq && wall - th->sync_wall_ns < ISO_CPU_RESYNC_NS) {
		th->cpu_mark_ns += wall - th->mark_wall_ns;
		th->mark_wall_ns = wall;
		return th->cpu_mark_ns;
	}
	/* seq was read before the clock: a switch after it shows at the next mark. */
	th->mark_seq = seq;
	th->mark_wall_ns = th->sync_wall_ns = wall;
	th->cpu_mark_ns = clock_ns(CLOCK_THREAD_CPUTIME_ID);
	return th->cpu_mark_ns;
}

uint64_t iso__cpu_marked(void)
{
	return iso_self->cpu_mark_ns;
}

/* ---- the watchdog ---- */

enum { ISO_KICK_BUSY = 1, ISO_KICK_DUE = 2 };

static void watchdog_kick(struct iso_tier *it, int why)
{
	pthread_mutex_lock(&it->wd_lock);
	it->wd_kick |= why;
	pthread_cond_signal(&it->wd_cond);
	pthread_mutex_unlock(&it->wd_lock);
}

void iso__watch_begin(struct iso_worker *w, struct iso_vm *vm, uint64_t cpu_limit_ns,
		      uint64_t wall_deadline)
{
	struct iso_tier *it = w->tier;
	struct iso_thread *th = iso_self;
	uint64_t due;

	pthread_mutex_lock(&w->lock);
	th->watched = vm;
	th->slice++;
	th->cpu_start_ns = th->cpu_mark_ns;
	th->wall_start_ns = clock_ns(CLOCK_MONOTONIC);
	th->cpu_limit_ns = cpu_limit_ns;
	th->wall_deadline_ns = wall_deadline;
	pthread_mutex_unlock(&w->lock);
	/* The first moment the watchdog may have to act on this slice. */
	due = min_u64(th->wall_start_ns + min_u64(cpu_limit_ns, ISO_HANDOFF_NS), wall_deadline);
	if (atomic_fetch_add(&it->nbusy, 1) == 0 && atomic_load(&it->wd_sleeping))
		watchdog_kick(it, ISO_KICK_BUSY);
	else if (due < atomic_load(&it->wd_next_ns))
		watchdog_kick(it, ISO_KICK_DUE);
}

/* After a slice that gave the worker away: take it back once its thread lets go. */
static void rejoin(struct iso_worker *w)
{
	pthread_mutex_lock(&w->lock);
	w->want_back++;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
	pthread_mutex_lock(&w->run);
	pthread_mutex_lock(&w->lock);
	w->want_back--;
	w->ndetached--;
	pthread_mutex_unlock(&w->lock);
	w->pumping = iso_self->pumping;
}

void iso__watch_end(struct iso_worker *w)
{
	struct iso_thread *th = iso_self;
	int detached;

	pthread_mutex_lock(&w->lock);
	th->watched = NULL;
	detached = th->detached;
	th->detached = 0;
	pthread_mutex_unlock(&w->lock);
	atomic_fetch_sub(&w->tier->nbusy, 1);
	if (detached)
		rejoin(w);
}

static void *thread_main(void *arg);
static void on_handoff(struct iso_interrupt *in);

/* Under w->lock: makes sure a thread will take `run` once it is let go. */
static int spare_ready(struct iso_worker *w)
{
	struct iso_thread *th;

	if (w->nready > 0)
		return 1;
	w->handoffs++;
	if (w->nspare >= w->handoffs) {
		pthread_cond_signal(&w->spare_cond);
		return 1;
	}
	th = &w->threads[w->nthreads];
	th->w = w;
	th->handoff.fn = on_handoff;
	if (w->nthreads == ISO_MAX_THREADS || w->stop ||
	    pthread_create(&th->thread, NULL, thread_main, th)) {
		w->handoffs--;
		return 0;
	}
	w->nthreads++;
	atomic_fetch_add(&w->tier->threads, 1);
	return 1;
}

/*
 * Runs inside the long slice's JavaScript, on its thread: gives the worker to another
 * thread so the queue, the pool and the other tenants are served meanwhile. The slice
 * keeps only its own isolate.
 */
static void on_handoff(struct iso_interrupt *in)
{
	struct iso_thread *th = (struct iso_thread *)in;
	struct iso_worker *w = th->w;
	struct iso_vm *vm;
	int go;

	if (th != iso_self)
		return;
	pthread_mutex_lock(&w->lock);
	vm = th->watched;
	go = vm && !th->detached && th->asked == th->slice && spare_ready(w);
	if (go) {
		th->detached = 1;
		w->ndetached++;
		/* The pump loop this slice runs in is parked on this thread's stack: the
		 * next holder of `run` pumps on its own. */
		th->pumping = w->pumping;
		w->pumping = 0;
	}
	pthread_mutex_unlock(&w->lock);
	if (!go)
		return;
	atomic_fetch_add(&w->tier->handoffs, 1);
	iso_v8_release(vm);
	pthread_mutex_unlock(&w->run);
}

/* Under w->lock: is anything else waiting for the worker? */
static int worker_has_work(struct iso_worker *w)
{
	return w->qlen || w->want_back || atomic_load(&w->ncalls) > 1;
}

/* Under w->lock: the slice's CPU time so far, read only once it has run as long as its
 * budget (a thread cannot use more CPU than wall time, and reading another thread's
 * CPU clock is a system call that takes that thread's run-queue lock). */
static uint64_t slice_cpu(const struct iso_thread *th, uint64_t now)
{
	uint64_t cpu;

	if (now - th->wall_start_ns <= th->cpu_limit_ns)
		return 0;
	cpu = clock_ns(th->cpu_clock);
	/* The mark may run ahead of the clock by a little (see iso__cpu_mark). */
	return cpu > th->cpu_start_ns ? cpu - th->cpu_start_ns : 0;
}

/* Under w->lock: acts on a slice past a limit; returns when to look at it again. */
static uint64_t watch_check(struct iso_thread *th, uint64_t now)
{
	struct iso_worker *w = th->w;
	uint64_t ran, cpu, next;

	if (!th->watched)
		return UINT64_MAX;
	ran = now - th->wall_start_ns;
	cpu = slice_cpu(th, now);
	if (cpu > th->cpu_limit_ns) {
		iso_vm_terminate(th->watched, ISO_CPU_LIMIT);
		return now + ISO_WATCH_NS;
	}
	if (now > th->wall_deadline_ns) {
		iso_vm_terminate(th->watched, ISO_WALL_LIMIT);
		return now + ISO_WATCH_NS;
	}
	/* CPU time grows no faster than wall time. */
	next = ran > th->cpu_limit_ns ?
	       now + (th->cpu_limit_ns - cpu > ISO_WATCH_MIN_NS ? th->cpu_limit_ns - cpu :
		      ISO_WATCH_MIN_NS) :
	       th->wall_start_ns + th->cpu_limit_ns + 1;
	next = min_u64(next, th->wall_deadline_ns + 1);
	if (th->detached || th->asked == th->slice)
		return next;
	if (ran > ISO_HANDOFF_NS && worker_has_work(w)) {
		th->asked = th->slice;
		iso_vm_interrupt(th->watched, &th->handoff);
		return next;
	}
	return min_u64(next, ran > ISO_HANDOFF_NS ? now + ISO_WATCH_NS :
				      th->wall_start_ns + ISO_HANDOFF_NS + 1);
}

/* Lowers *next to when the worker's slices need the watchdog again. */
static void watch_worker(struct iso_worker *w, uint64_t *next)
{
	int i;

	pthread_mutex_lock(&w->lock);
	for (i = 0; i < w->nthreads; i++)
		*next = min_u64(*next, watch_check(&w->threads[i], clock_ns(CLOCK_MONOTONIC)));
	pthread_mutex_unlock(&w->lock);
}

/* Under wd_lock: sleeps until next (CLOCK_MONOTONIC) or a slice due sooner kicks it. */
static void watchdog_nap(struct iso_tier *it, uint64_t next)
{
	struct timespec ts = { (time_t)(next / 1000000000u), (long)(next % 1000000000u) };

	atomic_store(&it->wd_next_ns, next);
	if (!it->wd_kick && !it->wd_stop)
		pthread_cond_timedwait(&it->wd_cond, &it->wd_lock, &ts);
	if (it->wd_kick & ISO_KICK_DUE)
		it->wd_short_until = clock_ns(CLOCK_MONOTONIC) + ISO_WATCH_LINGER_NS;
	it->wd_kick = 0;
}

static void *watchdog_main(void *arg)
{
	struct iso_tier *it = arg;
	uint64_t now, next, busy_at = clock_ns(CLOCK_MONOTONIC);
	int i;

	pthread_setname_np(pthread_self(), "iso-watchdog");
	pthread_mutex_lock(&it->wd_lock);
	while (!it->wd_stop) {
		now = clock_ns(CLOCK_MONOTONIC);
		if (atomic_load(&it->nbusy))
			busy_at = now;
		if (now - busy_at > ISO_WATCH_LINGER_NS) {
			/* Set before the last look at nbusy: a worker that raises nbusy
			 * after it sees the flag and signals under wd_lock. */
			atomic_store(&it->wd_sleeping, 1);
			if (!atomic_load(&it->nbusy) && !it->wd_kick)
				pthread_cond_wait(&it->wd_cond, &it->wd_lock);
			atomic_store(&it->wd_sleeping, 0);
			it->wd_kick = 0;
			busy_at = clock_ns(CLOCK_MONOTONIC);
			continue;
		}
		/* Published before the scan: a slice that starts after its worker was
		 * scanned compares its due time with at most this. */
		next = now + (now < it->wd_short_until ? ISO_WATCH_NS : ISO_WATCH_HORIZON_NS);
		atomic_store(&it->wd_next_ns, next);
		pthread_mutex_unlock(&it->wd_lock);
		for (i = 0; i < it->nworkers; i++)
			watch_worker(&it->workers[i], &next);
		pthread_mutex_lock(&it->wd_lock);
		watchdog_nap(it, next);
	}
	pthread_mutex_unlock(&it->wd_lock);
	return NULL;
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
		iso__pool_refill_one(w);
		return 1;
	}
	return w->untrimmed && iso__tenants_trim_one(w);
}

/* A CLOCK_REALTIME deadline ns from now, for pthread_cond_timedwait. */
void iso__deadline_after(struct timespec *ts, uint64_t ns)
{
	clock_gettime(CLOCK_REALTIME, ts);
	ts->tv_sec += ns / 1000000000u;
	ts->tv_nsec += ns % 1000000000u;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

enum pop { POP_STOP, POP_MSG, POP_YIELD };

/*
 * Waits for the next message. Meanwhile it runs calls whose timers are due and, when
 * no call is in flight, does idle work (off the request path: only when nothing is
 * waiting). A thread whose long slice ended wants the worker back: then it yields.
 */
static enum pop queue_pop(struct iso_worker *w, struct iso_msg *m)
{
	struct timespec until;
	uint64_t wake, now;

	pthread_mutex_lock(&w->lock);
	while (!w->qlen && !w->stop && !w->want_back) {
		pthread_mutex_unlock(&w->lock);
		wake = w->calls ? iso__calls_run(w) : UINT64_MAX;
		if (!w->calls && idle_step(w)) {
			iso__cpu_mark();
			pthread_mutex_lock(&w->lock);
			continue;
		}
		now = iso_v8_now_ns();
		pthread_mutex_lock(&w->lock);
		if (w->qlen || w->stop || w->want_back)
			break;
		if (wake != UINT64_MAX) {
			if (wake > now) {
				iso__deadline_after(&until, wake - now);
				pthread_cond_timedwait(&w->cond, &w->lock, &until);
			}
		} else if (w->untrimmed) {
			/* Tenants are waiting to become idle enough to trim. */
			iso__deadline_after(&until, 100 * 1000000u);
			pthread_cond_timedwait(&w->cond, &w->lock, &until);
		} else {
			pthread_cond_wait(&w->cond, &w->lock);
		}
	}
	if (w->stop || w->want_back) {
		pthread_mutex_unlock(&w->lock);
		return w->stop ? POP_STOP : POP_YIELD;
	}
	*m = w->q[w->qhead];
	w->qhead = (w->qhead + 1) % w->qcap;
	w->qlen--;
	pthread_mutex_unlock(&w->lock);
	return POP_MSG;
}

static void handle_retire(struct iso_worker *w, struct fn *fn)
{
	struct iso_fn *f = fn->tier_data;

	if (f)
		iso__fn_retire(w, fn);
	fn_unref(fn);
}

static void worker_cleanup(struct iso_worker *w)
{
	struct iso_msg m;

	iso__calls_abort(w);
	while (w->lru_head)
		iso__tenant_drop(w, w->lru_head);
	while (w->npool) {
		iso_vm_free(w->pool[--w->npool]);
		atomic_fetch_sub(&w->tier->pool_size, 1);
	}
	/* Messages that arrived after stop: fail them so the gateway can answer. */
	pthread_mutex_lock(&w->lock);
	while (w->qlen) {
		m = w->q[w->qhead];
		w->qhead = (w->qhead + 1) % w->qcap;
		w->qlen--;
		pthread_mutex_unlock(&w->lock);
		if (m.kind == ISO_MSG_RETIRE) {
			fn_unref(m.fn);
		} else {
			inv_fail(m.inv, 503, "shutting_down", "the isolate tier is stopping");
			inv_done(m.inv);
		}
		pthread_mutex_lock(&w->lock);
	}
	pthread_mutex_unlock(&w->lock);
}

/* Serves the worker until it stops or a thread wants it back. */
static enum pop serve(struct iso_worker *w)
{
	struct iso_msg m;
	enum pop r;

	while ((r = queue_pop(w, &m)) == POP_MSG) {
		if (m.kind == ISO_MSG_INVOKE) {
			iso__invoke(w, m.inv);
		} else {
			handle_retire(w, m.fn);
			iso__cpu_mark();
		}
		/* Under a steady stream of messages, calls waiting on timers still run. */
		if (w->calls)
			iso__calls_run(w);
	}
	return r;
}

/* Waits for a hand-off (the first thread finds one waiting), then holds `run`.
 * 0 means stop. */
static int take_run(struct iso_worker *w)
{
	pthread_mutex_lock(&w->lock);
	w->nspare++;
	while (!w->handoffs && !w->stop)
		pthread_cond_wait(&w->spare_cond, &w->lock);
	w->nspare--;
	if (!w->handoffs) {
		pthread_mutex_unlock(&w->lock);
		return 0;
	}
	w->handoffs--;
	w->nready++;
	pthread_mutex_unlock(&w->lock);
	pthread_mutex_lock(&w->run);
	pthread_mutex_lock(&w->lock);
	w->nready--;
	pthread_mutex_unlock(&w->lock);
	return 1;
}

/*
 * Every thread of a worker runs this. One holds `run` and serves the worker; when its
 * JavaScript runs long while other work waits, on_handoff() passes `run` to a spare
 * thread, and the long slice's thread takes it back when the slice ends. The worker's
 * state is only ever touched by the holder of `run`.
 */
static void *thread_main(void *arg)
{
	struct iso_thread *th = arg;
	struct iso_worker *w = th->w;
	int last;

	iso_self = th;
	pthread_setname_np(pthread_self(), "iso-worker");
	pthread_getcpuclockid(pthread_self(), &th->cpu_clock);
	switches_watch(th);
	iso__cpu_mark();
	while (take_run(w)) {
		if (serve(w) == POP_STOP) {
			/* The last thread out cleans up; slices still running elsewhere
			 * come back for their calls first. */
			pthread_mutex_lock(&w->lock);
			last = !w->ndetached && !w->cleaned;
			w->cleaned |= last;
			pthread_mutex_unlock(&w->lock);
			if (last)
				worker_cleanup(w);
		}
		iso_v8_release(NULL);
		pthread_mutex_unlock(&w->run);
	}
	iso_v8_release(NULL);
	switches_unwatch(th);
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

static long read_max_map_count(void)
{
	long maps = 65530;
	FILE *f = fopen("/proc/sys/vm/max_map_count", "r");

	if (f) {
		if (fscanf(f, "%ld", &maps) != 1)
			maps = 65530;
		fclose(f);
	}
	return maps;
}

/* Live isolates per worker that keep the process under vm.max_map_count (isolates
 * with bigger heaps count as several; see tenant.c). */
static int max_live(long maps, int nworkers, int pool)
{
	long n = (maps - ISO_MAPS_RESERVED) / ISO_MAPS_PER_ISOLATE / nworkers - pool;

	return n > 16 ? (int)n : 16;
}

/* Once at start: the operator learns why tenants beyond the cap keep cold-starting. */
static void warn_map_count(long maps, long cap)
{
	if (cap >= ISO_WANT_LIVE || getenv("STOKE_ISO_MAX_LIVE"))
		return;
	log_warn("isolate tier: vm.max_map_count is %ld, so at most %ld isolates stay live "
		 "(the rest are evicted and cold-start again); for %d run scripts/setup as "
		 "root or sysctl -w vm.max_map_count=%d", maps, cap, ISO_WANT_LIVE,
		 ISO_WANT_MAP_COUNT);
}

static void worker_init(struct iso_tier *it, int i)
{
	struct iso_worker *w = &it->workers[i];

	w->tier = it;
	w->idx = i;
	pthread_mutex_init(&w->run, NULL);
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->cond, NULL);
	pthread_cond_init(&w->spare_cond, NULL);
	w->pool = calloc(it->pool_target ? it->pool_target : 1, sizeof(*w->pool));
}

/* The worker's first thread, which finds a hand-off waiting. */
static void worker_launch(struct iso_worker *w)
{
	pthread_mutex_lock(&w->lock);
	spare_ready(w);
	pthread_mutex_unlock(&w->lock);
}

static int iso_start(struct tier *t)
{
	struct iso_tier *it;
	pthread_condattr_t cattr;
	char err[1024];
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN), maps;
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
	maps = read_max_map_count();
	it->max_live_per_worker = env_int("STOKE_ISO_MAX_LIVE",
					  max_live(maps, it->nworkers, it->pool_target) *
					  it->nworkers) / it->nworkers;
	warn_map_count(maps, (long)it->max_live_per_worker * it->nworkers);
	it->workers = calloc(it->nworkers, sizeof(*it->workers));
	pthread_mutex_init(&it->wd_lock, NULL);
	pthread_condattr_init(&cattr);
	pthread_condattr_setclock(&cattr, CLOCK_MONOTONIC);
	pthread_cond_init(&it->wd_cond, &cattr);
	pthread_condattr_destroy(&cattr);
	for (i = 0; i < it->nworkers; i++)
		worker_init(it, i);
	t->priv = it;
	pthread_create(&it->watchdog, NULL, watchdog_main, it);
	for (i = 0; i < it->nworkers; i++)
		worker_launch(&it->workers[i]);
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
	static const char *const limits[] = { "cpu", "wall", "memory", "stack" };
	long long kills[] = { (long long)atomic_load(&it->kills_cpu),
			      (long long)atomic_load(&it->kills_wall),
			      (long long)atomic_load(&it->kills_memory),
			      (long long)atomic_load(&it->kills_stack) };
	size_t i;

	sb_metric(out, "stoke_isolate_live", "gauge", atomic_load(&it->live),
		  "Tenant isolates alive (warm or idle).");
	sb_metric(out, "stoke_isolate_pool_size", "gauge", atomic_load(&it->pool_size),
		  "Blank isolates ready for cold starts.");
	sb_metric(out, "stoke_isolate_live_max", "gauge",
		  (long long)it->max_live_per_worker * it->nworkers,
		  "Live isolates the process can hold (vm.max_map_count).");
	sb_metric(out, "stoke_isolate_memory_bytes", "gauge", atomic_load(&it->mem_bytes),
		  "Heap and ArrayBuffer bytes of tenant isolates.");
	sb_metric(out, "stoke_isolate_snapshot_bytes", "gauge",
		  (long long)iso_v8_snapshot_size(), "Size of the runtime's startup snapshot.");
	sb_metric(out, "stoke_isolate_cold_starts_total", "counter",
		  (long long)atomic_load(&it->cold_starts), "Tenants loaded for a request.");
	sb_metric(out, "stoke_isolate_pool_misses_total", "counter",
		  (long long)atomic_load(&it->pool_misses),
		  "Cold starts that found the pool empty and built an isolate.");
	sb_metric(out, "stoke_isolate_invocations_total", "counter",
		  (long long)atomic_load(&it->invocations), "Requests the tier received.");
	sb_metric(out, "stoke_isolate_evictions_total", "counter",
		  (long long)atomic_load(&it->evictions),
		  "Idle tenants dropped for the memory budget or the isolate cap.");
	sb_metric(out, "stoke_isolate_idle_trims_total", "counter",
		  (long long)atomic_load(&it->trims), "Idle tenants whose heaps were shrunk.");
	sb_metric(out, "stoke_isolate_trim_pending", "gauge", atomic_load(&it->trim_pending),
		  "Tenants waiting to become idle enough to shrink.");
	sb_metric(out, "stoke_isolate_code_refreshes_total", "counter",
		  (long long)atomic_load(&it->code_refreshes),
		  "Code caches remade after a function's first request.");
	sb_metric(out, "stoke_isolate_threads", "gauge", atomic_load(&it->threads),
		  "Worker threads, including those added for hand-offs.");
	sb_metric(out, "stoke_isolate_handoffs_total", "counter",
		  (long long)atomic_load(&it->handoffs),
		  "Long slices that handed their worker to another thread.");
	sb_metric(out, "stoke_isolate_exceptions_total", "counter",
		  (long long)atomic_load(&it->exceptions), "Requests ended by an exception.");
	sb_metric_head(out, "stoke_isolate_limit_kills_total", "counter",
		      "Requests stopped by a limit.");
	for (i = 0; i < sizeof(limits) / sizeof(limits[0]); i++)
		sb_printf(out, "stoke_isolate_limit_kills_total{limit=\"%s\"} %lld\n", limits[i],
			  kills[i]);
}

static void worker_stop(struct iso_worker *w)
{
	int i;

	pthread_mutex_lock(&w->lock);
	w->stop = 1;
	for (i = 0; i < w->nthreads; i++)
		if (w->threads[i].watched)
			iso_vm_terminate(w->threads[i].watched, ISO_WALL_LIMIT);
	pthread_cond_broadcast(&w->cond);
	pthread_cond_broadcast(&w->spare_cond);
	pthread_mutex_unlock(&w->lock);
}

/* No thread starts after stop, so nthreads is final. */
static void worker_join(struct iso_worker *w)
{
	int i, n;

	pthread_mutex_lock(&w->lock);
	n = w->nthreads;
	pthread_mutex_unlock(&w->lock);
	for (i = 0; i < n; i++)
		pthread_join(w->threads[i].thread, NULL);
}

/* The daemon stops once its grace is over: a deploy's esbuild ends now. */
static void iso_cancel(struct tier *t)
{
	struct iso_tier *it = t->priv;

	if (it)
		atomic_store(&it->cancel, 1);
}

static void iso_stop(struct tier *t)
{
	struct iso_tier *it = t->priv;
	int i;

	if (!it)
		return;
	for (i = 0; i < it->nworkers; i++)
		worker_stop(&it->workers[i]);
	for (i = 0; i < it->nworkers; i++)
		worker_join(&it->workers[i]);
	pthread_mutex_lock(&it->wd_lock);
	it->wd_stop = 1;
	pthread_cond_signal(&it->wd_cond);
	pthread_mutex_unlock(&it->wd_lock);
	pthread_join(it->watchdog, NULL);
	for (i = 0; i < it->nworkers; i++) {
		free(it->workers[i].q);
		free(it->workers[i].pool);
		free(it->workers[i].pumps);
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
	.cancel = iso_cancel,
	.stop = iso_stop,
};
