/*
 * The micro-VM tier as the daemon sees it (vm_tier_ops): worker threads take
 * invocations off a queue, each runs on a warm VM of the same function version or on a
 * freshly started one, and idle VMs are kept per version within a memory budget. The
 * gateway's event loop only ever enqueues.
 */
#include "vm_proc.h"
#include "vm_tier_snap.h"
#include "common/invoke.h"
#include "common/log.h"
#include "common/strbuf.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_WORKERS 256
/* Workers mostly wait on their VM, so there are many more than cores. */
#define MIN_WORKERS 64
#define MAX_IDLE_PER_FN 8
#define MAX_ENOSYS_NAMES 32
/* A cold start's budget: boot happens before the VMM's own per-request clock starts. */
#define BOOT_ALLOWANCE_MS 10000
/* Backstop past wall_ms for the VMM to report its own timeout first. */
#define WALL_GRACE_MS 1000
/* Idle VMs older than this are stopped (scale to zero); $STOKE_VM_IDLE_TTL_S overrides. */
#define IDLE_TTL_S 300

struct enosys_count {
	char name[24];
	uint64_t count;
};

/* fn->tier_data: one function version. */
struct vm_fn {
	pthread_mutex_t lock;
	struct vm_launch launch;
	struct vm_proc *idle;
	int nidle;
	int retired;
	char name[64];
	char native_dir[4096];	/* compiled program of a C-source native function, or "" */
	struct enosys_count enosys[MAX_ENOSYS_NAMES];
	struct vm_tier_snap snap;	/* cold starts restore from it when ready */
	struct vm_proc *shell;		/* restored ahead, parked before its first read */
	_Atomic uint64_t last_used_ns;	/* last invocation: shells follow the idle TTL */
	struct vm_fn *next;	/* tier's list, for metrics and stop */
};

struct job {
	struct inv *inv;
	struct job *next;
};

struct vm_tier {
	pthread_t workers[MAX_WORKERS];
	int nworkers;
	pthread_t reaper;
	pthread_cond_t reaper_cond;	/* apart from cond: a job must wake a worker */
	int has_reaper;
	uint64_t idle_ttl_ns;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct job *head, *tail;
	int stopping;
	atomic_int cancel;		/* set by stop: running exchanges end their VMs */
	int jail;
	int snapshots;			/* restore python3 cold starts ($STOKE_VM_SNAPSHOTS) */
	const char *vmm_path;
	uint64_t memory_budget;
	char snap_dir[4096];
	atomic_uint snap_seq;
	struct snap_id dead_layers[16];	/* of released versions, for the reaper to delete */
	int ndead;
	struct vm_fn *fns;
	struct vm_proc *dying;		/* retired VMs the reaper stops off the caller's thread */
	struct vm_launch generic_launch;	/* generic shell: jail and VM, no function yet */
	struct vm_proc *generic;	/* one parked, for a restore with no shell of its own */
	atomic_ullong idle_bytes;
	atomic_int live;
	atomic_ullong boots, boot_ns, crashes, timeouts, invocations;
	atomic_ullong restores, restore_failures, generic_starts;
};

static struct vm_tier *tier_of(struct tier *t)
{
	return t->priv;
}

struct stats_ctx {
	struct vm_fn *vf;
	struct inv *inv;
};

static void on_stats(void *arg, const char *json, size_t len)
{
	struct stats_ctx *ctx = arg;
	struct vm_fn *vf = ctx->vf;
	cJSON *j = cJSON_ParseWithLength(json, len), *e;
	int i;

	e = cJSON_GetObjectItemCaseSensitive(j, "cpu_ns");
	if (cJSON_IsNumber(e))
		ctx->inv->cpu_ns = (uint64_t)e->valuedouble;
	pthread_mutex_lock(&vf->lock);
	cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(j, "enosys")) {
		for (i = 0; i < MAX_ENOSYS_NAMES; i++) {
			struct enosys_count *c = &vf->enosys[i];

			if (!c->name[0])
				snprintf(c->name, sizeof(c->name), "%s", e->string);
			if (!strcmp(c->name, e->string)) {
				c->count += (uint64_t)e->valuedouble;
				break;
			}
		}
	}
	pthread_mutex_unlock(&vf->lock);
	cJSON_Delete(j);
}

