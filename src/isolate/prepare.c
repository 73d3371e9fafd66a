/*
 * Deploy-time work for the isolate tier: TypeScript goes through esbuild into the
 * function's directory (bundle.c), then every module is compiled once and its V8 code cache kept
 * in fn->tier_data, so cold starts deserialize code instead of parsing it. Last, the
 * modules are evaluated once in a throwaway isolate, as a cold start would.
 */
#include "isolate/iso.h"

#include "common/invoke.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && !strcmp(s + n - m, suffix);
}

/* "src/app.ts" -> "src/.app.stoke.js": next to its source so relative .wasm imports
 * still resolve, and hidden so it cannot collide with a tenant's own app.js. */
static void ts_output(const char *entry, char *out, size_t len)
{
	const char *slash = strrchr(entry, '/');
	int dirlen = slash ? (int)(slash - entry + 1) : 0;
	const char *base = entry + dirlen;

	snprintf(out, len, "%.*s.%.*s.stoke.js", dirlen, entry, (int)(strlen(base) - 3), base);
}

/* ---- the trial load and the trial request ---- */

/*
 * The trial request gets the function's CPU limit, at most this long (wall time): it
 * only has to run fetch() far enough for V8 to compile it, and a deploy should not
 * wait for a slow first request.
 */
#define ISO_TRIAL_CALL_MS 100

struct trial {
	struct iso_vm *vm;
	const struct fn *fn;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_t watch;
	uint64_t budget_ns;
	int done;
};

/* Top-level console output at deploy goes to the function's logs, like a request's. */
static void trial_log(void *opaque, int is_stderr, const char *msg, size_t len)
{
	const struct trial *tr = opaque;

	fnlog_write(tr->fn->name, "deploy", is_stderr ? "stderr" : "stdout", msg, len);
}

/* Ends JavaScript that runs past tr->budget_ns (measured as wall time). */
static void *trial_watch(void *arg)
{
	struct trial *tr = arg;
	struct timespec until;
	int r = 0;

	iso__deadline_after(&until, tr->budget_ns);
	pthread_mutex_lock(&tr->lock);
	while (!tr->done && r != ETIMEDOUT)
		r = pthread_cond_timedwait(&tr->cond, &tr->lock, &until);
	if (!tr->done)
		iso_vm_terminate(tr->vm, ISO_CPU_LIMIT);
	pthread_mutex_unlock(&tr->lock);
	return NULL;
}

static int trial_watch_start(struct trial *tr, uint64_t budget_ns)
{
	tr->done = 0;
	tr->budget_ns = budget_ns;
	return pthread_create(&tr->watch, NULL, trial_watch, tr) ? -EAGAIN : 0;
}

static void trial_watch_stop(struct trial *tr)
{
	pthread_mutex_lock(&tr->lock);
	tr->done = 1;
	pthread_cond_signal(&tr->cond);
	pthread_mutex_unlock(&tr->lock);
	pthread_join(tr->watch, NULL);
}

static int trial_error(const char *entry, int rc, char *err, size_t errlen)
{
	char why[1024];

	snprintf(why, sizeof(why), "%s", err);
	if (rc == ISO_NO_HANDLER)
		snprintf(err, errlen, "%s has no default export with a fetch method: write "
			 "export default { async fetch(request, env, ctx) { ... } } "
			 "(addEventListener('fetch') and module.exports are not supported)",
			 entry);
	else if (rc == ISO_CPU_LIMIT || rc == ISO_WALL_LIMIT)
		snprintf(err, errlen, "%s: top-level code ran for more than %d ms", entry,
			 ISO_STARTUP_CPU_MS);
	else if (rc == ISO_MEMORY_LIMIT)
		snprintf(err, errlen, "%s: top-level code exceeded the memory limit", entry);
	else if (strstr(why, "ReferenceError") && (strstr(why, "module is not defined") ||
		 strstr(why, "exports is not defined") || strstr(why, "require is not defined") ||
		 strstr(why, "addEventListener is not defined")))
		/* A CommonJS or service-worker script: say which form works instead. */
		snprintf(err, errlen, "%s: top-level code failed: %s (stoke runs ES modules: "
			 "write export default { async fetch(request, env, ctx) { ... } }, and "
			 "bundle CommonJS dependencies with esbuild)", entry, why);
	else
		snprintf(err, errlen, "%s: top-level code failed: %s", entry, why);
	return -EINVAL;
}

/* The trial request's response and console output go nowhere. */
static int discard_header(void *opaque, const char *name, size_t nlen, const char *value,
			  size_t vlen)
{
	return 0;
}

static void discard_body(void *opaque, char *body, size_t len)
{
	free(body);
}

/*
 * Calls fetch() once with a synthetic `GET http://localhost/`, so that the code caches
 * made afterwards hold fetch() and what it called already compiled: V8 compiles inner
 * functions lazily, at their first call, and offers no eager compile for modules (a
 * small function's first call in a fresh isolate measured 298 -> 150 us of CPU).
 * Nothing of the call leaves the trial isolate, which is thrown away: the runtime has
 * no outbound I/O (its fetch() throws; there are no sockets, files or clocks to set),
 * console output and the response are dropped, timers that are not due yet and
 * waitUntil() work never run. How it ends (a response, a throw, a limit) does not
 * matter: whatever it compiled is kept.
 */
