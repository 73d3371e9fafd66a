/*
 * The C face of the V8 shim (shim.cc, the only C++ in stoke). Everything else in the
 * isolate tier is C and sees V8 only through these calls.
 *
 * Threading: iso_v8_init() once per process. An iso_vm (one V8 isolate) is used by one
 * thread at a time; it may move to another thread once the thread that used it last
 * has called iso_v8_release() (the caller keeps two threads from using it at once).
 * The only calls allowed while another thread uses it are iso_vm_terminate() and
 * iso_vm_interrupt(). An iso_code is shared by all threads; it changes only in
 * iso_vm_code_refresh(), which the caller keeps from running alongside loads of it.
 */
#ifndef STOKE_ISO_V8_H
#define STOKE_ISO_V8_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* How a load or a call ended. */
enum iso_status {
	ISO_OK = 0,
	ISO_EXCEPTION,		/* uncaught exception; message in the error text */
	ISO_CPU_LIMIT,		/* iso_vm_terminate(vm, ISO_CPU_LIMIT) */
	ISO_WALL_LIMIT,
	ISO_MEMORY_LIMIT,	/* heap or ArrayBuffer cap reached */
	ISO_STACK_OVERFLOW,
	ISO_NO_RESPONSE,	/* the promise can never settle (nothing left to run) */
	ISO_BAD_RESPONSE,	/* fetch() resolved to something that is not a Response */
	ISO_NO_HANDLER,		/* no default export with a fetch method */
	ISO_PENDING,		/* not finished: call iso_vm_step() again */
};

/* Same layout as struct kv in common/invoke.h so callers can pass those arrays. */
struct iso_kv {
	char *name;
	char *value;
	size_t name_len;
	size_t value_len;
};

/* Where a vm sends what the JavaScript produces; set per call with iso_vm_set_io(). */
struct iso_io {
	void *opaque;
	void (*log)(void *opaque, int is_stderr, const char *msg, size_t len);
	int (*add_header)(void *opaque, const char *name, size_t nlen,
			  const char *value, size_t vlen);
	/* Takes ownership of a malloc'd body. */
	void (*set_body)(void *opaque, char *body, size_t len);
};

struct iso_req {
	const char *method;
	const char *url;
	const struct iso_kv *headers;
	size_t nheaders;
	const char *body;
	size_t body_len;
	uint64_t wall_deadline_ns;	/* CLOCK_MONOTONIC; timers never sleep past it */
};

struct iso_code;
struct iso_vm;

/* Work to run on the thread executing a vm's JavaScript, at its next interrupt check;
 * embed it in the caller's own structure. */
struct iso_interrupt {
	void (*fn)(struct iso_interrupt *in);
};

/* Starts V8 and builds the startup snapshot holding the Web API runtime. 0 or -errno. */
int iso_v8_init(char *err, size_t errlen);
/* The runtime snapshot's size in bytes (for metrics). */
size_t iso_v8_snapshot_size(void);
uint64_t iso_v8_now_ns(void);

/*
 * Reads dir/entry and every module it imports, compiles them and keeps V8 code caches.
 * Returns 0, -EINVAL for a script error ("path: line L, column C: message" in err),
 * -ENOENT for a missing file, or another -errno.
 */
int iso_code_compile(const char *dir, const char *entry, struct iso_code **out,
		     char *err, size_t errlen);
void iso_code_free(struct iso_code *code);
size_t iso_code_size(const struct iso_code *code);
/* How many modules were compiled (entry included) and how big their caches are. */
size_t iso_code_nmodules(const struct iso_code *code);

/* A blank isolate with a fresh runtime context, both from the snapshot; no tenant
 * code yet. */
struct iso_vm *iso_vm_new(void);
void iso_vm_free(struct iso_vm *vm);
/* Heap limit and ArrayBuffer cap, bytes. Call before iso_vm_load(). */
void iso_vm_set_limits(struct iso_vm *vm, size_t heap_bytes, size_t buffer_bytes);
void iso_vm_set_io(struct iso_vm *vm, const struct iso_io *io);
/*
 * Installs env in the vm's context and evaluates the tenant's modules (from the code
 * cache); top-level await may run timers until deadline_ns (CLOCK_MONOTONIC).
 * Returns an iso_status; err says what went wrong.
 */
int iso_vm_load(struct iso_vm *vm, const struct iso_code *code, const struct iso_kv *env,
		size_t nenv, uint64_t deadline_ns, char *err, size_t errlen);
/*
 * Calls the default export's fetch(request, env, ctx). Returns ISO_PENDING (then drive
 * it with iso_vm_step()) or why it failed at once. req is not used after it returns.
 */
int iso_vm_call_start(struct iso_vm *vm, const struct iso_req *req, char *err,
		      size_t errlen);
/*
 * Runs the pending call or drain for a while: microtasks, due timers, background tasks.
 * Returns ISO_PENDING with *wake_ns (CLOCK_MONOTONIC) when it is waiting for a timer or
 * background work, ISO_OK when done (a call has emitted the response through the io
 * callbacks and set *status), or a failure. A call that emitted its response leaves
 * its ctx.waitUntil() work pending (see iso_vm_busy); its leftover timers are dropped
 * when that is done.
 */
int iso_vm_step(struct iso_vm *vm, int *status, uint64_t *wake_ns, char *err,
		size_t errlen);
/* iso_vm_call_start() and, if it is pending, the first iso_vm_step(), in one entry. */
int iso_vm_call(struct iso_vm *vm, const struct iso_req *req, int *status, uint64_t *wake_ns,
		char *err, size_t errlen);
/* Whether work is pending: after an answered call, waitUntil work to step through. */
int iso_vm_busy(struct iso_vm *vm);
/* Any thread: stops running JavaScript; the call returns `why`. */
void iso_vm_terminate(struct iso_vm *vm, enum iso_status why);
/* Any thread: runs in->fn on the thread running vm's JavaScript, soon, or whenever the
 * vm next runs JavaScript (so in->fn must check that it is still wanted). */
void iso_vm_interrupt(struct iso_vm *vm, struct iso_interrupt *in);
/* Lets other threads use every vm this thread used, except `keep` (may be NULL). */
void iso_v8_release(struct iso_vm *keep);
/*
 * After a request (also one a limit ended): replaces code's caches with ones made from
 * the vm's modules, which now hold the functions that request compiled, where they are
 * bigger. Only for the vm's own code, only while no other thread loads from it, and
 * once per vm. The vm stays 64 KiB bigger (V8's external reference map). Returns the
 * bytes the caches grew.
 */
long iso_vm_code_refresh(struct iso_vm *vm, struct iso_code *code);
/* Heap bytes in use (V8's used_heap_size plus external ArrayBuffer memory). */
size_t iso_vm_memory(struct iso_vm *vm);
/* A full garbage collection that shrinks an idle isolate's heap (about a millisecond). */
void iso_vm_idle(struct iso_vm *vm);

#ifdef __cplusplus
}
#endif

#endif
