/*
 * Internals of the daemon: event-loop threads (server.c), routing and responses
 * (route.c), the admin API (admin.c), the function table with per-function stats and
 * log rings (functab.c), metrics (metrics.c). Prefix gw_.
 */
#ifndef STOKE_GATEWAY_H
#define STOKE_GATEWAY_H

#include <h2o.h>
#include <pthread.h>
#include <sys/types.h>
#include <stdatomic.h>

#include "common/invoke.h"
#include "common/strbuf.h"
#include "daemon.h"

struct reg;
struct meter;

#define GW_HIST_BUCKETS 14
extern const double gw_hist_bounds_ms[GW_HIST_BUCKETS];

/* Counters for one function name; they outlive redeploys (and deletes, until restart). */
struct gw_stats {
	atomic_uint_fast64_t by_class[6];	/* index status / 100 */
	atomic_uint_fast64_t errors;		/* 5xx answers */
	atomic_uint_fast64_t cold_starts;
	atomic_uint_fast64_t hist[GW_HIST_BUCKETS + 1];	/* last: +Inf */
	atomic_uint_fast64_t dur_us_sum;
};

struct gw_logline {
	uint64_t seq;
	char ts[32];
	char request_id[24];
	char stream[8];
	char *msg;
	size_t len;	/* msg may hold NUL bytes */
};

#define GW_LOG_RING 1024

/* The recent log lines of one function, served by `stoke logs`. */
struct gw_logring {
	pthread_mutex_t lock;
	uint64_t next_seq;
	uint64_t first_seq;	/* lines before it were deleted with their function */
	/* GW_LOG_RING lines (90 KiB), made at the first line and freed with the function:
	 * a name that was deleted or never deployed keeps only its entry. NULL: no lines
	 * (first_seq == next_seq, or none yet). */
	struct gw_logline *lines;
};

/* One name in the function table. Entries are never freed while the daemon runs:
 * a deleted function leaves a tombstone (fn == NULL) that keeps its stats; its logs
 * go with it (gw_fn_logs_clear). */
struct gw_entry {
	char name[64];
	struct fn *fn;		/* live version, or NULL; guarded by the table lock */
	char *load_error;	/* why the stored version could not be loaded at start */
	int64_t load_version;	/* that version */
	int64_t deployed_at;
	struct gw_stats stats;
	struct gw_logring logs;
	atomic_uint_fast32_t inflight;	/* admitted and not yet answered */
	struct gw_entry *next;
};

struct gw_thread;

struct gw {
	const struct daemon_config *cfg;
	h2o_globalconf_t h2o;
	struct gw_thread *threads;
	int nthreads;
	pthread_barrier_t ready;	/* the loop threads have set themselves up */
	struct tier tiers[TIER_COUNT];
	struct tier admin;	/* deploys and deletes, one at a time */
	struct tier admin_read;	/* reads: never wait behind a deploy */
	struct reg *reg;
	struct meter *meter;
	char token[65];
	char vmm_path[4096];
	uint64_t started_ns;
	atomic_int stopping;
	atomic_uint_fast64_t requests;
	atomic_uint_fast64_t inflight;
	uint64_t min_free_mb;		/* below this much available memory: 503 */
	atomic_int low_memory;
	atomic_llong mem_available_mb;	/* the last sample; -1 if unknown */
	/* the function table */
	pthread_rwlock_t lock;
	struct gw_entry **buckets;
	size_t nbuckets;
	size_t nlive;
};

/* Requests in flight besides the admin call asking (it is counted while it runs). */
static inline uint64_t gw_inflight_others(struct gw *gw)
{
	uint64_t n = atomic_load(&gw->inflight);

	return n ? n - 1 : 0;
}

extern struct gw *gw_global;

uint64_t gw_now_ns(void);
/* Creates every directory named before a '/' in path (not its last component). */
int gw_mkdir_parents(const char *path, mode_t mode);
void gw_rmtree(const char *dir);
void gw_sweep_versions(struct gw *gw);

/* functab.c */
int gw_table_init(struct gw *gw);
/* Finds or creates the entry for name (the table lock must be held for writing). */
struct gw_entry *gw_entry_get(struct gw *gw, const char *name, size_t len, int create);
/* The entry of name (or NULL), without a reference to its version; takes the lock. */
struct gw_entry *gw_entry_find(struct gw *gw, const char *name);
/* The same, making the entry if there is none (NULL without memory). */
struct gw_entry *gw_entry_make(struct gw *gw, const char *name);
/* Looks name up and returns a reference to its live version, or NULL. */
struct fn *gw_fn_lookup(struct gw *gw, const char *name, size_t len, struct gw_entry **entry);
/* Installs fn as the live version of its name (NULL deletes); retires the old one. */
void gw_fn_install(struct gw *gw, const char *name, struct fn *fn, int64_t deployed_at);
void gw_fn_logs_clear(struct gw *gw, const char *name);
void gw_fn_dir_prune(struct gw *gw, const char *name);
void gw_fnlog_sink(const char *fn_name, const char *request_id, const char *stream,
		   const char *msg, size_t len);
void gw_fn_release(struct fn *fn);
void gw_table_free(struct gw *gw);

/* route.c */
int gw_on_req(h2o_handler_t *self, h2o_req_t *req);
void gw_on_done(h2o_multithread_receiver_t *rx, h2o_linklist_t *messages);

/* admin.c */
extern const struct tier_ops gw_admin_ops;
/* Loads every live function from the registry at start. */
int gw_admin_load(struct gw *gw);

/* metrics.c */
void gw_stats_record(struct gw_stats *st, int status, uint64_t dur_ns, int cold);
void gw_metrics_render(struct gw *gw, struct strbuf *out);

/* server.c */
int gw_run(struct gw *gw);

/* Whether function requests are admitted now, for health and status. */
struct gw_health {
	int accepting;
	const char *reason;		/* why not, or NULL */
	long long mem_available_mb;	/* -1 if unknown */
	uint64_t min_free_mb;
};

void gw_health_get(struct gw *gw, struct gw_health *h);
/* Appends the health answer, {"ok":true,"accepting":...}, to sb. */
void gw_health_json(struct gw *gw, struct strbuf *sb);

/* One access-log line. Strings need not be NUL-terminated where a length is given. */
struct gw_access {
	const char *request_id;
	const char *method, *path;
	size_t method_len, path_len;
	const char *fn, *tier;
	int status;
	int cold;
	size_t bytes;
	uint64_t start_ns;
};

/* The access log: buffered per loop thread, flushed off the request path. */
void gw_access_log(struct gw_thread *t, const struct gw_access *a);

#endif