static struct vm_proc *take_idle(struct vm_fn *vf)
{
	struct vm_proc *p;

	pthread_mutex_lock(&vf->lock);
	p = vf->idle;
	if (p) {
		vf->idle = p->next;
		vf->nidle--;
	}
	pthread_mutex_unlock(&vf->lock);
	return p;
}

static void drop(struct vm_tier *vt, struct vm_proc *p)
{
	vm_proc_kill(p);
	free(p);
	atomic_fetch_sub(&vt->live, 1);
}

/* Keeps a VM warm for the next request, unless the version is gone or memory is short. */
static void put_idle(struct tier *t, struct vm_fn *vf, struct vm_proc *p)
{
	struct vm_tier *vt = tier_of(t);
	uint64_t bytes = (uint64_t)p->mem_mb << 20;
	int keep;

	pthread_mutex_lock(&vf->lock);
	keep = !vf->retired && !vt->stopping && vf->nidle < MAX_IDLE_PER_FN &&
	       atomic_load(&vt->idle_bytes) + bytes <= t->memory_budget;
	if (keep) {
		p->idle_since_ns = vm_now_ns();
		p->next = vf->idle;
		vf->idle = p;
		vf->nidle++;
		atomic_fetch_add(&vt->idle_bytes, bytes);
	}
	pthread_mutex_unlock(&vf->lock);
	if (!keep)
		drop(vt, p);
}

/*
 * Unparks vf's shell to be stopped with the idle VMs. A parked shell counts in
 * idle_bytes like an idle VM; whoever stops it takes it off that count.
 */
static struct vm_proc *take_parked(struct vm_fn *vf)
{
	struct vm_proc *p;

	pthread_mutex_lock(&vf->lock);
	p = vf->shell;
	vf->shell = NULL;
	pthread_mutex_unlock(&vf->lock);
	return p;
}

/* A pre-restored VM of vf, if one is parked; the reaper parks the next one. */
static struct vm_proc *take_shell(struct vm_tier *vt, struct vm_fn *vf)
{
	struct vm_proc *p;

	pthread_mutex_lock(&vf->lock);
	p = vf->shell;
	vf->shell = NULL;
	pthread_mutex_unlock(&vf->lock);
	if (!p)
		return NULL;
	atomic_fetch_sub(&vt->idle_bytes, (uint64_t)p->mem_mb << 20);
	atomic_fetch_add(&vt->restores, 1);
	pthread_mutex_lock(&vt->lock);
	pthread_cond_signal(&vt->reaper_cond);
	pthread_mutex_unlock(&vt->lock);
	return p;
}

/*
 * Parks one restored VM per version whose snapshot has its working set: a cold start
 * then only sends the request (about 1 ms) instead of spawning and restoring (about
 * 15 ms of process, jail and VM creation). Called with vt->lock held, which keeps vf
 * alive (release unlinks it under that lock).
 */
static void park_shell(struct vm_tier *vt, struct vm_fn *vf)
{
	const struct vm_launch *l;
	struct vm_proc *p;

	/* Scale to zero: no shell for a version not invoked within the idle TTL. */
	if (!vt->snapshots || vt->stopping || vf->retired || vf->shell ||
	    vm_now_ns() - atomic_load(&vf->last_used_ns) > vt->idle_ttl_ns ||
	    !atomic_load(&vf->snap.ws_ready) ||
	    atomic_load(&vt->idle_bytes) + ((uint64_t)vf->launch.mem_mb << 20) >
	    vt->memory_budget)
		return;
	l = vm_tier_snap_shell_launch(&vf->snap);
	p = l ? calloc(1, sizeof(*p)) : NULL;
	if (!p)
		return;
	if (vm_proc_spawn(p, l, vt->vmm_path)) {
		free(p);
		return;
	}
	p->restored = 1;
	atomic_fetch_add(&vt->live, 1);
	atomic_fetch_add(&vt->idle_bytes, (uint64_t)p->mem_mb << 20);
	pthread_mutex_lock(&vf->lock);
	vf->shell = p;
	pthread_mutex_unlock(&vf->lock);
}

