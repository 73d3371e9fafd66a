/*
 * The micro-VM tier as the daemon sees it (vm_tier_ops): worker threads take
 * invocations off a queue, each runs on a warm VM of the same function version or on a
 * freshly started one, and idle VMs are kept per version within a memory budget. The
 * gateway's event loop only ever enqueues.
 */
#include "vm_proc.h"
#include "vm_state.h"
#include "vm_tier_snap.h"
#include "common/invoke.h"
#include "common/log.h"
#include "common/strbuf.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
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
	struct vm_state *state;		/* state: keep: the instance slots; else NULL */
	/* Without kept state: limits.max_instances bounds the invocations running at
	 * once; the others wait here in arrival order (the gateway bounds how many).
	 * Both under vt->lock. */
	uint32_t running, max_running;
	struct vm_job *wait_head, *wait_tail;
	struct vm_fn *next;	/* tier's list, for metrics and stop */
};

struct vm_tier {
	pthread_t workers[MAX_WORKERS];
	int nworkers;
	pthread_t reaper;
	pthread_cond_t reaper_cond;	/* apart from cond: a job must wake a worker */
	pthread_cond_t state_cond;	/* a state dump finished (release waits for them) */
	int has_reaper;
	uint64_t idle_ttl_ns;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct vm_job *head, *tail;
	int stopping;
	atomic_int cancel;		/* set by stop: running exchanges end their VMs */
	int jail;
	int snapshots;			/* restore python3 cold starts ($STOKE_VM_SNAPSHOTS) */
	const char *vmm_path;
	uint64_t memory_budget;
	char snap_dir[4096];
	char state_dir[4096];		/* saved state of state: keep (vm_state.c) */
	atomic_uint snap_seq;
	int layers;			/* runtime + function layers ($STOKE_VM_SNAPSHOT_LAYERS) */
	/* Held while snapshots are built or collected: gc sees every snapshot file. */
	pthread_mutex_t snap_lock;
	struct vm_snap_stats snap_stats;
	int collect;			/* a version's snapshot went: the reaper collects */
	/* Runtime snapshots this daemon's versions were built on: gc keeps them. */
	char rt_keys[32][96];
	int nrt_keys, rt_keys_full;
	struct vm_fn *fns;
	struct vm_proc *dying;		/* retired VMs the reaper stops off the caller's thread */
	struct vm_launch generic_launch;	/* generic shell: jail and VM, no function yet */
	struct vm_proc *generic;	/* one parked, for a restore with no shell of its own */
	atomic_ullong idle_bytes;
	atomic_int live;
	atomic_ullong boots, boot_ns, cold_starts, crashes, timeouts, invocations;
	atomic_ullong restores, restore_failures, generic_starts;
	atomic_ullong state_saves, state_save_failures, state_restores, state_corrupt;
};

static struct vm_tier *tier_of(struct tier *t)
{
	return t->priv;
}