static void trial_call(struct trial *tr, uint64_t budget_ns)
{
	static const struct iso_io quiet = { .add_header = discard_header,
					     .set_body = discard_body };
	struct iso_kv host = { (char *)"host", (char *)"localhost", 4, 9 };
	struct iso_req req = { .method = "GET", .url = "http://localhost/",
			       .headers = &host, .nheaders = 1 };
	char err[256];
	uint64_t wake;
	int rc, status;

	iso_vm_set_io(tr->vm, &quiet);
	req.wall_deadline_ns = iso_v8_now_ns() + budget_ns;
	rc = iso_vm_call_start(tr->vm, &req, err, sizeof(err));
	while (rc == ISO_PENDING) {
		rc = iso_vm_step(tr->vm, &status, &wake, err, sizeof(err));
		if (rc == ISO_PENDING && wake > iso_v8_now_ns())
			break;
	}
}

/*
 * Evaluates the modules once, as a cold start does, so that a script without a fetch
 * handler (service-worker syntax, CommonJS) or one that throws at the top level is a
 * 400 at deploy instead of a 500 on every request. Then makes the trial request and
 * remakes the code caches from this isolate (see trial_call). Runs on the admin
 * thread, in an isolate of its own, under its own watchdog; the isolate is thrown away,
 * with the 64 KiB that making a code cache leaves in it.
 */
static int trial_load(const struct fn *fn, struct iso_code *code, const char *entry,
		      char *err, size_t errlen)
{
	size_t mem = (size_t)(fn->limits.memory_mb ? fn->limits.memory_mb :
			      ISO_DEFAULT_MEMORY_MB) << 20;
	uint32_t call_ms = fn->limits.cpu_ms ? fn->limits.cpu_ms : ISO_DEFAULT_CPU_MS;
	uint64_t load_ns = (uint64_t)ISO_STARTUP_CPU_MS * 1000000u, call_ns;
	struct trial tr = { .fn = fn, .lock = PTHREAD_MUTEX_INITIALIZER,
			    .cond = PTHREAD_COND_INITIALIZER };
	struct iso_io io = { .opaque = &tr, .log = trial_log };
	int rc;

	tr.vm = iso_vm_new();
	if (!tr.vm)
		return -ENOMEM;
	iso_vm_set_limits(tr.vm, mem, mem);
	iso_vm_set_io(tr.vm, &io);
	if (trial_watch_start(&tr, load_ns)) {
		iso_vm_free(tr.vm);
		return -EAGAIN;
	}
	rc = iso_vm_load(tr.vm, code, (const struct iso_kv *)fn->env, fn->nenv,
			 iso_v8_now_ns() + load_ns, err, errlen);
	trial_watch_stop(&tr);
	call_ns = (uint64_t)(call_ms < ISO_TRIAL_CALL_MS ? call_ms : ISO_TRIAL_CALL_MS) * 1000000u;
	if (rc == ISO_OK && !trial_watch_start(&tr, call_ns)) {
		trial_call(&tr, call_ns);
		trial_watch_stop(&tr);
		iso_vm_code_refresh(tr.vm, code);
	}
	iso_vm_set_io(tr.vm, NULL);
	iso_vm_free(tr.vm);
	return rc == ISO_OK ? 0 : trial_error(entry, rc, err, errlen);
}

/* ---- prepare and release ---- */

int iso__prepare(struct tier *t, struct fn *fn, char *err, size_t errlen)
{
	char js[300], path[4400];
	const char *entry = fn->entry[0] ? fn->entry : "index.js";
	struct iso_fn *f;
	int rc;

	if (!fn->dir)
		return -EINVAL;
	if (ends_with(entry, ".ts") || ends_with(entry, ".mts")) {
		if (ends_with(entry, ".mts"))
			snprintf(js, sizeof(js), "%.*s.ts", (int)strlen(entry) - 4, entry);
		ts_output(ends_with(entry, ".mts") ? js : entry, js, sizeof(js));
		snprintf(path, sizeof(path), "%s/%s", fn->dir, js);
		rc = iso__bundle(fn->dir, entry, path, &((struct iso_tier *)t->priv)->cancel,
				 err, errlen);
		if (rc)
			return rc;
		entry = js;
	}
	f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	atomic_init(&f->worker, -1);
	rc = iso_code_compile(fn->dir, entry, &f->code, err, errlen);
	if (!rc)
		rc = trial_load(fn, f->code, entry, err, errlen);
	if (rc) {
		if (f->code)
			iso_code_free(f->code);
		free(f);
		return rc;
	}
	fn->tier_data = f;
	return 0;
}

void iso__release(struct tier *t, struct fn *fn)
{
	struct iso_fn *f = fn->tier_data;

	if (!f)
		return;
	iso_code_free(f->code);
	free(f->waiting);
	free(f);
	fn->tier_data = NULL;
}