/*
 * Keeps one generic shell parked (process, jail and VM of the default size, waiting
 * for a launch) while a version with a snapshot was invoked within the idle TTL
 * (wanted): a restore of a version with no shell of its own then skips spawning (10-20
 * ms here). Counted in idle_bytes like a shell. Called with vt->lock held; returns a
 * shell to stop when none is wanted any more.
 */
static struct vm_proc *park_generic(struct vm_tier *vt, int wanted)
{
	uint64_t bytes = (uint64_t)vt->generic_launch.mem_mb << 20;
	struct vm_proc *p = vt->generic;

	if (!wanted || vt->stopping) {
		vt->generic = NULL;
		if (p)
			p->next = NULL;
		return p;
	}
	if (!vt->snapshots || p || atomic_load(&vt->idle_bytes) + bytes > vt->memory_budget)
		return NULL;
	p = calloc(1, sizeof(*p));
	if (!p || vm_proc_spawn(p, &vt->generic_launch, vt->vmm_path)) {
		free(p);
		return NULL;
	}
	atomic_fetch_add(&vt->live, 1);
	atomic_fetch_add(&vt->idle_bytes, bytes);
	vt->generic = p;
	return NULL;
}

/* The parked generic shell, launched with l, when it fits l's sizes. */
static struct vm_proc *take_generic(struct vm_tier *vt, const struct vm_launch *l)
{
	struct vm_proc *p = NULL;

	pthread_mutex_lock(&vt->lock);
	if (l->mem_mb == vt->generic_launch.mem_mb && l->tmp_mb == vt->generic_launch.tmp_mb) {
		p = vt->generic;
		vt->generic = NULL;
		pthread_cond_signal(&vt->reaper_cond);
	}
	pthread_mutex_unlock(&vt->lock);
	if (p)
		atomic_fetch_sub(&vt->idle_bytes, (uint64_t)p->mem_mb << 20);
	if (p && vm_proc_launch(p, l)) {
		drop(vt, p);
		return NULL;
	}
	if (p)
		atomic_fetch_add(&vt->generic_starts, 1);
	return p;
}

static struct vm_proc *spawn_vm(struct vm_tier *vt, const struct vm_launch *l, int *err)
{
	struct vm_proc *p = calloc(1, sizeof(*p));

	if (!p) {
		*err = -ENOMEM;
		return NULL;
	}
	*err = vm_proc_spawn(p, l, vt->vmm_path);
	if (*err) {
		free(p);
		return NULL;
	}
	atomic_fetch_add(&vt->live, 1);
	return p;
}

static struct vm_proc *get_vm(struct tier *t, struct vm_fn *vf, struct inv *inv, int *err)
{
	struct vm_tier *vt = tier_of(t);
	struct vm_proc *p = take_idle(vf);
	const struct vm_launch *l;

	if (p) {
		atomic_fetch_sub(&vt->idle_bytes, (uint64_t)p->mem_mb << 20);
		inv->cold = 0;
		return p;
	}
	p = take_shell(vt, vf);
	if (p) {
		inv->cold = 1;
		return p;
	}
	l = vt->snapshots ? vm_tier_snap_launch(&vf->snap) : NULL;
	p = l ? take_generic(vt, l) : NULL;
	if (!p && !(p = spawn_vm(vt, l ? l : &vf->launch, err)))
		return NULL;
	p->restored = l != NULL;
	atomic_fetch_add(p->restored ? &vt->restores : &vt->boots, 1);
	inv->cold = 1;
	return p;
}

