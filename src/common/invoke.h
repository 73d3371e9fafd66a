/*
 * One function invocation as it travels from the gateway to an execution tier and back,
 * and the interface every tier implements.
 *
 * Threading contract: the gateway builds a struct inv on its event-loop thread and hands
 * it to tier->ops->invoke(). From then on the tier owns it: it may run the function on
 * any thread, fills inv->resp, and calls inv_done() exactly once, from any thread. The
 * gateway then writes the response on its loop thread and frees the invocation. Nothing
 * in the request may be modified by the tier.
 */
#ifndef STOKE_INVOKE_H
#define STOKE_INVOKE_H

#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>

struct strbuf;

struct kv {
	char *name;
	char *value;
	size_t name_len;
	size_t value_len;
};

enum fn_tier { TIER_ISOLATE = 0, TIER_VM = 1, TIER_COUNT };

struct fn_limits {
	uint32_t cpu_ms;	/* CPU time per request (isolate tier) */
	uint32_t wall_ms;	/* wall time per request */
	uint32_t memory_mb;	/* heap (isolate) or guest memory (vm) */
	uint32_t max_instances;
	uint32_t concurrency;	/* requests one instance serves at once */
	uint32_t tmp_mb;	/* writable /tmp size (vm) */
	uint32_t queue;		/* requests waiting beyond max_instances x concurrency */
};

/*
 * A deployed version of a function. Immutable after deploy; shared by reference
 * between the registry's table and in-flight invocations, so a redeploy can swap the
 * table entry while old requests finish on the old version.
 */
struct fn {
	atomic_int refs;
	char name[64];
	int64_t version;
	enum fn_tier tier;
	char runtime[32];	/* "js", "python3", "native" */
	char entry[256];	/* entry file, relative to dir */
	char *dir;		/* absolute path of this version's files */
	struct fn_limits limits;
	struct kv *env;
	size_t nenv;
	int strict;		/* isolation: strict */
	int keep_state;		/* state: keep */
	int retired;		/* replaced or deleted: dir goes with the last reference */
	void *tier_data;	/* owned by the tier (compiled code, pools...) */
};

struct fn *fn_ref(struct fn *fn);
/* The daemon installs a hook that calls the tier's release() before fn memory goes. */
void fn_set_release_hook(void (*hook)(struct fn *fn));
void fn_unref(struct fn *fn);

struct inv_request {
	const char *method;
	const char *path;	/* as the function sees it: starts with '/', no query */
	const char *query;	/* without the '?', "" when absent */
	const char *url;	/* absolute URL as the function sees it */
	struct kv *headers;	/* lower-case names, in arrival order */
	size_t nheaders;
	const char *body;
	size_t body_len;
};

struct inv_response {
	int status;
	struct kv *headers;
	size_t nheaders;
	char *body;		/* malloc'd, owned by the invocation */
	size_t body_len;
	const char *error_kind;	/* set by inv_fail: "cpu_limit", "crash"... for logs/metrics */
};

struct inv {
	struct fn *fn;			/* referenced for the invocation's life */
	char request_id[24];
	struct inv_request req;
	struct inv_response resp;
	int cold;			/* set by the tier: a new instance served it */
	uint64_t start_ns;		/* set by the gateway (monotonic) */
	uint64_t cpu_ns;		/* set by the tier when it knows */
	/* Set by the tier: memory high-water of the instance that served it (isolate:
	 * heap in use; VM: the VMM's resident set, guest memory included); 0 unknown. */
	uint64_t peak_mem_bytes;
	void (*on_done)(struct inv *inv);	/* gateway's; do not call directly */
	void *gw;			/* gateway's */
	/* The request's strings and header array live in the allocation that holds
	 * the inv (the gateway's), instead of one malloc each. */
	int req_packed;
};

/* Response builders for tiers. Each copies its arguments; return 0 or -ENOMEM. */
int inv_resp_add_header(struct inv *inv, const char *name, size_t nlen,
			const char *value, size_t vlen);
/* Takes ownership of a malloc'd body. */
void inv_resp_set_body(struct inv *inv, char *body, size_t len);
/*
 * Replaces any partial response with a JSON error {"error":kind,"message":msg,
 * "request_id":...} and the given status. kind must be a string literal.
 */
void inv_fail(struct inv *inv, int status, const char *kind, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* Appends the body of every error stoke produces:
 * {"error":kind,"message":msg,"request_id":id} and a newline. */
void inv_error_json(struct strbuf *sb, const char *kind, const char *msg,
		    const char *request_id);
/* Hands the finished invocation back to the gateway. Call exactly once, any thread. */
void inv_done(struct inv *inv);
/* Frees request and response memory (the gateway calls this). */
void inv_free(struct inv *inv);

/*
 * A function's log stream (console.log, stderr of a VM...). Thread-safe, non-blocking:
 * lines go to an in-memory ring per function served by `stoke logs`, and to the data
 * directory off the calling thread.
 */
void fnlog_write(const char *fn_name, const char *request_id, const char *stream,
		 const char *msg, size_t len);

struct tier;

struct tier_ops {
	const char *name;
	/* Starts worker threads and pools. data_dir holds per-tier state. */
	int (*start)(struct tier *t);
	/*
	 * Called at deploy, before the version becomes visible: validate and compile
	 * (fill fn->tier_data). On failure return a negative errno and write a message
	 * for the user into err (errlen bytes); a syntax error names line and column.
	 */
	int (*prepare)(struct tier *t, struct fn *fn, char *err, size_t errlen);
	/* Runs one invocation; see the threading contract above. */
	void (*invoke)(struct tier *t, struct inv *inv);
	/* The version is no longer routed to: drop its idle instances, free tier_data
	 * once in-flight requests are done (the last fn_unref calls release). */
	void (*retire)(struct tier *t, struct fn *fn);
	/* Frees fn->tier_data; called by the last fn_unref. */
	void (*release)(struct tier *t, struct fn *fn);
	/* Appends Prometheus text lines (stoke_* names) for this tier. */
	void (*metrics)(struct tier *t, struct strbuf *out);
	/*
	 * Optional: frees what no deployed version needs any more (snapshot layers,
	 * pages, images) and appends a JSON object saying what went. Returns 0 or a
	 * negative errno with the reason in err. Called off the event loop.
	 */
	int (*gc)(struct tier *t, struct strbuf *json, char *err, size_t errlen);
	/*
	 * Optional: the daemon is stopping and its grace is over. Work that could
	 * outlast it on another tier's thread (a deploy's build in prepare, run by the
	 * admin thread the daemon joins first) ends now and fails. Stop follows.
	 */
	void (*cancel)(struct tier *t);
	/* Stops threads and frees everything; in-flight invocations are failed. */
	void (*stop)(struct tier *t);
};

struct tier {
	const struct tier_ops *ops;
	const char *data_dir;	/* the daemon's data directory */
	const char *rootfs_dir;	/* runtime root file systems: <rootfs_dir>/python3 ... */
	const char *vmm_path;	/* the stoke-vmm executable */
	int nworkers;		/* worker threads; 0 means one per core */
	uint64_t memory_budget;	/* bytes the tier may hold in idle instances */
	void *priv;
};

extern const struct tier_ops iso_tier_ops;
extern const struct tier_ops vm_tier_ops;

#endif
