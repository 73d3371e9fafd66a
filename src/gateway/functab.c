/* The table of function names: lookups on every request (read lock), changes from the
 * admin thread only (write lock). Also the per-function log rings. */
#include "gateway.h"
#include "common/log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define GW_BUCKETS 16384
#define GW_LOG_MSG_MAX 8192

static size_t gw_hash(const char *s, size_t len)
{
	uint64_t h = 1469598103934665603ull;	/* FNV-1a */
	size_t i;

	for (i = 0; i < len; i++)
		h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
	return (size_t)h;
}

int gw_table_init(struct gw *gw)
{
	gw->nbuckets = GW_BUCKETS;
	gw->buckets = calloc(gw->nbuckets, sizeof(*gw->buckets));
	if (!gw->buckets)
		return -ENOMEM;
	return -pthread_rwlock_init(&gw->lock, NULL);
}

static struct gw_entry *gw_entry_new(const char *name, size_t len)
{
	struct gw_entry *e = calloc(1, sizeof(*e));

	if (!e)
		return NULL;
	memcpy(e->name, name, len);
	pthread_mutex_init(&e->logs.lock, NULL);
	e->logs.next_seq = 1;
	return e;
}

struct gw_entry *gw_entry_get(struct gw *gw, const char *name, size_t len, int create)
{
	struct gw_entry **slot, *e;

	if (len >= sizeof(e->name))
		return NULL;
	slot = &gw->buckets[gw_hash(name, len) % gw->nbuckets];
	for (e = *slot; e; e = e->next) {
		if (strlen(e->name) == len && !memcmp(e->name, name, len))
			return e;
	}
	if (!create)
		return NULL;
	e = gw_entry_new(name, len);
	if (e) {
		e->next = *slot;
		*slot = e;
	}
	return e;
}

/* The entry of name under the table lock, made when create is set. Entries are never
 * freed while the daemon runs, so it stays valid after the lock (stats, logs). */
static struct gw_entry *gw_entry_locked(struct gw *gw, const char *name, int create)
{
	struct gw_entry *e;

	if (create)
		pthread_rwlock_wrlock(&gw->lock);
	else
		pthread_rwlock_rdlock(&gw->lock);
	e = gw_entry_get(gw, name, strlen(name), create);
	pthread_rwlock_unlock(&gw->lock);
	return e;
}

/* The entry only, taking no reference to its version. */
struct gw_entry *gw_entry_find(struct gw *gw, const char *name)
{
	return gw_entry_locked(gw, name, 0);
}

/* Made if there is none: what a first deploy logs while its version is prepared (a
 * Python import's output) lands before the version is installed. */
struct gw_entry *gw_entry_make(struct gw *gw, const char *name)
{
	return gw_entry_locked(gw, name, 1);
}

struct fn *gw_fn_lookup(struct gw *gw, const char *name, size_t len, struct gw_entry **entry)
{
	struct gw_entry *e;
	struct fn *fn = NULL;

	pthread_rwlock_rdlock(&gw->lock);
	e = gw_entry_get(gw, name, len, 0);
	if (e && e->fn)
		fn = fn_ref(e->fn);
	pthread_rwlock_unlock(&gw->lock);
	*entry = e;
	return fn;
}

void gw_fn_install(struct gw *gw, const char *name, struct fn *fn, int64_t deployed_at)
{
	struct gw_entry *e;
	struct fn *old;

	pthread_rwlock_wrlock(&gw->lock);
	e = gw_entry_get(gw, name, strlen(name), 1);
	if (!e) {
		pthread_rwlock_unlock(&gw->lock);
		fn_unref(fn);
		return;
	}
	old = e->fn;
	e->fn = fn;
	e->deployed_at = deployed_at;
	free(e->load_error);
	e->load_error = NULL;
	gw->nlive += (fn != NULL) - (old != NULL);
	pthread_rwlock_unlock(&gw->lock);
	if (old) {
		old->retired = 1;
		gw->tiers[old->tier].ops->retire(&gw->tiers[old->tier], old);
		fn_unref(old);
	}
}