static void report_crash(struct vm_tier *vt, struct inv *inv, struct vm_proc *p, int status)
{
	const char *last = p->tail_len ? p->tail : "";
	const char *nl;
	char how[64];

	/* The last stderr line usually names the fault or the uncaught exception. */
	while ((nl = strchr(last, '\n')) && nl[1])
		last = nl + 1;
	if (WIFSIGNALED(status))
		snprintf(how, sizeof(how), "killed by signal %d", WTERMSIG(status));
	else if (WEXITSTATUS(status) > 128 && WEXITSTATUS(status) < 125 + 65)
		/* stoke-vmm reports a guest fault as 128 + the signal Linux would send */
		snprintf(how, sizeof(how), "program killed by signal %d", WEXITSTATUS(status) - 128);
	else
		snprintf(how, sizeof(how), "exited with status %d", WEXITSTATUS(status));
	atomic_fetch_add(&vt->crashes, 1);
	inv_fail(inv, 502, "crash", "the function's VM %s: %.200s", how, last);
}

static void run_invocation(struct tier *t, struct inv *inv)
{
	struct vm_tier *vt = tier_of(t);
	struct vm_fn *vf = inv->fn->tier_data;
	struct stats_ctx ctx = { vf, inv };
	struct vm_hooks hooks = { on_stats, &ctx, &vt->cancel };
	struct vm_proc *p;
	uint64_t t0 = vm_now_ns();
	uint32_t budget;
	int err = 0, status;

	atomic_fetch_add(&vt->invocations, 1);
	if (vf)
		atomic_store(&vf->last_used_ns, vm_now_ns());
	if (!vf) {
		inv_fail(inv, 500, "internal", "function version was not prepared for the vm tier");
		return;
	}
	p = get_vm(t, vf, inv, &err);
	if (!p) {
		inv_fail(inv, 503, "vm_start", "cannot start a VM: %s", strerror(-err));
		return;
	}
	budget = vf->launch.wall_ms + WALL_GRACE_MS + (inv->cold ? BOOT_ALLOWANCE_MS : 0);
	switch (vm_proc_invoke(p, inv, budget, &hooks, &status)) {
	case VM_OK:
		if (inv->cold)
			atomic_fetch_add(&vt->boot_ns, vm_now_ns() - t0);
		put_idle(t, vf, p);
		return;
	case VM_TIMEOUT:
		atomic_fetch_add(&vt->timeouts, 1);
		inv_fail(inv, 504, "timeout", "the function ran past its wall-time limit of %u ms",
			 vf->launch.wall_ms);
		break;
	case VM_CRASHED:
		/* The VMM itself failed (125) on a restore: later cold starts boot. */
		if (p->restored && WIFEXITED(status) && WEXITSTATUS(status) == 125) {
			vf->snap.ready = 0;
			atomic_fetch_add(&vt->restore_failures, 1);
		}
		report_crash(vt, inv, p, status);
		break;
	case VM_CANCELLED:
		inv_fail(inv, 503, "shutting_down", "the daemon is stopping");
		break;
	case VM_FAILED:
		inv_fail(inv, 500, "internal", "out of memory building the request");
		break;
	}
	drop(vt, p);
}

/* Unlinks the idle VMs of vf that have been idle since before cutoff. */
static struct vm_proc *take_expired(struct vm_fn *vf, uint64_t cutoff)
{
	struct vm_proc **pp, *p, *expired = NULL;

	pthread_mutex_lock(&vf->lock);
	for (pp = &vf->idle; (p = *pp);) {
		if (p->idle_since_ns >= cutoff) {
			pp = &p->next;
			continue;
		}
		*pp = p->next;
		vf->nidle--;
		p->next = expired;
		expired = p;
	}
	pthread_mutex_unlock(&vf->lock);
	return expired;
}