/* A cold start (boot or restore) answered: its time to first response. */
static void count_cold_start(struct vm_tier *vt, uint64_t t0)
{
	atomic_fetch_add(&vt->boot_ns, vm_now_ns() - t0);
	atomic_fetch_add(&vt->cold_starts, 1);
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
	e = cJSON_GetObjectItemCaseSensitive(j, "hwm_kb");
	if (cJSON_IsNumber(e))
		ctx->inv->peak_mem_bytes = (uint64_t)e->valuedouble << 10;
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

/*
 * The idle budget counts what each idle VM costs the host (vm_proc_idle_cost, measured
 * when it goes idle: about 2 MiB for a restored Python VM, 15 MiB booted), not its guest
 * size (256 MiB by default), which would keep a hundred times fewer VMs than fit. Parked
 * shells, whose restore is still under way when they are counted, count their guest
 * size. Whoever takes a VM off the idle lists takes off what it was counted for;
 * drop() does so for a VM it stops.
 */
static void count_idle(struct vm_tier *vt, struct vm_proc *p, uint64_t bytes)
{
	p->idle_cost = bytes;
	atomic_fetch_add(&vt->idle_bytes, bytes);
}

static void uncount_idle(struct vm_tier *vt, struct vm_proc *p)
{
	atomic_fetch_sub(&vt->idle_bytes, p->idle_cost);
	p->idle_cost = 0;
}

/* Stops a VM for good; one still counted by the idle budget is taken off it. */
static void drop(struct vm_tier *vt, struct vm_proc *p)
{
	uncount_idle(vt, p);
	vm_proc_kill(p);
	free(p);
	atomic_fetch_sub(&vt->live, 1);
}

/* Keeps a VM warm for the next request, unless the version is gone or memory is short. */
static void put_idle(struct tier *t, struct vm_fn *vf, struct vm_proc *p)
{
	struct vm_tier *vt = tier_of(t);
	uint64_t bytes = vm_proc_idle_cost(p);
	int keep;

	pthread_mutex_lock(&vf->lock);
	keep = !vf->retired && !vt->stopping && vf->nidle < MAX_IDLE_PER_FN &&
	       atomic_load(&vt->idle_bytes) + bytes <= t->memory_budget;
	if (keep) {
		p->idle_since_ns = vm_now_ns();
		p->next = vf->idle;
		vf->idle = p;
		vf->nidle++;
		count_idle(vt, p, bytes);
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
	uncount_idle(vt, p);
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
	if (!vt->snapshots || vt->stopping || vf->retired || vf->shell || vf->state ||
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
	count_idle(vt, p, (uint64_t)p->mem_mb << 20);
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
	count_idle(vt, p, bytes);
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
		uncount_idle(vt, p);
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

/*
 * An idle VM whose program ended after it answered (it exited, or closed its channel)
 * would fail a request that never ran in it: it is dropped instead, and the request
 * goes to another VM. What it printed last and how it ended go to the function's log.
 */
static void drop_ended(struct vm_tier *vt, struct vm_fn *vf, struct vm_proc *p,
		       const struct inv *inv)
{
	static const char msg[] = "stoke: an idle VM of this function had ended since its "
				  "last request; this request went to another VM";
	struct vm_logto to = { vf->name, inv->request_id };
	int rounds;

	for (rounds = 0; rounds < 10 && vm_proc_pump(p, 0, &to) > 0; rounds++)
		;
	vm_proc_flush_output(p, &to);
	fnlog_write(vf->name, inv->request_id, "stderr", msg, sizeof(msg) - 1);
	atomic_fetch_add(&vt->crashes, 1);
	drop(vt, p);
}

/* An idle VM whose VMM exited or whose channel ended: it can serve nothing more. */
static int ended(const struct vm_proc *p)
{
	return vm_proc_exited(p) || vm_proc_hung_up(p);
}

/* A warm VM of vf that is still running, if there is one. */
static struct vm_proc *take_running(struct vm_tier *vt, struct vm_fn *vf,
				    const struct inv *inv)
{
	struct vm_proc *p;

	while ((p = take_idle(vf))) {
		uncount_idle(vt, p);
		if (!ended(p))
			return p;
		drop_ended(vt, vf, p, inv);
	}
	return NULL;
}

static struct vm_proc *get_vm(struct tier *t, struct vm_fn *vf, struct inv *inv, int *err)
{
	struct vm_tier *vt = tier_of(t);
	struct vm_proc *p = take_running(vt, vf, inv);
	const struct vm_launch *l;

	if (p) {
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

static void report_crash(struct vm_tier *vt, struct inv *inv, int status)
{
	/* A native program that exits without answering most likely does not speak the
	 * channel at all. */
	int mute = WIFEXITED(status) && WEXITSTATUS(status) < 128 &&
		   !strcmp(inv->fn->runtime, "native");
	char how[64], line[256];
	int n;

	if (WIFSIGNALED(status))
		snprintf(how, sizeof(how), "killed by signal %d", WTERMSIG(status));
	else if (WEXITSTATUS(status) > 128 && WEXITSTATUS(status) < 125 + 65)
		/* stoke-vmm reports a guest fault as 128 + the signal Linux would send */
		snprintf(how, sizeof(how), "program killed by signal %d",
			 WEXITSTATUS(status) - 128);
	else
		snprintf(how, sizeof(how), "exited with status %d%s", WEXITSTATUS(status),
			 mute ? " without answering" : "");
	atomic_fetch_add(&vt->crashes, 1);
	/* The VM's stderr is in the function's logs already and can hold the tenant's
	 * internals: the caller learns how the VM ended, the logs get that too. */
	n = snprintf(line, sizeof(line), "stoke: the function's VM %s%s", how, mute ?
		     " (a native program answers each request on fd 3: docs/channel-abi.md)" :
		     "");
	fnlog_write(inv->fn->name, inv->request_id, "stderr", line, (size_t)n);
	inv_fail(inv, 502, "crash", "the function's VM %s; its output is in the function's logs "
		 "(stoke logs %s)", how, inv->fn->name);
}

/* Answers an exchange that did not end in a response; the caller then drops p. */
static void report_failure(struct vm_tier *vt, struct vm_fn *vf, struct inv *inv,
			   struct vm_proc *p, enum vm_outcome o, int status)
{
	switch (o) {
	case VM_OK:
		break;
	case VM_TIMEOUT:
		atomic_fetch_add(&vt->timeouts, 1);
		inv_fail(inv, 504, "wall_limit", "the function ran past its wall-time limit of "
			 "%u ms (limits.wall_s)", vf->launch.wall_ms);
		break;
	case VM_CRASHED:
		/* The VMM itself failed (125) on a restore: later cold starts boot. */
		if (p->restored && WIFEXITED(status) && WEXITSTATUS(status) == 125) {
			vf->snap.ready = 0;
			atomic_fetch_add(&vt->restore_failures, 1);
		}
		report_crash(vt, inv, status);
		break;
	case VM_CANCELLED:
		inv_fail(inv, 503, "shutting_down", "the daemon is stopping");
		break;
	case VM_FAILED:
		inv_fail(inv, 500, "internal", "out of memory building the request");
		break;
	}
}

static uint32_t budget_ms(const struct vm_fn *vf, const struct inv *inv)
{
	return vf->launch.wall_ms + WALL_GRACE_MS + (inv->cold ? BOOT_ALLOWANCE_MS : 0);
}

static void run_invocation(struct tier *t, struct inv *inv)
{
	struct vm_tier *vt = tier_of(t);
	struct vm_fn *vf = inv->fn->tier_data;
	struct stats_ctx ctx = { vf, inv };
	struct vm_hooks hooks = { on_stats, &ctx, &vt->cancel };
	struct vm_proc *p;
	uint64_t t0 = vm_now_ns();
	enum vm_outcome o;
	int err = 0, status;

	atomic_fetch_add(&vt->invocations, 1);
	if (vf)
		atomic_store(&vf->last_used_ns, vm_now_ns());
	if (!vf) {
		inv_fail(inv, 500, "internal",
			 "function version was not prepared for the vm tier");
		return;
	}
	p = get_vm(t, vf, inv, &err);
	if (!p) {
		inv_fail(inv, 503, "vm_start", "cannot start a VM: %s", strerror(-err));
		return;
	}
	o = vm_proc_invoke(p, inv, budget_ms(vf, inv), &hooks, &status);
	if (o == VM_OK) {
		if (inv->cold)
			count_cold_start(vt, t0);
		put_idle(t, vf, p);
		return;
	}
	report_failure(vt, vf, inv, p, o, status);
	drop(vt, p);
}

/* ---- kept state (state: keep; vm_state.h) ---- */

/*
 * A layer may be named by nothing any more: the reaper's next gc deletes what no
 * snapshot or saved-state file names (layers are named by their contents, so another
 * slot or version may still name it). Called with vt->lock held.
 */
static void schedule_gc(struct vm_tier *vt)
{
	vt->collect = 1;
	pthread_cond_signal(&vt->reaper_cond);
}

/* Gives a worker its turn at the slot's queue. Called with vt->lock held. */
static void queue_slot(struct vm_tier *vt, struct vm_slot *sl)
{
	sl->busy = 1;
	sl->turn = (struct vm_job){ NULL, sl, NULL };
	if (vt->tail)
		vt->tail->next = &sl->turn;
	else
		vt->head = &sl->turn;
	vt->tail = &sl->turn;
	pthread_cond_signal(&vt->cond);
}

/* Says what happened to the state in the daemon's log and the function's. */
static void state_log(const struct vm_fn *vf, const char *request_id, int warn,
		      const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void state_log(const struct vm_fn *vf, const char *request_id, int warn,
		      const char *fmt, ...)
{
	char msg[1400];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (warn)
		log_warn("vm tier: %s: %s", vf->name, msg);
	else
		log_info("vm tier: %s: %s", vf->name, msg);
	fnlog_write(vf->name, request_id, "stoke", msg, strlen(msg));
}

/* The slot's saved state cannot be restored: say so, set it aside, start afresh. */
static void state_lost(struct vm_tier *vt, struct vm_fn *vf, struct vm_slot *sl,
		       struct inv *inv, const char *why)
{
	size_t n = strlen(sl->file);
	/* The client learns the reason, not where the daemon keeps its files. */
	const char *reason = !strncmp(why, sl->file, n) && !strncmp(why + n, ": ", 2) ?
			     why + n + 2 : why;

	pthread_mutex_lock(&vt->lock);
	if (!snap_id_is_zero(&sl->layer))
		schedule_gc(vt);
	pthread_mutex_unlock(&vt->lock);
	vm_state_discard(sl);
	atomic_fetch_add(&vt->state_corrupt, 1);
	state_log(vf, inv->request_id, 1, "instance %u: saved state unusable (%.300s); set "
		  "aside as %.900s.corrupt, the next request starts fresh", sl->index, why,
		  sl->file);
	inv_fail(inv, 500, "state_corrupt", "the saved state of instance %u could not be "
		 "restored (%.300s); it was set aside and the next request starts with fresh "
		 "state", sl->index, reason);
}

/* Starts the slot's VM: from its saved state, else as any cold start plus the dump option. */
static int keep_spawn(struct tier *t, struct vm_fn *vf, struct vm_slot *sl, int from_state,
		      struct vm_proc *p)
{
	struct vm_tier *vt = tier_of(t);
	char dump[4300], restore[4300], store[4300];
	const char *fresh_opts[] = { dump, NULL };
	const char *state_opts[] = { dump, restore, store, "--restore-strict", NULL };
	const struct vm_launch *base = from_state || !vt->snapshots ? NULL :
				       vm_tier_snap_launch(&vf->snap);
	struct vm_launch *l = malloc(sizeof(*l));
	int r;

	if (!l)
		return -ENOMEM;
	vm_state_dump_opt(sl, dump, sizeof(dump));
	snprintf(restore, sizeof(restore), "--restore=%s", sl->file);
	snprintf(store, sizeof(store), "--snap-store=%s", vf->state->store);
	r = vm_launch_with(l, base ? base : &vf->launch, from_state ? state_opts : fresh_opts);
	r = r ? r : vm_proc_spawn(p, l, t->vmm_path);
	free(l);
	if (!r)
		p->restored = base != NULL;
	return r;
}

/* The slot's VM: its live one, or one restored from its saved state, or a fresh one. */
static struct vm_proc *keep_vm(struct tier *t, struct vm_fn *vf, struct vm_slot *sl,
			       struct inv *inv, int *from_state)
{
	struct vm_tier *vt = tier_of(t);
	struct vm_proc *p;
	char why[1100];
	int r;

	pthread_mutex_lock(&vt->lock);
	p = sl->proc;
	sl->proc = NULL;
	pthread_mutex_unlock(&vt->lock);
	if (p && ended(p)) {
		drop_ended(vt, vf, p, inv);	/* its memory since the last save is gone */
		p = NULL;
	}
	if (p) {
		uncount_idle(vt, p);
		inv->cold = 0;
		return p;
	}
	if (sl->has_state && (r = vm_state_check(vf->state, sl, why, sizeof(why)))) {
		state_lost(vt, vf, sl, inv, why);
		return NULL;
	}
	*from_state = sl->has_state;
	p = calloc(1, sizeof(*p));
	r = p ? keep_spawn(t, vf, sl, *from_state, p) : -ENOMEM;
	if (r) {
		free(p);
		inv_fail(inv, 503, "vm_start", "cannot start a VM: %s", strerror(-r));
		return NULL;
	}
	atomic_fetch_add(&vt->live, 1);
	atomic_fetch_add(*from_state ? &vt->state_restores :
			 p->restored ? &vt->restores : &vt->boots, 1);
	inv->cold = 1;
	if (*from_state)
		state_log(vf, inv->request_id, 0, "instance %u: state restored from %s",
			  sl->index, sl->file);
	return p;
}

/* Parks the slot's VM between requests; the reaper saves it when idle or short of memory. */
static void keep_idle(struct tier *t, struct vm_fn *vf, struct vm_slot *sl, struct vm_proc *p)
{
	struct vm_tier *vt = tier_of(t);
	int keep;

	pthread_mutex_lock(&vf->lock);
	keep = !vf->retired;
	pthread_mutex_unlock(&vf->lock);
	pthread_mutex_lock(&vt->lock);
	keep = keep && !vt->stopping;
	if (keep) {
		p->idle_since_ns = vm_now_ns();
		sl->proc = p;
		count_idle(vt, p, vm_proc_idle_cost(p));
		if (atomic_load(&vt->idle_bytes) > t->memory_budget)
			pthread_cond_signal(&vt->reaper_cond);
	}
	pthread_mutex_unlock(&vt->lock);
	if (!keep)
		drop(vt, p);
}

static void run_keep(struct tier *t, struct vm_slot *sl, struct inv *inv)
{
	struct vm_tier *vt = tier_of(t);
	struct vm_fn *vf = inv->fn->tier_data;
	struct stats_ctx ctx = { vf, inv };
	struct vm_hooks hooks = { on_stats, &ctx, &vt->cancel };
	uint64_t t0 = vm_now_ns();
	struct vm_proc *p;
	enum vm_outcome o;
	int from_state = 0, status;

	atomic_fetch_add(&vt->invocations, 1);
	atomic_store(&vf->last_used_ns, t0);
	if (atomic_load(&vt->cancel)) {
		inv_fail(inv, 503, "shutting_down", "the daemon is stopping");
		return;
	}
	p = keep_vm(t, vf, sl, inv, &from_state);
	if (!p)
		return;
	o = vm_proc_invoke(p, inv, budget_ms(vf, inv), &hooks, &status);
	if (o == VM_OK) {
		if (inv->cold && !from_state)
			count_cold_start(vt, t0);
		keep_idle(t, vf, sl, p);
		return;
	}
	/* --restore-strict: a state the VMM could not restore ends it with 125. */
	if (from_state && o == VM_CRASHED && WIFEXITED(status) && WEXITSTATUS(status) == 125)
		state_lost(vt, vf, sl, inv, p->tail_len ? p->tail : "the VMM failed");
	else
		report_failure(vt, vf, inv, p, o, status);
	drop(vt, p);
}

/* A worker's turn at a slot: its requests one after another, in arrival order. */
static void serve_slot(struct tier *t, struct vm_slot *sl)
{
	struct vm_tier *vt = tier_of(t);
	struct vm_job *j;
	int more;

	do {
		pthread_mutex_lock(&vt->lock);
		j = sl->head;
		if (j) {
			sl->head = j->next;
			if (!sl->head)
				sl->tail = NULL;
			sl->queued--;
		} else {
			sl->busy = 0;
		}
		pthread_mutex_unlock(&vt->lock);
		if (!j)
			return;
		run_keep(t, sl, j->inv);
		/* Decided before inv_done: the last reference to the version may go with it. */
		pthread_mutex_lock(&vt->lock);
		more = sl->head != NULL;
		if (!more)
			sl->busy = 0;
		pthread_mutex_unlock(&vt->lock);
		inv_done(j->inv);
		free(j);
	} while (more);
}

static void keep_invoke(struct vm_tier *vt, struct vm_fn *vf, struct vm_job *j)
{
	struct vm_slot *sl = vm_state_slot(vf->state, j->inv);
	int full;

	j->slot = NULL;
	j->next = NULL;
	pthread_mutex_lock(&vt->lock);
	full = sl->busy && sl->queued >= vf->state->queue_max;
	if (!full) {
		if (sl->tail)
			sl->tail->next = j;
		else
			sl->head = j;
		sl->tail = j;
		sl->queued++;
		if (!sl->busy)
			queue_slot(vt, sl);
	}
	pthread_mutex_unlock(&vt->lock);
	if (!full)
		return;
	inv_fail(j->inv, 429, "too_many_requests", "instance %u of function %s has %u requests "
		 "waiting, as many as limits.queue allows; retry later", sl->index, vf->name,
		 vf->state->queue_max);
	inv_resp_add_header(j->inv, "retry-after", 11, "1", 1);
	inv_done(j->inv);
	free(j);
}

struct state_save {
	struct vm_fn *vf;
	struct vm_slot *sl;
	struct vm_proc *p;
	const char *why;
};

/* Takes the slot's idle VM for saving. Called with vt->lock held. */
static void take_for_save(struct vm_fn *vf, struct vm_slot *sl, const char *why,
			  struct state_save *out)
{
	*out = (struct state_save){ vf, sl, sl->proc, why };
	sl->proc = NULL;
	sl->busy = 1;
	vf->state->dumping++;
}

/*
 * Stateful VMs to save to disk: every idle one when all is set, else those idle past
 * the TTL, then the least recently used while idle VMs hold more than the memory
 * budget. Called with vt->lock held; returns how many were taken.
 */
static int pick_saves(struct vm_tier *vt, uint64_t budget, int all, struct state_save *out,
		      int max)
{
	uint64_t now = vm_now_ns(), bytes = atomic_load(&vt->idle_bytes);
	struct vm_slot *sl, *lru;
	struct vm_fn *vf, *lru_fn;
	uint32_t i;
	int n = 0;

	for (vf = vt->fns; vf && n < max; vf = vf->next) {
		for (i = 0; vf->state && !vf->retired && i < vf->state->nslots && n < max; i++) {
			sl = &vf->state->slots[i];
			if (sl->busy || !sl->proc ||
			    (!all && now - sl->proc->idle_since_ns < vt->idle_ttl_ns))
				continue;
			bytes -= sl->proc->idle_cost;
			take_for_save(vf, sl, all ? "daemon stopping" : "idle", &out[n++]);
		}
	}
	while (bytes > budget && n < max) {
		lru = NULL;
		lru_fn = NULL;
		for (vf = vt->fns; vf; vf = vf->next)
			for (i = 0; vf->state && !vf->retired && i < vf->state->nslots; i++) {
				sl = &vf->state->slots[i];
				if (!sl->busy && sl->proc && (!lru || sl->proc->idle_since_ns <
							      lru->proc->idle_since_ns)) {
					lru = sl;
					lru_fn = vf;
				}
			}
		if (!lru)
			break;
		bytes -= lru->proc->idle_cost;
		take_for_save(lru_fn, lru, "memory budget", &out[n++]);
	}
	return n;
}

/* Dumps one taken VM to its slot's snapshot, then gives the slot back. */
static void save_one(struct vm_tier *vt, const struct state_save *s)
{
	struct vm_slot *sl = s->sl;
	uint64_t t0 = vm_now_ns();
	struct snap_id old;
	char why[1100] = "";
	int had_old = 0, r;

	r = vm_state_save(s->vf->state, sl, s->p, &vt->snap_lock, &old, &had_old, why,
			  sizeof(why));
	if (!r)
		state_log(s->vf, "-", 0, "instance %u: state saved to %s (%s; %.0f ms)", sl->index,
			  sl->file, s->why, (double)(vm_now_ns() - t0) / 1e6);
	else
		state_log(s->vf, "-", 1, "instance %u: state not saved (%s): %s", sl->index, why,
			  r == -ENOTSUP ? "the VM keeps running" :
			  "its memory is lost; the last saved state stays");
	pthread_mutex_lock(&vt->lock);
	atomic_fetch_add(r ? &vt->state_save_failures : &vt->state_saves, 1);
	if (r == -ENOTSUP) {
		s->p->idle_since_ns = vm_now_ns();
		sl->proc = s->p;
	}
	if (had_old)
		schedule_gc(vt);
	sl->busy = 0;
	if (sl->head && !vt->stopping)
		queue_slot(vt, sl);
	s->vf->state->dumping--;
	pthread_cond_broadcast(&vt->state_cond);
	pthread_mutex_unlock(&vt->lock);
	if (r != -ENOTSUP) {
		drop(vt, s->p);
	}
}

#define MAX_SAVES 64

/* The reaper's part: saves idle stateful VMs (or all of them, when the daemon stops). */
static void save_states(struct vm_tier *vt, int all)
{
	struct state_save *saves = calloc(MAX_SAVES, sizeof(*saves));
	int n, i;

	if (!saves)
		return;
	pthread_mutex_lock(&vt->lock);
	n = pick_saves(vt, vt->memory_budget, all, saves, MAX_SAVES);
	pthread_mutex_unlock(&vt->lock);
	for (i = 0; i < n; i++)
		save_one(vt, &saves[i]);
	free(saves);
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
		drop(vt, p);
	}
}

/* Collects the store: every snapshot file still present is a root. Not on the loop. */
static int snap_gc(struct vm_tier *vt, int wait, struct snap_gc_stats *gs, uint64_t *files,
		   char *why, size_t len)
{
	int r;

	if (!wait && pthread_mutex_trylock(&vt->snap_lock))
		return -EBUSY;
	if (wait)
		pthread_mutex_lock(&vt->snap_lock);
	r = vm_tier_snap_collect(vt->snap_dir, vt->state_dir,
				 vt->rt_keys_full ? NULL : vt->rt_keys,
				 vt->nrt_keys, gs, files, why, len);
	pthread_mutex_unlock(&vt->snap_lock);
	if (!r) {
		atomic_fetch_add(&vt->snap_stats.gc_runs, 1);
		atomic_fetch_add(&vt->snap_stats.gc_freed_bytes, gs->bytes_freed);
	} else {
		log_warn("vm tier: snapshot gc: %s", why);
	}
	return r;
}

/* Deleted versions' layers and pages go once their snapshot files are gone. */
static void collect_layers(struct vm_tier *vt)
{
	struct snap_gc_stats gs;
	uint64_t files;
	char why[512];
	int todo;

	pthread_mutex_lock(&vt->lock);
	todo = vt->collect;
	vt->collect = 0;
	pthread_mutex_unlock(&vt->lock);
	/* A deploy building a snapshot holds the lock for seconds: retry on the next tick. */
	if (todo && snap_gc(vt, 0, &gs, &files, why, sizeof(why)) == -EBUSY) {
		pthread_mutex_lock(&vt->lock);
		vt->collect = 1;
		pthread_mutex_unlock(&vt->lock);
	}
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
		if (!stop) {
			reap_idle(vt);
			save_states(vt, 0);
		}
		collect_layers(vt);
	}
	return NULL;
}

/*
 * The next invocation that waited for one of vf's instances, which the caller runs in
 * place of the one it finished; NULL when none waits (or the tier stops: vm_stop fails
 * the waiting ones), and the finished one no longer counts as running.
 */
static struct vm_job *next_waiting(struct vm_tier *vt, struct vm_fn *vf)
{
	struct vm_job *j = NULL;

	pthread_mutex_lock(&vt->lock);
	if (vf->wait_head && !vt->stopping) {
		j = vf->wait_head;
		vf->wait_head = j->next;
		if (!vf->wait_head)
			vf->wait_tail = NULL;
	} else {
		vf->running--;
	}
	pthread_mutex_unlock(&vt->lock);
	return j;
}

/* Runs j, then whatever waited for this version's instances meanwhile. */
static void serve_fn(struct tier *t, struct vm_job *j)
{
	struct vm_fn *vf = j->inv->fn->tier_data;
	struct vm_job *next;

	while (j) {
		run_invocation(t, j->inv);
		/* Decided before inv_done: the last reference to the version may go with it
		 * (a waiting invocation holds one of its own). */
		next = vf ? next_waiting(tier_of(t), vf) : NULL;
		inv_done(j->inv);
		free(j);
		j = next;
	}
}

static void *worker(void *arg)
{
	struct tier *t = arg;
	struct vm_tier *vt = tier_of(t);
	struct vm_job *j;

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
		if (j->slot) {
			serve_slot(t, j->slot);	/* the slot's own job: not freed */
			continue;
		}
		serve_fn(t, j);
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
	pthread_cond_init(&vt->state_cond, NULL);
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
	/* $STOKE_VM_SNAPSHOT_LAYERS=0: one layer per version, as before (for comparison). */
	vt->layers = !getenv("STOKE_VM_SNAPSHOT_LAYERS") ||
		     strcmp(getenv("STOKE_VM_SNAPSHOT_LAYERS"), "0") != 0;
	pthread_mutex_init(&vt->snap_lock, NULL);
	snprintf(vt->snap_dir, sizeof(vt->snap_dir), "%s/vm-snapshots", t->data_dir);
	snprintf(vt->state_dir, sizeof(vt->state_dir), "%s/vm-state", t->data_dir);
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

/* Remembers a runtime key in use (called with snap_lock held). */
static void keep_runtime(struct vm_tier *vt, const char *key)
{
	int i;

	for (i = 0; i < vt->nrt_keys && strcmp(vt->rt_keys[i], key); i++)
		;
	if (i < vt->nrt_keys || !key[0])
		return;
	/* More runtimes than slots: gc then keeps every runtime snapshot. */
	if (i == (int)(sizeof(vt->rt_keys) / sizeof(vt->rt_keys[0])))
		vt->rt_keys_full = 1;
	else
		snprintf(vt->rt_keys[vt->nrt_keys++], sizeof(vt->rt_keys[0]), "%s", key);
}

/*
 * The version's function layer on its runtime's layer (built here once per runtime and
 * memory size, then reused by every function and across restarts). A damaged runtime
 * layer leaves the version booting cold; the next deploy rebuilds it.
 */
static int take_layered(struct vm_tier *vt, struct vm_fn *vf, const struct fn *fn,
			const char *key, const struct vm_logto *to, const char *vmm_path,
			char *why, size_t len)
{
	struct vm_tier_rt rt = { 0 };
	int r;

	r = vm_tier_rt_get(&rt, &vf->launch, vt->snap_dir, vmm_path, &vt->snap_stats, why,
			   len);
	keep_runtime(vt, rt.key);
	if (r == -EBADMSG) {
		log_error("vm tier: runtime layer %s is damaged (%s): %s v%lld boots cold; "
			  "the next deploy rebuilds the runtime", rt.key, why, fn->name,
			  (long long)fn->version);
		snprintf(why, len, "runtime layer %s is damaged", rt.key);
		return r;
	}
	if (r)
		return r;
	return vm_tier_snap_take_on(&vf->snap, &rt, &vf->launch, vt->snap_dir, key, to,
				    vmm_path, &vt->snap_stats, why, len);
}

/*
 * Why python3 could not import the function, from the end of its stderr: a traceback,
 * or the runtime's own sentence (a last line "stoke: ...", which names the entry).
 */
static void load_error(const struct fn *fn, char *why, char *err, size_t errlen)
{
	size_t n = strlen(why);
	char *last;

	while (n && why[n - 1] == '\n')
		why[--n] = '\0';
	last = strrchr(why, '\n');
	last = last ? last + 1 : why;
	if (!strncmp(last, "stoke: ", 7))
		snprintf(err, errlen, "%s", last + 7);
	else
		snprintf(err, errlen, "python3 could not load %s: %s", fn->entry, why);
}

/*
 * Snapshot of a python3 version, taken at deploy so that no request waits for it. A
 * runtime that exits before its first read could not import the function (a syntax
 * error, no handler): that fails the deploy with the runtime's message. Any other
 * failure leaves the version booting cold, as without snapshots. What the import and
 * before_snapshot() print goes to the function's log under "deploy-vN": it runs once
 * here, never again in a restored VM.
 */
static int take_snapshot(struct tier *t, struct vm_fn *vf, const struct fn *fn, char *err,
			 size_t errlen)
{
	struct vm_tier *vt = tier_of(t);
	const char *env[] = { "--env=STOKE_SNAPSHOT=1", NULL };
	char key[160], why[1100] = "", rid[24];
	struct vm_logto to = { fn->name, rid };
	struct vm_launch l;
	int r;

	if (!vt->snapshots || strcmp(fn->runtime, "python3"))
		return 0;
	snprintf(rid, sizeof(rid), "deploy-v%lld", (long long)fn->version);
	/* The bootstrap calls before_snapshot/after_restore and reseeds under this. */
	if (vm_launch_with(&l, &vf->launch, env) ||
	    vm_launch_with(&vf->launch, &l, (const char *const[]){ NULL }))
		return 0;
	snprintf(key, sizeof(key), "%.64s.%lld.%d.%u", fn->name, (long long)fn->version,
		 (int)getpid(), atomic_fetch_add(&vt->snap_seq, 1));
	vf->snap.cancel = &vt->cancel;
	pthread_mutex_lock(&vt->snap_lock);
	r = vt->layers ? take_layered(vt, vf, fn, key, &to, t->vmm_path, why, sizeof(why)) :
	    vm_tier_snap_take(&vf->snap, &vf->launch, vt->snap_dir, key, &to, t->vmm_path,
			      why, sizeof(why));
	pthread_mutex_unlock(&vt->snap_lock);
	if (r == -ECANCELED) {	/* the daemon stops: the deploy fails, nothing recorded */
		snprintf(err, errlen, "%s", why);
		return r;
	}
	if (r == -ECHILD) {
		load_error(fn, why, err, errlen);
		return -EINVAL;
	}
	if (r)
		log_warn("vm tier: no snapshot of %s v%lld (it boots cold): %s", fn->name,
			 (long long)fn->version, why);
	return 0;
}

/*
 * The instance slots of a stateful version. When no other version of the function is
 * loaded (a daemon start, or a deploy after rm), state directories of other versions
 * are leftovers and go; on a redeploy the old version's goes when it is released.
 */
static int prepare_state(struct tier *t, struct vm_fn *vf, const struct fn *fn, char *err,
			 size_t errlen)
{
	struct vm_tier *vt = tier_of(t);
	char store[4200];
	struct vm_fn *o;
	int fresh = 1, r;

	if (!fn->keep_state)
		return 0;
	vf->state = calloc(1, sizeof(*vf->state));
	if (!vf->state)
		return -ENOMEM;
	pthread_mutex_lock(&vt->lock);
	for (o = vt->fns; o; o = o->next)
		fresh &= strcmp(o->name, fn->name) != 0;
	pthread_mutex_unlock(&vt->lock);
	snprintf(store, sizeof(store), "%s/store", vt->snap_dir);
	mkdir(vt->snap_dir, 0700);
	mkdir(store, 0700);
	r = vm_state_init(vf->state, fn, t->data_dir, store, fresh, err, errlen);
	if (r) {
		vm_state_free(vf->state);
		free(vf->state);
		vf->state = NULL;
	}
	return r;
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
		r = vm_native_build(fn, t->data_dir, &vt->cancel, vf->native_dir,
				    sizeof(vf->native_dir), err, errlen);
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
	r = prepare_state(t, vf, fn, err, errlen);
	r = r ? r : take_snapshot(t, vf, fn, err, errlen);
	if (r) {
		if (vf->state)
			vm_state_free(vf->state);
		free(vf->state);
		free(vf);
		return r;
	}
	pthread_mutex_init(&vf->lock, NULL);
	snprintf(vf->name, sizeof(vf->name), "%s", fn->name);
	vf->max_running = fn->limits.max_instances ? fn->limits.max_instances : 1;
	pthread_mutex_lock(&vt->lock);
	vf->next = vt->fns;
	vt->fns = vf;
	pthread_mutex_unlock(&vt->lock);
	fn->tier_data = vf;
	return 0;
}

/*
 * Counts j as running on one of vf's instances, or when max_instances already run,
 * makes it wait for one of them to finish; returns whether it waits. Called with
 * vt->lock held.
 */
static int enqueue_waiting(struct vm_fn *vf, struct vm_job *j)
{
	if (!vf)
		return 0;	/* run_invocation answers that it was not prepared */
	if (vf->running < vf->max_running) {
		vf->running++;
		return 0;
	}
	if (vf->wait_tail)
		vf->wait_tail->next = j;
	else
		vf->wait_head = j;
	vf->wait_tail = j;
	return 1;
}

static void vm_invoke(struct tier *t, struct inv *inv)
{
	struct vm_tier *vt = tier_of(t);
	struct vm_job *j = malloc(sizeof(*j));

	if (!j) {
		inv_fail(inv, 503, "overloaded", "out of memory queueing the request");
		inv_done(inv);
		return;
	}
	j->inv = inv;
	j->slot = NULL;
	j->next = NULL;
	if (inv->fn->tier_data && ((struct vm_fn *)inv->fn->tier_data)->state) {
		keep_invoke(vt, inv->fn->tier_data, j);
		return;
	}
	pthread_mutex_lock(&vt->lock);
	if (!enqueue_waiting(inv->fn->tier_data, j)) {
		if (vt->tail)
			vt->tail->next = j;
		else
			vt->head = j;
		vt->tail = j;
		pthread_cond_signal(&vt->cond);
	}
	pthread_mutex_unlock(&vt->lock);
}

static void drain_idle(struct vm_tier *vt, struct vm_fn *vf)
{
	struct vm_proc *p;

	while ((p = take_idle(vf)) || (p = take_parked(vf))) {
		drop(vt, p);
	}
}

/* An idle slot's VM (counted in idle_bytes), or NULL. Called with vt->lock held. */
static struct vm_proc *take_slot_vm(struct vm_fn *vf)
{
	struct vm_proc *p;
	uint32_t i;

	for (i = 0; vf->state && i < vf->state->nslots; i++) {
		p = vf->state->slots[i].proc;
		if (p && !vf->state->slots[i].busy) {
			vf->state->slots[i].proc = NULL;
			return p;
		}
	}
	return NULL;
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
	while ((p = take_idle(vf)) || (p = take_parked(vf)) || (p = take_slot_vm(vf))) {
		p->idle_since_ns = 0;
		p->next = vt->dying;
		vt->dying = p;
	}
	/* rm and redeploy retire a version: its kept state goes with it (not a stop). */
	if (vf->state)
		vf->state->drop = 1;
	pthread_cond_signal(&vt->reaper_cond);
	pthread_mutex_unlock(&vt->lock);
}

/*
 * Waits for saves of vf's slots to end, then deletes the state files if the version was
 * retired (rm, redeploy). Waiting happens only when a save runs (at most seconds).
 */
static void release_state(struct vm_tier *vt, struct vm_fn *vf)
{
	struct snap_id layers[16];
	struct vm_proc *p;
	int n = 0;

	if (!vf->state)
		return;
	pthread_mutex_lock(&vt->lock);
	while (vf->state->dumping)
		pthread_cond_wait(&vt->state_cond, &vt->lock);
	while ((p = take_slot_vm(vf))) {
		p->next = vt->dying;
		vt->dying = p;
	}
	if (vf->state->drop)
		n = vm_state_remove(vf->state, layers, 16);
	if (n > 0)
		schedule_gc(vt);
	pthread_mutex_unlock(&vt->lock);
	vm_state_free(vf->state);
	free(vf->state);
	vf->state = NULL;
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
		vt->collect = 1;
		pthread_cond_signal(&vt->reaper_cond);
		pthread_mutex_unlock(&vt->lock);
	}
	release_state(vt, vf);
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

static void metrics_snap(struct vm_snap_stats *st, struct strbuf *out)
{
	static const char *const kinds[] = { "base", "runtime", "function", "image" };
	int k;

	sb_metric_head(out, "stoke_snapshot_layer_cache_total", "counter", "Snapshot layers "
		       "(and restore images) found already built (hit) or built (miss), by kind.");
	for (k = 0; k < VM_LAYER_KINDS; k++)
		sb_printf(out,
			  "stoke_snapshot_layer_cache_total{kind=\"%s\",result=\"hit\"} %llu\n"
			  "stoke_snapshot_layer_cache_total{kind=\"%s\",result=\"miss\"} %llu\n",
			  kinds[k], (unsigned long long)atomic_load(&st->hit[k]), kinds[k],
			  (unsigned long long)atomic_load(&st->miss[k]));
	sb_metric_head(out, "stoke_snapshot_stored_bytes_total", "counter",
		       "Bytes of new pages written to the page store, by layer kind.");
	for (k = 0; k < VM_LAYER_IMAGE; k++)
		sb_printf(out, "stoke_snapshot_stored_bytes_total{kind=\"%s\"} %llu\n", kinds[k],
			  (unsigned long long)atomic_load(&st->bytes[k]));
	sb_metric(out, "stoke_snapshot_runtime_damaged_total", "counter",
		  atomic_load(&st->damaged), "Runtime layers found damaged (versions boot).");
	sb_metric(out, "stoke_snapshot_gc_runs_total", "counter", atomic_load(&st->gc_runs),
		  "Snapshot store collections.");
	sb_metric(out, "stoke_snapshot_gc_freed_bytes_total", "counter",
		  atomic_load(&st->gc_freed_bytes), "Bytes the collections freed.");
}

static void vm_metrics(struct tier *t, struct strbuf *out)
{
	struct vm_tier *vt = tier_of(t);
	struct vm_fn *vf;
	unsigned generic;

	pthread_mutex_lock(&vt->lock);
	generic = vt->generic != NULL;
	pthread_mutex_unlock(&vt->lock);
	sb_metric(out, "stoke_vm_live", "gauge", (unsigned)atomic_load(&vt->live),
		  "VMs running, idle or parked.");
	sb_metric(out, "stoke_vm_idle_bytes", "gauge", atomic_load(&vt->idle_bytes),
		  "Host memory of idle VMs as measured when they went idle (their cgroup's "
		  "charge), plus the guest size of parked shells: what the idle budget counts.");
	sb_metric(out, "stoke_vm_boots_total", "counter", atomic_load(&vt->boots),
		  "VMs booted without a snapshot.");
	sb_metric_head(out, "stoke_vm_cold_start_seconds", "summary",
		       "Cold starts (boots and restores): request to response.");
	sb_printf(out, "stoke_vm_cold_start_seconds_sum %.6f\n"
		  "stoke_vm_cold_start_seconds_count %llu\n",
		  (double)atomic_load(&vt->boot_ns) / 1e9,
		  (unsigned long long)atomic_load(&vt->cold_starts));
	sb_metric(out, "stoke_vm_restores_total", "counter", atomic_load(&vt->restores),
		  "VMs started from a snapshot.");
	sb_metric(out, "stoke_vm_restore_failures_total", "counter",
		  atomic_load(&vt->restore_failures),
		  "Restores whose VMM failed (the version then boots).");
	sb_metric(out, "stoke_vm_generic_shell_starts_total", "counter",
		  atomic_load(&vt->generic_starts),
		  "Restores into the generic shell made before the function was known.");
	sb_metric(out, "stoke_vm_generic_shells_parked", "gauge",
		  generic,
		  "Generic shells parked (counted in stoke_vm_live): 0 or 1.");
	sb_metric(out, "stoke_vm_crashes_total", "counter", atomic_load(&vt->crashes),
		  "VMs that crashed or exited during a request.");
	sb_metric(out, "stoke_vm_timeouts_total", "counter", atomic_load(&vt->timeouts),
		  "Requests stopped at their wall-time limit.");
	sb_metric(out, "stoke_vm_state_saves_total", "counter", atomic_load(&vt->state_saves),
		  "Idle stateful instances saved to disk (state: keep).");
	sb_metric(out, "stoke_vm_state_save_failures_total", "counter",
		  atomic_load(&vt->state_save_failures), "Saves of kept state that failed.");
	sb_metric(out, "stoke_vm_state_restores_total", "counter",
		  atomic_load(&vt->state_restores), "Stateful instances restored from disk.");
	sb_metric(out, "stoke_vm_state_corrupt_total", "counter",
		  atomic_load(&vt->state_corrupt), "Saved states found damaged and set aside.");
	metrics_snap(&vt->snap_stats, out);
	sb_metric_head(out, "stoke_vm_enosys_total", "counter",
		       "Guest system calls stoke does not implement, by function and call.");
	pthread_mutex_lock(&vt->lock);
	for (vf = vt->fns; vf; vf = vf->next)
		metrics_enosys(vf, out);
	pthread_mutex_unlock(&vt->lock);
}

/* Invocations that never ran: each answers that the daemon is stopping. */
static void fail_jobs(struct vm_job *j)
{
	struct vm_job *next;

	for (; j; j = next) {
		next = j->next;
		inv_fail(j->inv, 503, "shutting_down", "the daemon is stopping");
		inv_done(j->inv);
		free(j);
	}
}

/* A slot whose turn never came: its waiting requests fail. Called with vt->lock held. */
static void fail_slot(struct vm_slot *sl)
{
	fail_jobs(sl->head);
	sl->head = sl->tail = NULL;
	sl->queued = 0;
	sl->busy = 0;
}

/* Requests that waited for an instance of vf when the tier stopped. */
static void fail_waiting(struct vm_fn *vf)
{
	fail_jobs(vf->wait_head);
	vf->wait_head = vf->wait_tail = NULL;
}

static int vm_gc(struct tier *t, struct strbuf *json, char *err, size_t errlen)
{
	struct vm_tier *vt = tier_of(t);
	struct snap_gc_stats gs;
	uint64_t files;
	int r;

	r = snap_gc(vt, 1, &gs, &files, err, errlen);
	if (r)
		return r;
	sb_printf(json, "{\"snapshot_files_removed\":%llu,\"layers_kept\":%llu,"
		  "\"layers_removed\":%llu,\"pages_referenced\":%llu,\"pages_kept\":%llu,"
		  "\"pages_removed\":%llu,\"images_removed\":%llu,\"tmp_removed\":%llu,"
		  "\"bytes_freed\":%llu}", (unsigned long long)files,
		  (unsigned long long)gs.layers, (unsigned long long)gs.layers_removed,
		  (unsigned long long)gs.referenced, (unsigned long long)gs.kept,
		  (unsigned long long)gs.deleted, (unsigned long long)gs.images_removed,
		  (unsigned long long)gs.tmp_removed, (unsigned long long)gs.bytes_freed);
	return 0;
}

/* The daemon stops once its grace is over: a deploy's snapshot build ends now. */
static void vm_cancel(struct tier *t)
{
	struct vm_tier *vt = tier_of(t);

	if (vt)
		atomic_store(&vt->cancel, 1);
}

static void vm_stop(struct tier *t)
{
	struct vm_tier *vt = tier_of(t);
	struct vm_proc *p;
	struct vm_fn *vf;
	struct vm_job *j;
	int i;

	if (!vt)
		return;
	/* Kept state outlives the daemon: idle stateful VMs are saved first. */
	save_states(vt, 1);
	pthread_mutex_lock(&vt->lock);
	vt->stopping = 1;
	/* Queued invocations fail; running ones stop their VMs and answer 503. */
	atomic_store(&vt->cancel, 1);
	while ((j = vt->head)) {
		vt->head = j->next;
		if (j->slot) {
			fail_slot(j->slot);
			continue;
		}
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
	for (vf = vt->fns; vf; vf = vf->next) {
		fail_waiting(vf);
		drain_idle(vt, vf);
		/* Requests that queued behind a save the reaper finished while stopping. */
		for (i = 0; vf->state && i < (int)vf->state->nslots; i++)
			fail_slot(&vf->state->slots[i]);
		while ((p = take_slot_vm(vf))) {
			drop(vt, p);
		}
	}
	if (vt->generic) {
		drop(vt, vt->generic);
	}
	while ((p = vt->dying)) {
		vt->dying = p->next;
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
	.gc = vm_gc,
	.cancel = vm_cancel,
	.stop = vm_stop,
};
