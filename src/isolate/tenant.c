/*
 * Per-worker state of the isolate tier that lives between requests: the pool of blank
 * isolates, the tenants (live function instances) in LRU order, idle collection and
 * eviction under the memory budget. Everything here runs on the owning worker thread.
 */
#include "isolate/iso.h"

#include <stdlib.h>

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

/* ---- the pool of blank isolates ---- */

struct iso_vm *iso__pool_take(struct iso_worker *w)
{
	struct iso_tier *it = w->tier;

	if (w->npool) {
		atomic_fetch_sub(&it->pool_size, 1);
		return w->pool[--w->npool];
	}
	atomic_fetch_add(&it->pool_misses, 1);
	return iso_vm_new();
}

void iso__pool_refill_one(struct iso_worker *w)
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

static void instance_unlink(struct iso_fn *f, struct iso_tenant *tn)
{
	struct iso_tenant **p;

	for (p = &f->instances; *p; p = &(*p)->sibling) {
		if (*p == tn) {
			*p = tn->sibling;
			f->ninstances--;
			return;
		}
	}
}

void iso__tenant_drop(struct iso_worker *w, struct iso_tenant *tn)
{
	struct iso_tier *it = w->tier;

	set_trimmed(w, tn, 1);
	lru_unlink(w, tn);
	instance_unlink(tn->fn->tier_data, tn);
	w->mem -= tn->mem;
	atomic_fetch_sub(&it->mem_bytes, (long)tn->mem);
	atomic_fetch_sub(&it->live, 1);
	w->nlive--;
	w->maps -= tn->maps;
	iso_vm_free(tn->vm);
	fn_unref(tn->fn);
	free(tn);
}

void iso__tenant_account(struct iso_worker *w, struct iso_tenant *tn, size_t mem)
{
	long maps = ISO_MAPS_PER_ISOLATE +
		    (mem > (1u << 20) ? (long)((mem - (1u << 20)) / ISO_HEAP_PAGE) : 0);

	w->maps += maps - tn->maps;
	tn->maps = maps;
	w->mem += mem - tn->mem;
	atomic_fetch_add(&w->tier->mem_bytes, (long)mem - (long)tn->mem);
	tn->mem = mem;
}

/* Collects one tenant that has been idle long enough; returns whether it did. Idle
 * tenants sit behind the recently used ones in the LRU list, so the walk is short. */
int iso__tenants_trim_one(struct iso_worker *w)
{
	uint64_t now = mono_ns();
	struct iso_tenant *tn;

	for (tn = w->lru_head; tn && w->untrimmed; tn = tn->next) {
		if (tn->trimmed || tn->call || now - tn->last_used_ns < ISO_TRIM_IDLE_NS)
			continue;
		iso_vm_idle(tn->vm);
		set_trimmed(w, tn, 1);
		iso__tenant_account(w, tn, iso_vm_memory(tn->vm));
		atomic_fetch_add(&w->tier->trims, 1);
		return 1;
	}
	return 0;
}

/* Evicts least recently used idle tenants until the worker is within its share of
 * the budget and of the live isolate cap; `keep` (the one just used) and tenants with
 * requests stay. */
void iso__tenants_evict(struct iso_worker *w, struct iso_tenant *keep)
{
	struct iso_tier *it = w->tier;
	struct iso_tenant *tn = w->lru_tail, *prev;

	for (; tn && (w->mem > it->budget_per_worker ||
		      w->maps > (long)it->max_live_per_worker * ISO_MAPS_PER_ISOLATE);
	     tn = prev) {
		prev = tn->prev;
		if (tn == keep || tn->call)
			continue;
		iso__tenant_drop(w, tn);
		atomic_fetch_add(&it->evictions, 1);
	}
}

/* Moves a tenant to the front of the LRU list as a request starts. */
void iso__tenant_touch(struct iso_worker *w, struct iso_tenant *tn)
{
	lru_unlink(w, tn);
	lru_push_front(w, tn);
}

/*
 * Remakes a function's code caches (see iso_vm_code_refresh) once it has started a
 * second instance: only functions that cold-start again gain from it, and V8 keeps
 * 64 KiB in an isolate that has made a code cache (its external reference map), which
 * an idle tenant should not carry for nothing.
 */
static int maybe_refresh_code(struct iso_worker *w, struct iso_tenant *tn)
{
	struct iso_fn *f = tn->fn->tier_data;

	if (f->code_refreshed || f->ninstances_made < 2)
		return 0;
	f->code_refreshed = 1;
	iso_vm_code_refresh(tn->vm, f->code);
	atomic_fetch_add(&w->tier->code_refreshes, 1);
	return 1;
}

/* A request (and its waitUntil work) finished: account memory, schedule a trim. */
void iso__tenant_idle(struct iso_worker *w, struct iso_tenant *tn, size_t mem)
{
	if (maybe_refresh_code(w, tn) || !mem)
		mem = iso_vm_memory(tn->vm);
	tn->last_used_ns = mono_ns();
	set_trimmed(w, tn, 0);
	iso__tenant_account(w, tn, mem);
	iso__tenants_evict(w, tn);
}

/* Adds a freshly loaded tenant (already trimmed: nothing ran in it yet). */
void iso__tenant_add(struct iso_worker *w, struct iso_tenant *tn)
{
	struct iso_fn *f = tn->fn->tier_data;

	tn->trimmed = 1;
	f->ninstances_made++;
	tn->sibling = f->instances;
	f->instances = tn;
	f->ninstances++;
	lru_push_front(w, tn);
	w->nlive++;
	tn->maps = ISO_MAPS_PER_ISOLATE;
	w->maps += tn->maps;
	atomic_fetch_add(&w->tier->live, 1);
	iso__tenants_evict(w, tn);
}