static void reap_idle(struct vm_tier *vt)
{
	struct vm_proc *expired = NULL, *p, *last;
	uint64_t cutoff = vm_now_ns() - vt->idle_ttl_ns;
	struct vm_fn *vf;
	int restoring = 0;

	pthread_mutex_lock(&vt->lock);
	expired = vt->dying;
	vt->dying = NULL;
	for (vf = vt->fns; vf; vf = vf->next) {
		vm_tier_snap_tick(&vf->snap);
		park_shell(vt, vf);
		restoring |= vf->snap.ready && atomic_load(&vf->last_used_ns) >= cutoff;
		p = take_expired(vf, cutoff);
		if (atomic_load(&vf->last_used_ns) < cutoff && (last = take_parked(vf))) {
			last->next = p;
			p = last;
		}
		for (last = p; last && last->next; last = last->next)
			;
		if (last) {
			last->next = expired;
			expired = p;
		}
	}
	if ((p = park_generic(vt, restoring))) {
		p->next = expired;
		expired = p;
	}
	pthread_mutex_unlock(&vt->lock);
	/* Stopping waits for the processes: do it outside every lock. */
	while ((p = expired)) {
		expired = p->next;
		atomic_fetch_sub(&vt->idle_bytes, (uint64_t)p->mem_mb << 20);
		drop(vt, p);
	}
}

/* Deletes released versions' layers and their pages (gc locks the store: not on the loop). */
static void collect_layers(struct vm_tier *vt)
{
	struct snap_id ids[16];
	char store[4200];
	int n;

	pthread_mutex_lock(&vt->lock);
	n = vt->ndead;
	memcpy(ids, vt->dead_layers, (size_t)n * sizeof(ids[0]));
	vt->ndead = 0;
	pthread_mutex_unlock(&vt->lock);
	if (!n)
		return;
	snprintf(store, sizeof(store), "%s/store", vt->snap_dir);
	vm_tier_snap_collect(store, ids, n);
}

static void *reaper(void *arg)
{
	struct vm_tier *vt = arg;
	struct timespec until;
	int stop = 0;

	while (!stop) {
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += 1;
		pthread_mutex_lock(&vt->lock);
		if (!vt->stopping)
			pthread_cond_timedwait(&vt->reaper_cond, &vt->lock, &until);
		stop = vt->stopping;
		pthread_mutex_unlock(&vt->lock);
		if (!stop)
			reap_idle(vt);
		collect_layers(vt);
	}
	return NULL;
}

static void *worker(void *arg)
{
	struct tier *t = arg;
	struct vm_tier *vt = tier_of(t);
	struct job *j;

	for (;;) {
		pthread_mutex_lock(&vt->lock);
		while (!vt->head && !vt->stopping)
			pthread_cond_wait(&vt->cond, &vt->lock);
		j = vt->head;
		if (j) {
			vt->head = j->next;
			if (!vt->head)
				vt->tail = NULL;
		}
		pthread_mutex_unlock(&vt->lock);
		if (!j)
			return NULL;
		run_invocation(t, j->inv);
		inv_done(j->inv);
		free(j);
	}
}