/* functions/NAME once no version is left in it (rmdir refuses one that is not empty). */
void gw_fn_dir_prune(struct gw *gw, const char *name)
{
	char dir[4200];

	if (!name[0])
		return;
	snprintf(dir, sizeof(dir), "%s/functions/%s", gw->cfg->data_dir, name);
	(void)rmdir(dir);
}

/* functions/NAME/vN of a version replaced or deleted, and functions/NAME once empty. */
static void gw_version_remove(struct gw *gw, const struct fn *fn)
{
	char top[4200];
	size_t n = (size_t)snprintf(top, sizeof(top), "%s/functions/", gw->cfg->data_dir);

	/* Only what the daemon itself stored: never a directory given some other way. */
	if (!fn->dir || n >= sizeof(top) || strncmp(fn->dir, top, n) || strstr(fn->dir, ".."))
		return;
	gw_rmtree(fn->dir);
	gw_fn_dir_prune(gw, fn->name);
}

/* The last reference to a version is gone: let its tier free what it built, and drop
 * its files if it was replaced or deleted (requests that still ran on it used them). */
void gw_fn_release(struct fn *fn)
{
	struct tier *t;

	if (!gw_global)
		return;
	if (fn->tier_data) {
		t = &gw_global->tiers[fn->tier];
		t->ops->release(t, fn);
	}
	if (fn->retired)
		gw_version_remove(gw_global, fn);
}

static void gw_logring_add(struct gw_logring *r, const char *request_id, const char *stream,
			   const char *msg, size_t len)
{
	struct gw_logline *l;
	char *copy;

	if (len > GW_LOG_MSG_MAX)
		len = GW_LOG_MSG_MAX;
	while (len && (msg[len - 1] == '\n' || msg[len - 1] == '\r'))
		len--;
	copy = malloc(len + 1);
	if (!copy)
		return;
	memcpy(copy, msg, len);
	copy[len] = '\0';
	pthread_mutex_lock(&r->lock);
	if (!r->lines)
		r->lines = calloc(GW_LOG_RING, sizeof(*r->lines));
	if (!r->lines) {
		pthread_mutex_unlock(&r->lock);
		free(copy);
		return;
	}
	l = &r->lines[r->next_seq % GW_LOG_RING];
	free(l->msg);
	l->seq = r->next_seq++;
	l->msg = copy;
	l->len = len;
	log_timestamp(l->ts, sizeof(l->ts));
	snprintf(l->request_id, sizeof(l->request_id), "%s", request_id ? request_id : "");
	snprintf(l->stream, sizeof(l->stream), "%s", stream);
	pthread_mutex_unlock(&r->lock);
}

static void gw_logring_free(struct gw_logring *r)
{
	size_t i;

	for (i = 0; r->lines && i < GW_LOG_RING; i++)
		free(r->lines[i].msg);
	free(r->lines);
	r->lines = NULL;
}

/* `stoke rm`: the function's log lines go with it; sequence numbers keep counting, so a
 * follower (`stoke logs -f`) just sees no more of them. */
void gw_fn_logs_clear(struct gw *gw, const char *name)
{
	struct gw_entry *e = gw_entry_find(gw, name);
	struct gw_logring *r;

	if (!e)
		return;
	r = &e->logs;
	pthread_mutex_lock(&r->lock);
	gw_logring_free(r);
	r->first_seq = r->next_seq;
	pthread_mutex_unlock(&r->lock);
}

void gw_fnlog_sink(const char *fn_name, const char *request_id, const char *stream,
		   const char *msg, size_t len)
{
	struct gw_entry *e = gw_entry_find(gw_global, fn_name);

	if (e)
		gw_logring_add(&e->logs, request_id, stream, msg, len);
}

void gw_table_free(struct gw *gw)
{
	struct gw_entry *e, *next;
	size_t i;

	for (i = 0; i < gw->nbuckets; i++) {
		for (e = gw->buckets[i]; e; e = next) {
			next = e->next;
			fn_unref(e->fn);
			free(e->load_error);
			gw_logring_free(&e->logs);
			free(e);
		}
	}
	free(gw->buckets);
}