static int vm_start(struct tier *t)
{
	struct vm_tier *vt = calloc(1, sizeof(*vt));
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int i, r;

	if (!vt)
		return -ENOMEM;
	pthread_mutex_init(&vt->lock, NULL);
	pthread_cond_init(&vt->cond, NULL);
	pthread_cond_init(&vt->reaper_cond, NULL);
	/*
	 * One worker serves one VM exchange at a time and mostly waits on it: the count
	 * bounds how many VM requests run at once, so it is far above the core count.
	 */
	vt->nworkers = t->nworkers > MIN_WORKERS ? t->nworkers : MIN_WORKERS;
	if (vt->nworkers < ncpu * 4)
		vt->nworkers = (int)ncpu * 4;
	if (vt->nworkers > MAX_WORKERS)
		vt->nworkers = MAX_WORKERS;
	/* Namespaces, cgroups and the privilege drop need root; without it run unjailed. */
	vt->jail = geteuid() == 0 && !getenv("STOKE_VM_NO_JAIL");
	vt->idle_ttl_ns = (getenv("STOKE_VM_IDLE_TTL_S") ?
			   strtoull(getenv("STOKE_VM_IDLE_TTL_S"), NULL, 10) : IDLE_TTL_S) *
			  1000000000ULL;
	vt->vmm_path = t->vmm_path;
	vt->memory_budget = t->memory_budget;
	/* The manifest's default sizes: most versions fit the generic shell. */
	r = vm_launch_shell(&vt->generic_launch, t->vmm_path, 256, 64, vt->jail);
	if (r)
		return r;
	/* On unless $STOKE_VM_SNAPSHOTS=0 (the whole e2e suite passes either way). */
	vt->snapshots = !getenv("STOKE_VM_SNAPSHOTS") ||
			strcmp(getenv("STOKE_VM_SNAPSHOTS"), "0") != 0;
	snprintf(vt->snap_dir, sizeof(vt->snap_dir), "%s/vm-snapshots", t->data_dir);
	t->priv = vt;
	r = pthread_create(&vt->reaper, NULL, reaper, vt);
	if (r)
		return -r;
	vt->has_reaper = 1;
	for (i = 0; i < vt->nworkers; i++) {
		r = pthread_create(&vt->workers[i], NULL, worker, t);
		if (r) {
			vt->nworkers = i;
			return -r;
		}
	}
	return 0;
}

/*
 * Snapshot of a python3 version, taken at deploy so that no request waits for it. A
 * runtime that exits before its first read could not import the function (a syntax
 * error, no handler): that fails the deploy with the runtime's message. Any other
 * failure leaves the version booting cold, as without snapshots.
 */
static int take_snapshot(struct tier *t, struct vm_fn *vf, const struct fn *fn, char *err,
			 size_t errlen)
{
	struct vm_tier *vt = tier_of(t);
	const char *env[] = { "--env=STOKE_SNAPSHOT=1", NULL };
	struct vm_launch l;
	char key[160], why[1100] = "";
	int r;

	if (!vt->snapshots || strcmp(fn->runtime, "python3"))
		return 0;
	/* The bootstrap calls before_snapshot/after_restore and reseeds under this. */
	if (vm_launch_with(&l, &vf->launch, env) ||
	    vm_launch_with(&vf->launch, &l, (const char *const[]){ NULL }))
		return 0;
	snprintf(key, sizeof(key), "%.64s.%lld.%d.%u", fn->name, (long long)fn->version,
		 (int)getpid(), atomic_fetch_add(&vt->snap_seq, 1));
	r = vm_tier_snap_take(&vf->snap, &vf->launch, vt->snap_dir, key, t->vmm_path, why,
			      sizeof(why));
	if (r == -ECHILD) {
		snprintf(err, errlen, "python3 could not load %s: %s", fn->entry, why);
		return -EINVAL;
	}
	if (r)
		log_warn("vm tier: no snapshot of %s v%lld (it boots cold): %s", fn->name,
			 (long long)fn->version, why);
	return 0;
}

static int vm_prepare(struct tier *t, struct fn *fn, char *err, size_t errlen)
{
	struct vm_tier *vt = tier_of(t);
	struct vm_fn *vf = calloc(1, sizeof(*vf));
	int r;

	if (!vf)
		return -ENOMEM;
	r = 0;
	if (vm_native_is_source(fn))
		r = vm_native_build(fn, t->data_dir, vf->native_dir, sizeof(vf->native_dir),
				    err, errlen);
	if (!r)
		r = vm_launch_build(&vf->launch, fn, t->rootfs_dir, t->vmm_path,
				    vf->native_dir[0] ? vf->native_dir : NULL, vt->jail,
				    err, errlen);
	if (r) {
		if (vf->native_dir[0])
			vm_native_remove(vf->native_dir);
		free(vf);
		return r;
	}
	r = take_snapshot(t, vf, fn, err, errlen);
	if (r) {
		free(vf);
		return r;
	}
	pthread_mutex_init(&vf->lock, NULL);
	snprintf(vf->name, sizeof(vf->name), "%s", fn->name);
	pthread_mutex_lock(&vt->lock);
	vf->next = vt->fns;
	vt->fns = vf;
	pthread_mutex_unlock(&vt->lock);
	fn->tier_data = vf;
	return 0;
}

static void vm_invoke(struct tier *t, struct inv *inv)
{
	struct vm_tier *vt = tier_of(t);
	struct job *j = malloc(sizeof(*j));

	if (!j) {
		inv_fail(inv, 503, "overloaded", "out of memory queueing the request");
		inv_done(inv);
		return;
	}
	j->inv = inv;
	j->next = NULL;
	pthread_mutex_lock(&vt->lock);
	if (vt->tail)
		vt->tail->next = j;
	else
		vt->head = j;
	vt->tail = j;
	pthread_cond_signal(&vt->cond);
	pthread_mutex_unlock(&vt->lock);
}

static void drain_idle(struct vm_tier *vt, struct vm_fn *vf)
{
	struct vm_proc *p;

	while ((p = take_idle(vf)) || (p = take_parked(vf))) {
		atomic_fetch_sub(&vt->idle_bytes, (uint64_t)p->mem_mb << 20);
		drop(vt, p);
	}
}

/*
 * The gateway may call this on its event loop: the idle VMs go to the reaper thread,
 * which stops them (stopping waits for each process to exit).
 */
static void vm_retire(struct tier *t, struct fn *fn)
{
	struct vm_tier *vt = tier_of(t);
	struct vm_fn *vf = fn->tier_data;
	struct vm_proc *p;

	if (!vf)
		return;
	pthread_mutex_lock(&vf->lock);
	vf->retired = 1;
	pthread_mutex_unlock(&vf->lock);
	pthread_mutex_lock(&vt->lock);
	while ((p = take_idle(vf)) || (p = take_parked(vf))) {
		p->idle_since_ns = 0;
		p->next = vt->dying;
		vt->dying = p;
	}
	pthread_cond_signal(&vt->reaper_cond);
	pthread_mutex_unlock(&vt->lock);
}

static void vm_release(struct tier *t, struct fn *fn)
{
	struct vm_tier *vt = tier_of(t);
	struct vm_fn *vf = fn->tier_data, **pp;

	if (!vf)
		return;
	vm_retire(t, fn);
	pthread_mutex_lock(&vt->lock);
	for (pp = &vt->fns; *pp; pp = &(*pp)->next)
		if (*pp == vf) {
			*pp = vf->next;
			break;
		}
	pthread_mutex_unlock(&vt->lock);
	if (vf->native_dir[0])
		vm_native_remove(vf->native_dir);
	if (vm_tier_snap_remove(&vf->snap)) {
		pthread_mutex_lock(&vt->lock);
		if (vt->ndead < (int)(sizeof(vt->dead_layers) / sizeof(vt->dead_layers[0])))
			vt->dead_layers[vt->ndead++] = vf->snap.top;
		pthread_cond_signal(&vt->reaper_cond);
		pthread_mutex_unlock(&vt->lock);
	}
	pthread_mutex_destroy(&vf->lock);
	free(vf);
	fn->tier_data = NULL;
}

static void metrics_enosys(struct vm_fn *vf, struct strbuf *out)
{
	int i;

	pthread_mutex_lock(&vf->lock);
	for (i = 0; i < MAX_ENOSYS_NAMES && vf->enosys[i].name[0]; i++)
		sb_printf(out, "stoke_vm_enosys_total{function=\"%s\",syscall=\"%s\"} %llu\n",
			  vf->name, vf->enosys[i].name,
			  (unsigned long long)vf->enosys[i].count);
	pthread_mutex_unlock(&vf->lock);
}

static void vm_metrics(struct tier *t, struct strbuf *out)
{
	struct vm_tier *vt = tier_of(t);
	struct vm_fn *vf;

	sb_printf(out, "# TYPE stoke_vm_live gauge\nstoke_vm_live %d\n", atomic_load(&vt->live));
	sb_printf(out, "# TYPE stoke_vm_idle_bytes gauge\nstoke_vm_idle_bytes %llu\n",
		  (unsigned long long)atomic_load(&vt->idle_bytes));
	sb_printf(out, "# TYPE stoke_vm_boots_total counter\nstoke_vm_boots_total %llu\n",
		  (unsigned long long)atomic_load(&vt->boots));
	sb_printf(out, "# TYPE stoke_vm_cold_start_seconds summary\n"
		  "stoke_vm_cold_start_seconds_sum %.6f\nstoke_vm_cold_start_seconds_count %llu\n",
		  (double)atomic_load(&vt->boot_ns) / 1e9,
		  (unsigned long long)atomic_load(&vt->boots));
	sb_printf(out, "# TYPE stoke_vm_restores_total counter\nstoke_vm_restores_total %llu\n",
		  (unsigned long long)atomic_load(&vt->restores));
	sb_printf(out, "# TYPE stoke_vm_restore_failures_total counter\n"
		  "stoke_vm_restore_failures_total %llu\n",
		  (unsigned long long)atomic_load(&vt->restore_failures));
	sb_printf(out, "# TYPE stoke_vm_generic_shell_starts_total counter\n"
		  "stoke_vm_generic_shell_starts_total %llu\n",
		  (unsigned long long)atomic_load(&vt->generic_starts));
	sb_printf(out, "# TYPE stoke_vm_crashes_total counter\nstoke_vm_crashes_total %llu\n",
		  (unsigned long long)atomic_load(&vt->crashes));
	sb_printf(out, "# TYPE stoke_vm_timeouts_total counter\nstoke_vm_timeouts_total %llu\n",
		  (unsigned long long)atomic_load(&vt->timeouts));
	sb_adds(out, "# TYPE stoke_vm_enosys_total counter\n");
	pthread_mutex_lock(&vt->lock);
	for (vf = vt->fns; vf; vf = vf->next)
		metrics_enosys(vf, out);
	pthread_mutex_unlock(&vt->lock);
}

static void vm_stop(struct tier *t)
{
	struct vm_tier *vt = tier_of(t);
	struct vm_proc *p;
	struct vm_fn *vf;
	struct job *j;
	int i;

	if (!vt)
		return;
	pthread_mutex_lock(&vt->lock);
	vt->stopping = 1;
	/* Queued invocations fail; running ones stop their VMs and answer 503. */
	atomic_store(&vt->cancel, 1);
	while ((j = vt->head)) {
		vt->head = j->next;
		inv_fail(j->inv, 503, "shutting_down", "the daemon is stopping");
		inv_done(j->inv);
		free(j);
	}
	vt->tail = NULL;
	pthread_cond_broadcast(&vt->cond);
	pthread_cond_broadcast(&vt->reaper_cond);
	pthread_mutex_unlock(&vt->lock);
	for (i = 0; i < vt->nworkers; i++)
		pthread_join(vt->workers[i], NULL);
	if (vt->has_reaper)
		pthread_join(vt->reaper, NULL);
	for (vf = vt->fns; vf; vf = vf->next)
		drain_idle(vt, vf);
	if (vt->generic) {
		atomic_fetch_sub(&vt->idle_bytes, (uint64_t)vt->generic->mem_mb << 20);
		drop(vt, vt->generic);
	}
	while ((p = vt->dying)) {
		vt->dying = p->next;
		atomic_fetch_sub(&vt->idle_bytes, (uint64_t)p->mem_mb << 20);
		drop(vt, p);
	}
	t->priv = NULL;
	free(vt);
}

const struct tier_ops vm_tier_ops = {
	.name = "vm",
	.start = vm_start,
	.prepare = vm_prepare,
	.invoke = vm_invoke,
	.retire = vm_retire,
	.release = vm_release,
	.metrics = vm_metrics,
	.stop = vm_stop,
};
