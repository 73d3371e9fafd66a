/*
 * The V8 shim: the only file in stoke that includes V8 headers. It hides isolates,
 * contexts, modules, code caches and the startup snapshot behind the C API in iso_v8.h.
 *
 * The Web API runtime (the runtime directory, embedded at build time) is evaluated once into a
 * startup snapshot; every isolate is created from that snapshot and every tenant context
 * is deserialized from it, so a cold start never re-evaluates the runtime.
 */
#include "isolate/iso_v8.h"

#include <libplatform/libplatform.h>
#include <v8.h>

#include <atomic>
#include <ctype.h>
#include <errno.h>
#include <memory>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <string>
#include <sys/random.h>
#include <time.h>
#include <vector>

using namespace v8;

extern "C" const char iso_runtime_js[];
extern "C" const size_t iso_runtime_js_len;

/* Three V8 pages of 256 KiB: two semi-spaces and the new large-object space. */
#define ISO_YOUNG_INITIAL (3u * 256u * 1024u)

enum { HOOK_DISPATCH, HOOK_TIMERS_NEXT, HOOK_TIMERS_RUN, HOOK_DRAIN, HOOK_COUNT };

/* Counts ArrayBuffer memory so a tenant cannot escape its heap limit through buffers. */
class CapAllocator : public ArrayBuffer::Allocator {
public:
	std::atomic<size_t> used{0};
	std::atomic<size_t> cap{SIZE_MAX};
	std::atomic<bool> hit{false};

	void *Allocate(size_t n) override { return take(n, true); }
	void *AllocateUninitialized(size_t n) override { return take(n, false); }
	void Free(void *p, size_t n) override
	{
		free(p);
		used.fetch_sub(n);
	}

private:
	void *take(size_t n, bool zero)
	{
		void *p;

		if (used.fetch_add(n) + n > cap.load()) {
			used.fetch_sub(n);
			hit.store(true);
			return nullptr;
		}
		p = zero ? calloc(n ? n : 1, 1) : malloc(n ? n : 1);
		if (!p)
			used.fetch_sub(n);
		return p;
	}
};

struct iso_vm {
	Isolate *isolate;
	Locker *locker;				/* held by the thread that last used it */
	const void *holder;			/* that thread's tl_mark */
	size_t held_at;				/* index in that thread's tl_held */
	CapAllocator alloc;
	std::atomic<int> reason{0};
	Global<Context> ctx;
	Global<Function> hooks[HOOK_COUNT];
	Global<Object> handler;
	Global<Object> env;
	const struct iso_io *io;
	const struct iso_req *req;		/* during iso_vm_call_start */
	const struct iso_code *code;		/* during iso_vm_load */
	Global<Promise> pending;		/* fetch() or waitUntil work in progress */
	bool pending_is_call;
	bool drain_due;				/* waitUntil work or timers since dispatch */
	uint64_t deadline, stall;
	std::vector<Local<Module>> *mods;	/* during iso_vm_load */
	std::vector<Global<Module>> loaded;	/* until iso_vm_code_refresh() */
};

/*
 * An ASCII module source shared by every isolate that loads the module: each heap holds
 * a small external string instead of its own copy (a 70 KB bundle costs every instance
 * 70 KB less, and a cold start skips copying and decoding it). It belongs to the
 * iso_code, which outlives the isolates, so V8 never frees it.
 */
class SharedSource : public String::ExternalOneByteStringResource {
public:
	SharedSource(const char *data, size_t len) : data_(data), len_(len) {}
	const char *data() const override { return data_; }
	size_t length() const override { return len_; }
	void Dispose() override {}

private:
	const char *data_;
	size_t len_;
};

/* Below this a copy costs less than an external string. */
#define ISO_SHARED_SOURCE_MIN 1024

struct iso_mod {
	std::string path;	/* relative to the function's directory */
	std::string src;	/* JavaScript source or Wasm bytes */
	std::unique_ptr<SharedSource> shared;	/* src, when it is long and ASCII */
	std::vector<uint8_t> cache;
	bool wasm;
	std::vector<std::pair<std::string, int>> deps;	/* specifier -> module index */
};

struct iso_code {
	std::vector<iso_mod> mods;
	size_t bytes;
};

static std::unique_ptr<Platform> iso_platform;
static StartupData iso_blob;

/*
 * Isolates move between the threads of a worker (tier.c hands a worker to another
 * thread while one runs long JavaScript), so every use holds the isolate's Locker.
 * A thread keeps the Lockers it took until it gives its isolates up (iso_v8_release),
 * so the usual request on the thread that used the isolate last takes no lock at all:
 * a Locker per use measured 0.25 us, and several are taken per request.
 */
static thread_local char tl_mark;
static thread_local std::vector<iso_vm *> tl_held;

static void hold(iso_vm *vm)
{
	if (vm->holder == &tl_mark)
		return;
	vm->locker = new Locker(vm->isolate);
	vm->holder = &tl_mark;
	vm->held_at = tl_held.size();
	tl_held.push_back(vm);
}

static Isolate *held(iso_vm *vm)
{
	hold(vm);
	return vm->isolate;
}

static void unhold(iso_vm *vm)
{
	iso_vm *last;

	if (vm->holder != &tl_mark)
		return;
	last = tl_held.back();
	tl_held[vm->held_at] = last;
	last->held_at = vm->held_at;
	tl_held.pop_back();
	delete vm->locker;
	vm->locker = nullptr;
	vm->holder = nullptr;
}

void iso_v8_release(struct iso_vm *keep)
{
	size_t i = tl_held.size();

	while (i--)
		if (tl_held[i] != keep)
			unhold(tl_held[i]);
}

/* ---- small helpers ---- */

uint64_t iso_v8_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static void errf(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

static Local<String> str(Isolate *iso, const char *s, size_t len)
{
	return String::NewFromUtf8(iso, s, NewStringType::kNormal, (int)len)
		.FromMaybe(String::Empty(iso));
}

/* Valid UTF-8 whatever the string holds: lone surrogates become U+FFFD, so logs and
 * error bodies stay valid JSON text. */
static std::string utf8(Isolate *iso, Local<String> s)
{
	std::string out(s->Utf8Length(iso), '\0');

	s->WriteUtf8(iso, &out[0], (int)out.size(), nullptr,
		     String::NO_NULL_TERMINATION | String::REPLACE_INVALID_UTF8);
	return out;
}

/*
 * The same for strings short enough to convert in one pass into a buffer sized for the
 * worst case (3 bytes per UTF-16 unit): response headers and small bodies skip the
 * length pass and, for a header, the allocation. A longer string goes to *big.
 */
static size_t utf8_short(Isolate *iso, Local<String> s, char *buf, size_t cap,
			 std::string *big, const char **out)
{
	if ((size_t)s->Length() * 3 > cap) {
		*big = utf8(iso, s);
		*out = big->data();
		return big->size();
	}
	*out = buf;
	return (size_t)s->WriteUtf8(iso, buf, (int)cap, nullptr,
				    String::NO_NULL_TERMINATION | String::REPLACE_INVALID_UTF8);
}

static std::string to_std(Isolate *iso, Local<Value> v)
{
	TryCatch tc(iso);
	Local<String> s;

	if (!v->ToString(iso->GetCurrentContext()).ToLocal(&s))
		return "(unprintable)";
	return utf8(iso, s);
}

static iso_vm *vm_of(Isolate *iso)
{
	return static_cast<iso_vm *>(iso->GetData(0));
}

/* ---- natives the runtime calls (listed in iso_refs for the snapshot) ---- */

static void n_log(const FunctionCallbackInfo<Value> &info)
{
	iso_vm *vm = vm_of(info.GetIsolate());
	std::string msg;

	if (!vm || !vm->io || !vm->io->log || !info[1]->IsString())
		return;
	msg = utf8(info.GetIsolate(), info[1].As<String>());
	vm->io->log(vm->io->opaque, info[0]->IsTrue(), msg.data(), msg.size());
}

static void n_random_fill(const FunctionCallbackInfo<Value> &info)
{
	Local<ArrayBufferView> view;
	char *p;
	size_t n, done = 0;
	ssize_t r;

	if (!info[0]->IsArrayBufferView())
		return;
	view = info[0].As<ArrayBufferView>();
	p = (char *)view->Buffer()->Data() + view->ByteOffset();
	n = view->ByteLength();
	while (done < n) {
		r = getrandom(p + done, n - done, 0);
		if (r <= 0)
			break;
		done += r;
	}
}

/* drainDue(): the request has waitUntil work or timers; see drain_begin(). */
static void n_drain_due(const FunctionCallbackInfo<Value> &info)
{
	iso_vm *vm = vm_of(info.GetIsolate());

	if (vm)
		vm->drain_due = true;
}

static void n_utf8_length(const FunctionCallbackInfo<Value> &info)
{
	Isolate *iso = info.GetIsolate();
	Local<String> s;

	if (info[0]->ToString(iso->GetCurrentContext()).ToLocal(&s))
		info.GetReturnValue().Set(s->Utf8Length(iso));
}

/* utf8Write(string, u8): the runtime sized u8 with utf8Length first. */
static void n_utf8_write(const FunctionCallbackInfo<Value> &info)
{
	Isolate *iso = info.GetIsolate();
	Local<ArrayBufferView> view;
	Local<String> s;
	int n;

	if (!info[0]->IsString() || !info[1]->IsArrayBufferView())
		return;
	s = info[0].As<String>();
	view = info[1].As<ArrayBufferView>();
	n = s->WriteUtf8(iso, (char *)view->Buffer()->Data() + view->ByteOffset(),
			 (int)view->ByteLength(), nullptr,
			 String::NO_NULL_TERMINATION | String::REPLACE_INVALID_UTF8);
	info.GetReturnValue().Set(n);
}

/* utf8Decode(u8): invalid sequences become U+FFFD, as the WHATWG decoder does. */
static void n_utf8_decode(const FunctionCallbackInfo<Value> &info)
{
	Isolate *iso = info.GetIsolate();
	Local<ArrayBufferView> view;
	Local<String> s;
	const char *p;

	if (!info[0]->IsArrayBufferView())
		return;
	view = info[0].As<ArrayBufferView>();
	p = (const char *)view->Buffer()->Data() + view->ByteOffset();
	if (!String::NewFromUtf8(iso, p, NewStringType::kNormal, (int)view->ByteLength())
		     .ToLocal(&s)) {
		iso->ThrowException(Exception::RangeError(str(iso, "string too long", 15)));
		return;
	}
	info.GetReturnValue().Set(s);
}

static void n_now(const FunctionCallbackInfo<Value> &info)
{
	info.GetReturnValue().Set((double)iso_v8_now_ns() / 1e6);
}

static void n_clone(const FunctionCallbackInfo<Value> &info)
{
	Isolate *iso = info.GetIsolate();
	Local<Context> ctx = iso->GetCurrentContext();
	ValueSerializer ser(iso);
	std::pair<uint8_t *, size_t> buf;
	Local<Value> v;

	ser.WriteHeader();
	if (!ser.WriteValue(ctx, info[0]).FromMaybe(false))
		return;
	buf = ser.Release();
	{
		ValueDeserializer des(iso, buf.first, buf.second);

		if (des.ReadHeader(ctx).FromMaybe(false) && des.ReadValue(ctx).ToLocal(&v))
			info.GetReturnValue().Set(v);
	}
	free(buf.first);
}

/* readBody(u8): copies the current request's body into a buffer sized by the runtime. */
static void n_read_body(const FunctionCallbackInfo<Value> &info)
{
	iso_vm *vm = vm_of(info.GetIsolate());
	Local<ArrayBufferView> view;
	size_t n;

	if (!vm || !vm->req || !info[0]->IsArrayBufferView())
		return;
	view = info[0].As<ArrayBufferView>();
	n = view->ByteLength() < vm->req->body_len ? view->ByteLength() : vm->req->body_len;
	memcpy((char *)view->Buffer()->Data() + view->ByteOffset(), vm->req->body, n);
}

static const intptr_t iso_refs[] = {
	(intptr_t)n_log, (intptr_t)n_random_fill, (intptr_t)n_utf8_length,
	(intptr_t)n_utf8_write, (intptr_t)n_utf8_decode, (intptr_t)n_now,
	(intptr_t)n_clone, (intptr_t)n_read_body, (intptr_t)n_drain_due, 0,
};

static void native_fn(Isolate *iso, Local<Context> ctx, Local<Object> obj, const char *name,
		      FunctionCallback cb)
{
	Local<Function> f = FunctionTemplate::New(iso, cb)->GetFunction(ctx).ToLocalChecked();

	obj->Set(ctx, str(iso, name, strlen(name)), f).Check();
}

static Local<Object> natives(Isolate *iso, Local<Context> ctx)
{
	Local<Object> o = Object::New(iso);

	native_fn(iso, ctx, o, "log", n_log);
	native_fn(iso, ctx, o, "randomFill", n_random_fill);
	native_fn(iso, ctx, o, "utf8Length", n_utf8_length);
	native_fn(iso, ctx, o, "utf8Write", n_utf8_write);
	native_fn(iso, ctx, o, "utf8Decode", n_utf8_decode);
	native_fn(iso, ctx, o, "now", n_now);
	native_fn(iso, ctx, o, "clone", n_clone);
	native_fn(iso, ctx, o, "readBody", n_read_body);
	native_fn(iso, ctx, o, "drainDue", n_drain_due);
	return o;
}

/* ---- errors ---- */

/* "file: line L, column C: message" from a compile or evaluation failure. */
static void format_exception(Isolate *iso, Local<Context> ctx, TryCatch &tc,
			     char *err, size_t errlen)
{
	Local<Message> msg = tc.Message();
	std::string text = tc.Exception().IsEmpty() ? "unknown error"
						       : to_std(iso, tc.Exception());

	if (msg.IsEmpty()) {
		errf(err, errlen, "%s", text.c_str());
		return;
	}
	errf(err, errlen, "%s: line %d, column %d: %s",
	     to_std(iso, msg->GetScriptResourceName()).c_str(),
	     msg->GetLineNumber(ctx).FromMaybe(0), msg->GetStartColumn() + 1, text.c_str());
}

/* Logs the stack of an uncaught exception to the tenant's stderr stream. */
static void log_stack(iso_vm *vm, Local<Context> ctx, Local<Value> exc)
{
	Isolate *iso = vm->isolate;
	Local<Value> stack;
	std::string s;

	if (!vm->io || !vm->io->log)
		return;
	if (exc->IsObject() && exc.As<Object>()->Get(ctx, str(iso, "stack", 5)).ToLocal(&stack)
	    && stack->IsString())
		s = "Uncaught " + to_std(iso, stack);
	else
		s = "Uncaught " + to_std(iso, exc);
	vm->io->log(vm->io->opaque, 1, s.data(), s.size());
}

/* Sorts an exception into a limit or a plain exception and writes its message. */
static int classify(iso_vm *vm, Local<Context> ctx, Local<Value> exc, bool terminated,
		    char *err, size_t errlen)
{
	Isolate *iso = vm->isolate;
	int why = vm->reason.load();
	std::string text;

	if (why)
		return why;
	if (terminated)
		return ISO_CPU_LIMIT;
	if (vm->alloc.hit.load())
		return ISO_MEMORY_LIMIT;
	text = exc.IsEmpty() ? "unknown error" : to_std(iso, exc);
	errf(err, errlen, "%s", text.c_str());
	if (text.find("Maximum call stack size exceeded") != std::string::npos)
		return ISO_STACK_OVERFLOW;
	if (!exc.IsEmpty())
		log_stack(vm, ctx, exc);
	return ISO_EXCEPTION;
}

/* ---- start-up: platform and runtime snapshot ---- */

static int run_runtime(Isolate *iso, Local<Context> ctx, Local<Array> *hooks,
		       char *err, size_t errlen)
{
	TryCatch tc(iso);
	ScriptOrigin origin(iso, str(iso, "stoke:runtime", 13));
	ScriptCompiler::Source src(str(iso, iso_runtime_js, iso_runtime_js_len), origin);
	Local<Script> script;
	Local<Value> fn, out;
	Local<Value> arg = natives(iso, ctx);

	if (!ScriptCompiler::Compile(ctx, &src).ToLocal(&script) ||
	    !script->Run(ctx).ToLocal(&fn) || !fn->IsFunction() ||
	    !fn.As<Function>()->Call(ctx, Undefined(iso), 1, &arg).ToLocal(&out) ||
	    !out->IsArray()) {
		format_exception(iso, ctx, tc, err, errlen);
		return -EINVAL;
	}
	*hooks = out.As<Array>();
	return 0;
}

/*
 * Runs a typical request through the runtime before the snapshot is taken, so the
 * functions on that path are compiled and their bytecode kept in the snapshot (a tenant's
 * first request then compiles nothing of the runtime), while rarely used ones stay lazy
 * and cost no memory per isolate. Eager compilation of everything measured 130 KB more
 * per isolate for little gain; an IPv4 host among these URLs (saving the first
 * 127.0.0.1 URL's lazy compile, about 0.1 ms) measured 17 KiB more per idle tenant.
 */
static const char iso_warmup_js[] =
	"({ async fetch(req, env, ctx) {\n"
	"  const u = new URL(req.url); u.searchParams.get('q');\n"
	"  req.headers.get('host'); req.method; await req.text(); console.log;\n"
	"  ctx.waitUntil(Promise.resolve());\n"
	"  if (u.pathname === '/json') return Response.json({ a: 1 }, { status: 201 });\n"
	"  return new Response('hi ' + u.pathname, { headers: { 'x-a': 'b' } });\n"
	"} })";

static void warm_up(Isolate *iso, Local<Context> ctx, Local<Array> hooks)
{
	static const char *const urls[] = {
		"http://warm.up/a/b?q=1", "https://warm.up:8443/json",
	};
	ScriptOrigin origin(iso, str(iso, "stoke:warmup", 12));
	ScriptCompiler::Source src(str(iso, iso_warmup_js, sizeof(iso_warmup_js) - 1), origin);
	Local<Script> script;
	Local<Value> handler, ignored, args[6];
	Local<Value> flat[] = { str(iso, "host", 4), str(iso, "warm.up", 7) };
	TryCatch tc(iso);

	if (!ScriptCompiler::Compile(ctx, &src).ToLocal(&script) ||
	    !script->Run(ctx).ToLocal(&handler))
		return;
	for (const char *url : urls) {
		args[0] = handler;
		args[1] = str(iso, "GET", 3);
		args[2] = str(iso, url, strlen(url));
		args[3] = Array::New(iso, flat, 2);
		args[4] = Null(iso);
		args[5] = Object::New(iso);
		if (hooks->Get(ctx, HOOK_DISPATCH).ToLocalChecked().As<Function>()
			    ->Call(ctx, Undefined(iso), 6, args).ToLocal(&ignored))
			iso->PerformMicrotaskCheckpoint();
		if (hooks->Get(ctx, HOOK_DRAIN).ToLocalChecked().As<Function>()
			    ->Call(ctx, Undefined(iso), 0, nullptr).ToLocal(&ignored))
			iso->PerformMicrotaskCheckpoint();
	}
}

static int build_snapshot(char *err, size_t errlen)
{
	SnapshotCreator creator(iso_refs);
	Isolate *iso = creator.GetIsolate();
	int rc;

	{
		HandleScope hs(iso);
		Local<Context> ctx = Context::New(iso);
		Context::Scope cs(ctx);
		Local<Array> hooks;

		rc = run_runtime(iso, ctx, &hooks, err, errlen);
		if (rc)
			return rc;
		warm_up(iso, ctx, hooks);
		creator.SetDefaultContext(ctx);
		creator.AddData(ctx, hooks);
	}
	iso_blob = creator.CreateBlob(SnapshotCreator::FunctionCodeHandling::kKeep);
	if (!iso_blob.data) {
		errf(err, errlen, "V8 could not create the runtime snapshot");
		return -EINVAL;
	}
	return 0;
}

int iso_v8_init(char *err, size_t errlen)
{
	/*
	 * Tenants get no way to block the worker in Atomics. Maps in the old space save
	 * one heap page (80 KB) per isolate. Wasm memories do not go through the
	 * ArrayBuffer allocator, so their size is capped here: 2048 pages, 128 MiB (the
	 * default memory limit), for every tenant.
	 */
	static const char flags[] = "--no-harmony-sharedarraybuffer --no-expose-gc "
				    "--no-use-map-space --wasm-max-mem-pages=2048";

	if (iso_platform)
		return 0;
	V8::InitializeICU();
	V8::SetFlagsFromString(flags, sizeof(flags) - 1);
	/* For experiments and operators: extra V8 flags, e.g. heap space tuning. */
	if (getenv("STOKE_V8_FLAGS"))
		V8::SetFlagsFromString(getenv("STOKE_V8_FLAGS"), strlen(getenv("STOKE_V8_FLAGS")));
	iso_platform = platform::NewDefaultPlatform(1);
	V8::InitializePlatform(iso_platform.get());
	V8::Initialize();
	return build_snapshot(err, errlen);
}

size_t iso_v8_snapshot_size(void)
{
	return iso_blob.raw_size;
}

/* ---- deploy: read, compile and cache every module of a function ---- */

static int read_file(const std::string &path, std::string *out)
{
	FILE *f = fopen(path.c_str(), "rb");
	char buf[65536];
	size_t n;

	if (!f)
		return -errno;
	out->clear();
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
		out->append(buf, n);
	n = ferror(f);
	fclose(f);
	return n ? -EIO : 0;
}

/* Resolves a relative specifier against the importing module's path; "" if it would
 * leave the function's directory or is not relative (bare names must be bundled). */
static std::string resolve_path(const std::string &from, const std::string &spec)
{
	std::vector<std::string> parts;
	std::string base, out, seg;
	size_t i, slash = from.rfind('/');

	if (spec.compare(0, 2, "./") && spec.compare(0, 3, "../") && spec[0] != '/')
		return "";
	if (spec[0] == '/')
		base = spec;
	else
		base = (slash == std::string::npos ? "" : from.substr(0, slash + 1)) + spec;
	for (i = 0; i <= base.size(); i++) {
		if (i < base.size() && base[i] != '/') {
			seg += base[i];
			continue;
		}
		if (seg == "..") {
			if (parts.empty())
				return "";
			parts.pop_back();
		} else if (!seg.empty() && seg != ".") {
			parts.push_back(seg);
		}
		seg.clear();
	}
	for (i = 0; i < parts.size(); i++)
		out += (i ? "/" : "") + parts[i];
	return out;
}

static bool ends_with(const std::string &s, const char *suffix)
{
	size_t n = strlen(suffix);

	return s.size() >= n && !s.compare(s.size() - n, n, suffix);
}

struct compiler {
	Isolate *iso;
	Local<Context> ctx;
	std::string dir;
	iso_code *code;
	char *err;
	size_t errlen;
};

static int compile_mod(compiler *c, const std::string &path);

static int compile_deps(compiler *c, int idx, Local<Module> mod)
{
	Local<FixedArray> reqs = mod->GetModuleRequests();
	int i, dep, rc;

	for (i = 0; i < reqs->Length(); i++) {
		Local<ModuleRequest> r = reqs->Get(c->ctx, i).As<ModuleRequest>();
		std::string spec = to_std(c->iso, r->GetSpecifier());
		std::string path = resolve_path(c->code->mods[idx].path, spec);

		if (path.empty()) {
			errf(c->err, c->errlen, "%s: cannot import '%s': only relative paths "
			     "inside the function work (bundle packages with esbuild)",
			     c->code->mods[idx].path.c_str(), spec.c_str());
			return -EINVAL;
		}
		rc = compile_mod(c, path);
		if (rc < 0)
			return rc;
		dep = rc;
		c->code->mods[idx].deps.emplace_back(spec, dep);
	}
	return 0;
}

static int compile_js(compiler *c, int idx)
{
	iso_mod *m = &c->code->mods[idx];
	TryCatch tc(c->iso);
	ScriptOrigin origin(c->iso, str(c->iso, m->path.data(), m->path.size()), 0, 0, false,
			    -1, Local<Value>(), false, false, true);
	ScriptCompiler::Source src(str(c->iso, m->src.data(), m->src.size()), origin);
	Local<Module> mod;
	ScriptCompiler::CachedData *cd;

	if (!ScriptCompiler::CompileModule(c->iso, &src)
		     .ToLocal(&mod)) {
		format_exception(c->iso, c->ctx, tc, c->err, c->errlen);
		return -EINVAL;
	}
	cd = ScriptCompiler::CreateCodeCache(mod->GetUnboundModuleScript());
	if (cd) {
		m->cache.assign(cd->data, cd->data + cd->length);
		c->code->bytes += cd->length;
		delete cd;
	}
	return compile_deps(c, idx, mod);
}

/* Returns the module's index, compiling it first if it is new. */
static int compile_mod(compiler *c, const std::string &path)
{
	iso_mod m;
	size_t i;
	int rc;

	for (i = 0; i < c->code->mods.size(); i++)
		if (c->code->mods[i].path == path)
			return (int)i;
	m.path = path;
	m.wasm = ends_with(path, ".wasm");
	rc = read_file(c->dir + "/" + path, &m.src);
	if (rc) {
		errf(c->err, c->errlen, "%s: %s", path.c_str(), strerror(-rc));
		return rc;
	}
	c->code->bytes += m.src.size();
	c->code->mods.push_back(std::move(m));
	i = c->code->mods.size() - 1;
	if (c->code->mods[i].wasm)
		return (int)i;
	rc = compile_js(c, (int)i);
	return rc < 0 ? rc : (int)i;
}

static bool is_ascii(const std::string &s)
{
	for (unsigned char c : s)
		if (c >= 0x80)
			return false;
	return true;
}

/* Once the module list is final (its strings no longer move). */
static void share_sources(iso_code *code)
{
	for (iso_mod &m : code->mods)
		if (!m.wasm && m.src.size() >= ISO_SHARED_SOURCE_MIN && is_ascii(m.src))
			m.shared.reset(new SharedSource(m.src.data(), m.src.size()));
}

int iso_code_compile(const char *dir, const char *entry, struct iso_code **out,
		     char *err, size_t errlen)
{
	Isolate::CreateParams params;
	std::unique_ptr<ArrayBuffer::Allocator> alloc(
		ArrayBuffer::Allocator::NewDefaultAllocator());
	iso_code *code = new iso_code();
	Isolate *iso;
	int rc;

	code->bytes = 0;
	params.array_buffer_allocator = alloc.get();
	iso = Isolate::New(params);
	{
		Locker lk(iso);
		Isolate::Scope is(iso);
		HandleScope hs(iso);
		compiler c = { iso, Context::New(iso), dir, code, err, errlen };
		Context::Scope cs(c.ctx);

		rc = compile_mod(&c, resolve_path("", std::string("./") + entry));
	}
	iso->Dispose();
	if (rc < 0) {
		delete code;
		return rc;
	}
	share_sources(code);
	*out = code;
	return 0;
}

void iso_code_free(struct iso_code *code)
{
	delete code;
}

size_t iso_code_size(const struct iso_code *code)
{
	return code->bytes;
}

size_t iso_code_nmodules(const struct iso_code *code)
{
	return code->mods.size();
}

/* ---- isolates ---- */

/* Terminating on the first call and granting headroom lets V8 unwind the script instead
 * of dying in its fatal out-of-memory handler. */
static size_t on_near_heap_limit(void *data, size_t current, size_t initial)
{
	iso_vm *vm = static_cast<iso_vm *>(data);

	vm->reason.store(ISO_MEMORY_LIMIT);
	vm->isolate->TerminateExecution();
	return current + (current / 2 > (32u << 20) ? current / 2 : (32u << 20));
}

/* Code generation from strings is off per context; Wasm must stay on. */
static bool allow_wasm(Local<Context> ctx, Local<String> src)
{
	return true;
}

static bool make_context(iso_vm *vm);

struct iso_vm *iso_vm_new(void)
{
	iso_vm *vm = new iso_vm();
	Isolate::CreateParams params;

	params.snapshot_blob = &iso_blob;
	params.external_references = iso_refs;
	params.array_buffer_allocator = &vm->alloc;
	/*
	 * No limit on the old generation here: setting one also sizes the young generation
	 * up front and costs 1.3 MB per isolate; iso_vm_set_limits() lowers the default
	 * limit per tenant. The young generation starts at one page per semi-space instead
	 * of four (it still grows under allocation): 24 KiB less RSS and 3 fewer memory
	 * mappings per idle isolate.
	 */
	params.constraints.set_initial_young_generation_size_in_bytes(ISO_YOUNG_INITIAL);
	vm->isolate = Isolate::New(params);
	if (!vm->isolate) {
		delete vm;
		return nullptr;
	}
	hold(vm);
	vm->isolate->SetData(0, vm);
	vm->isolate->SetMicrotasksPolicy(MicrotasksPolicy::kExplicit);
	vm->isolate->SetAllowWasmCodeGenerationCallback(allow_wasm);
	vm->isolate->AddNearHeapLimitCallback(on_near_heap_limit, vm);
	if (!make_context(vm)) {
		iso_vm_free(vm);
		return nullptr;
	}
	return vm;
}

void iso_vm_free(struct iso_vm *vm)
{
	int i;

	if (!vm)
		return;
	hold(vm);
	vm->ctx.Reset();
	for (i = 0; i < HOOK_COUNT; i++)
		vm->hooks[i].Reset();
	vm->handler.Reset();
	vm->env.Reset();
	vm->pending.Reset();
	vm->loaded.clear();
	unhold(vm);
	vm->isolate->Dispose();
	delete vm;
}

void iso_vm_set_limits(struct iso_vm *vm, size_t heap_bytes, size_t buffer_bytes)
{
	hold(vm);
	/* Removing the callback with a limit is the API's only way to lower the heap
	 * limit of an existing isolate; the callback goes straight back on. */
	vm->isolate->RemoveNearHeapLimitCallback(on_near_heap_limit, heap_bytes);
	vm->isolate->AddNearHeapLimitCallback(on_near_heap_limit, vm);
	vm->alloc.cap.store(buffer_bytes);
}

void iso_vm_set_io(struct iso_vm *vm, const struct iso_io *io)
{
	vm->io = io;
}

void iso_vm_terminate(struct iso_vm *vm, enum iso_status why)
{
	int none = 0;

	vm->reason.compare_exchange_strong(none, why);
	vm->isolate->TerminateExecution();
}

static void run_interrupt(Isolate *iso, void *data)
{
	struct iso_interrupt *in = static_cast<struct iso_interrupt *>(data);

	in->fn(in);
}

void iso_vm_interrupt(struct iso_vm *vm, struct iso_interrupt *in)
{
	vm->isolate->RequestInterrupt(run_interrupt, in);
}

size_t iso_vm_memory(struct iso_vm *vm)
{
	HeapStatistics hs;

	hold(vm);
	vm->isolate->GetHeapStatistics(&hs);
	return hs.total_physical_size() + vm->alloc.used.load();
}

void iso_vm_idle(struct iso_vm *vm)
{
	hold(vm);
	Isolate::Scope is(vm->isolate);

	/* Critical pressure collects synchronously and releases the young generation's
	 * spare pages: about 30 KB less RSS per idle tenant than a moderate one. */
	vm->isolate->MemoryPressureNotification(MemoryPressureLevel::kCritical);
}

/* ---- the event loop of one request: microtasks, platform tasks, timers ---- */

/* How long a request may sit with nothing runnable before it can never finish. */
#define ISO_STALL_NS (200u * 1000000u)

static double timers_next(iso_vm *vm, Local<Context> ctx)
{
	Local<Value> v;

	if (!vm->hooks[HOOK_TIMERS_NEXT].Get(vm->isolate)->Call(ctx, Undefined(vm->isolate),
								0, nullptr).ToLocal(&v))
		return -2;
	return v->NumberValue(ctx).FromMaybe(-1);
}

static void nap_ns(uint64_t ns)
{
	struct timespec ts = { (time_t)(ns / 1000000000u), (long)(ns % 1000000000u) };

	nanosleep(&ts, nullptr);
}

/* Due timers run per step before the worker looks at its other requests again. */
#define ISO_STEP_TIMERS 64

/*
 * One pass of the event loop for promise p: microtasks, platform tasks (async Wasm
 * compilation), due timers. Returns ISO_OK once p settled, ISO_PENDING with the time
 * to come back in *wake_ns, or why it stopped.
 */
static int loop_step(iso_vm *vm, Local<Context> ctx, Local<Promise> p, uint64_t deadline,
		     uint64_t *wake_ns)
{
	Isolate *iso = vm->isolate;
	uint64_t now;
	double next;
	bool busy;
	int i;

	for (i = 0; i < ISO_STEP_TIMERS; i++) {
		iso->PerformMicrotaskCheckpoint();
		busy = false;
		while (platform::PumpMessageLoop(iso_platform.get(), iso)) {
			busy = true;
			iso->PerformMicrotaskCheckpoint();
		}
		if (vm->reason.load() || iso->IsExecutionTerminating())
			return vm->reason.load() ? vm->reason.load() : ISO_CPU_LIMIT;
		if (p->State() != Promise::kPending)
			return ISO_OK;
		now = iso_v8_now_ns();
		if (now >= deadline)
			return ISO_WALL_LIMIT;
		next = timers_next(vm, ctx);
		if (next == -2)
			return vm->reason.load() ? vm->reason.load() : ISO_CPU_LIMIT;
		if (next == 0) {
			/* Callback errors are reported by the runtime itself. */
			(void)vm->hooks[HOOK_TIMERS_RUN].Get(iso)->Call(ctx, Undefined(iso), 0,
									 nullptr).IsEmpty();
			vm->stall = 0;
			continue;
		}
		if (next > 0) {
			vm->stall = 0;
			*wake_ns = now + std::min((uint64_t)(next * 1e6), deadline - now);
			return ISO_PENDING;
		}
		/* No timer: only background work (async Wasm compilation) can still
		 * settle the promise. */
		if (busy || !vm->stall)
			vm->stall = now;
		else if (now - vm->stall > ISO_STALL_NS)
			return ISO_NO_RESPONSE;
		*wake_ns = now + 100000;
		return ISO_PENDING;
	}
	*wake_ns = iso_v8_now_ns();
	return ISO_PENDING;
}

/* Runs until p settles, sleeping between steps (module evaluation at a cold start). */
static int run_until(iso_vm *vm, Local<Context> ctx, Local<Promise> p, uint64_t deadline)
{
	uint64_t wake, now;
	int rc;

	vm->stall = 0;
	while ((rc = loop_step(vm, ctx, p, deadline, &wake)) == ISO_PENDING) {
		now = iso_v8_now_ns();
		if (wake > now)
			nap_ns(wake - now);
	}
	return rc;
}

/* ---- loading a tenant ---- */

static MaybeLocal<Module> resolve_cb(Local<Context> ctx, Local<String> spec,
				     Local<FixedArray> assertions, Local<Module> referrer)
{
	Isolate *iso = ctx->GetIsolate();
	iso_vm *vm = vm_of(iso);
	std::string s = to_std(iso, spec);
	size_t i;

	for (i = 0; i < vm->mods->size(); i++) {
		if ((*vm->mods)[i] != referrer)
			continue;
		for (auto &d : vm->code->mods[i].deps)
			if (d.first == s)
				return (*vm->mods)[d.second];
	}
	iso->ThrowException(Exception::Error(str(iso, "module not found", 16)));
	return MaybeLocal<Module>();
}

/* A .wasm import evaluates to its compiled WebAssembly.Module as the default export. */
static MaybeLocal<Value> wasm_eval(Local<Context> ctx, Local<Module> mod)
{
	Isolate *iso = ctx->GetIsolate();
	iso_vm *vm = vm_of(iso);
	Local<WasmModuleObject> wasm;
	size_t i;

	for (i = 0; i < vm->mods->size(); i++) {
		const std::string &b = vm->code->mods[i].src;

		if ((*vm->mods)[i] != mod)
			continue;
		if (!WasmModuleObject::Compile(iso, MemorySpan<const uint8_t>(
				(const uint8_t *)b.data(), b.size())).ToLocal(&wasm))
			return MaybeLocal<Value>();
		if (mod->SetSyntheticModuleExport(iso, str(iso, "default", 7), wasm).IsNothing())
			return MaybeLocal<Value>();
		return Undefined(iso);
	}
	return MaybeLocal<Value>();
}

static MaybeLocal<Module> instantiate_one(iso_vm *vm, const iso_mod &m)
{
	Isolate *iso = vm->isolate;
	Local<String> name = str(iso, m.path.data(), m.path.size());

	if (m.wasm) {
		std::vector<Local<String>> names = { str(iso, "default", 7) };

		return Module::CreateSyntheticModule(iso, name, names, wasm_eval);
	}
	ScriptOrigin origin(iso, name, 0, 0, false, -1, Local<Value>(), false, false, true);
	ScriptCompiler::CachedData *cd = m.cache.empty() ? nullptr :
		new ScriptCompiler::CachedData(m.cache.data(), (int)m.cache.size());
	Local<String> text;

	if (!m.shared || !String::NewExternalOneByte(iso, m.shared.get()).ToLocal(&text))
		text = str(iso, m.src.data(), m.src.size());
	ScriptCompiler::Source src(text, origin, cd);

	return ScriptCompiler::CompileModule(iso, &src, cd ? ScriptCompiler::kConsumeCodeCache
						  : ScriptCompiler::kNoCompileOptions);
}

static Local<Object> make_env(Isolate *iso, Local<Context> ctx, const iso_kv *env,
			      size_t nenv)
{
	Local<Object> o = Object::New(iso);
	size_t i;

	for (i = 0; i < nenv; i++)
		o->Set(ctx, str(iso, env[i].name, env[i].name_len),
		       str(iso, env[i].value, env[i].value_len)).Check();
	return o;
}

static int take_handler(iso_vm *vm, Local<Context> ctx, Local<Module> entry,
			char *err, size_t errlen)
{
	Isolate *iso = vm->isolate;
	Local<Value> def, fetch;
	Local<Object> ns = entry->GetModuleNamespace().As<Object>();

	if (!ns->Get(ctx, str(iso, "default", 7)).ToLocal(&def) || !def->IsObject() ||
	    !def.As<Object>()->Get(ctx, str(iso, "fetch", 5)).ToLocal(&fetch) ||
	    !fetch->IsFunction()) {
		errf(err, errlen, "the entry module has no default export with a fetch() "
		     "method");
		return ISO_NO_HANDLER;
	}
	vm->handler.Reset(iso, def.As<Object>());
	return ISO_OK;
}

static int load_modules(iso_vm *vm, Local<Context> ctx, uint64_t deadline,
			char *err, size_t errlen)
{
	Isolate *iso = vm->isolate;
	std::vector<Local<Module>> mods;
	TryCatch tc(iso);
	Local<Module> m;
	Local<Value> done;
	int rc;

	vm->mods = &mods;
	for (const iso_mod &im : vm->code->mods) {
		if (!instantiate_one(vm, im).ToLocal(&m))
			goto fail;
		mods.push_back(m);
	}
	if (!mods[0]->InstantiateModule(ctx, resolve_cb).FromMaybe(false) ||
	    !mods[0]->Evaluate(ctx).ToLocal(&done))
		goto fail;
	rc = done->IsPromise() ? run_until(vm, ctx, done.As<Promise>(), deadline) : ISO_OK;
	if (rc == ISO_OK && mods[0]->GetStatus() == Module::kErrored) {
		rc = classify(vm, ctx, mods[0]->GetException(), false, err, errlen);
	} else if (rc == ISO_OK) {
		rc = take_handler(vm, ctx, mods[0], err, errlen);
	}
	for (Local<Module> &lm : mods)
		vm->loaded.emplace_back(iso, lm);
	vm->mods = nullptr;
	return rc;
fail:
	vm->mods = nullptr;
	if (tc.HasTerminated() || vm->reason.load())
		return classify(vm, ctx, Local<Value>(), true, err, errlen);
	format_exception(iso, ctx, tc, err, errlen);
	return ISO_EXCEPTION;
}

/* The tenant-independent part of a cold start, done while the isolate waits in the
 * pool: deserialize the runtime context from the snapshot and find its hooks. */
static bool make_context(iso_vm *vm)
{
	Isolate *iso = vm->isolate;
	Isolate::Scope is(iso);
	HandleScope hs(iso);
	Local<Context> ctx = Context::New(iso);
	Context::Scope cs(ctx);
	Local<Array> hooks;
	uint32_t i;

	ctx->AllowCodeGenerationFromStrings(false);
	if (!ctx->GetDataFromSnapshotOnce<Array>(0).ToLocal(&hooks))
		return false;
	for (i = 0; i < HOOK_COUNT; i++)
		vm->hooks[i].Reset(iso, hooks->Get(ctx, i).ToLocalChecked().As<Function>());
	vm->ctx.Reset(iso, ctx);
	return true;
}

int iso_vm_load(struct iso_vm *vm, const struct iso_code *code, const struct iso_kv *env,
		size_t nenv, uint64_t deadline_ns, char *err, size_t errlen)
{
	Isolate *iso = held(vm);
	Isolate::Scope is(iso);
	HandleScope hs(iso);
	Local<Context> ctx = vm->ctx.Get(iso);
	Context::Scope cs(ctx);

	vm->reason.store(0);
	vm->env.Reset(iso, make_env(iso, ctx, env, nenv));
	vm->code = code;
	return load_modules(vm, ctx, deadline_ns, err, errlen);
}

/*
 * A code cache made after a tenant's request also holds the functions that request
 * compiled (fetch() itself, at least: V8 compiles inner functions lazily, and a module
 * cannot be compiled eagerly), so later cold starts of the function skip compiling
 * them. Making one leaves the isolate 64 KiB bigger for good (V8 keeps the map of
 * external references it built). Returns how many bytes the caches grew.
 */
long iso_vm_code_refresh(struct iso_vm *vm, struct iso_code *code)
{
	Isolate *iso = held(vm);
	Isolate::Scope is(iso);
	HandleScope hs(iso);
	ScriptCompiler::CachedData *cd;
	long grew = 0;
	size_t i;

	/* The request may have ended in a limit (the deploy-time trial's watchdog). */
	iso->CancelTerminateExecution();
	for (i = 0; i < vm->loaded.size() && i < code->mods.size(); i++) {
		iso_mod &m = code->mods[i];

		if (m.wasm)
			continue;
		cd = ScriptCompiler::CreateCodeCache(
			vm->loaded[i].Get(iso)->GetUnboundModuleScript());
		if (cd && (size_t)cd->length > m.cache.size()) {
			grew += (long)cd->length - (long)m.cache.size();
			m.cache.assign(cd->data, cd->data + cd->length);
		}
		delete cd;
	}
	vm->loaded.clear();
	code->bytes += grew;
	return grew;
}

/* ---- one request ---- */

static Local<Array> flat_headers(Isolate *iso, const iso_req *req)
{
	std::vector<Local<Value>> v;
	size_t i;

	v.reserve(req->nheaders * 2);
	for (i = 0; i < req->nheaders; i++) {
		v.push_back(str(iso, req->headers[i].name, req->headers[i].name_len));
		v.push_back(str(iso, req->headers[i].value, req->headers[i].value_len));
	}
	return Array::New(iso, v.data(), v.size());
}

static void emit_body(iso_vm *vm, Local<Value> body)
{
	Isolate *iso = vm->isolate;
	char *buf;
	size_t n;

	if (body->IsString()) {
		Local<String> s = body.As<String>();
		size_t len = (size_t)s->Length();
		/* Up to 16 Ki units in one pass, into the worst case's size (see utf8_short). */
		size_t cap = len <= 16384 ? 3 * len : (size_t)s->Utf8Length(iso);

		buf = (char *)malloc(cap + 1);
		if (!buf)
			return;
		n = (size_t)s->WriteUtf8(iso, buf, (int)cap, nullptr,
					 String::NO_NULL_TERMINATION |
					 String::REPLACE_INVALID_UTF8);
	} else if (body->IsArrayBufferView()) {
		Local<ArrayBufferView> view = body.As<ArrayBufferView>();

		n = view->ByteLength();
		buf = (char *)malloc(n + 1);
		if (!buf)
			return;
		view->CopyContents(buf, n);
	} else {
		return;
	}
	vm->io->set_body(vm->io->opaque, buf, n);
}

/* RFC 9110 token characters. */
static bool is_token(const char *s, size_t n)
{
	static const char extra[] = "!#$%&'*+-.^_`|~";
	size_t i;

	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')
			continue;
		if ((c < '0' || c > '9') && !(c && strchr(extra, c)))
			return false;
	}
	return n > 0;
}

static bool is_field_value(const char *s, size_t n)
{
	return !memchr(s, '\0', n) && !memchr(s, '\r', n) && !memchr(s, '\n', n);
}

/*
 * The runtime resolves dispatch() to [status, [name, value, ...], body]. The runtime
 * already validated all of it, but it runs in the tenant's context: the gateway must
 * never see a status line or header it would write unchecked, so check again here.
 */
static int emit_response(iso_vm *vm, Local<Context> ctx, Local<Value> v, int *status)
{
	Isolate *iso = vm->isolate;
	Local<Value> st, hv, body;
	Local<Array> a, h;
	uint32_t i;

	*status = -1;
	if (!v->IsArray())
		return ISO_BAD_RESPONSE;
	a = v.As<Array>();
	if (!a->Get(ctx, 0).ToLocal(&st) || !a->Get(ctx, 1).ToLocal(&hv) || !hv->IsArray() ||
	    !a->Get(ctx, 2).ToLocal(&body))
		return ISO_BAD_RESPONSE;
	*status = st->Int32Value(ctx).FromMaybe(0);
	if (*status < 200 || *status > 599)
		return ISO_BAD_RESPONSE;
	h = hv.As<Array>();
	for (i = 0; i + 1 < h->Length(); i += 2) {
		Local<Value> nv = h->Get(ctx, i).ToLocalChecked();
		Local<Value> vv = h->Get(ctx, i + 1).ToLocalChecked();
		char nbuf[192], vbuf[768];
		std::string nbig, vbig;
		const char *name, *val;
		size_t nlen, vlen;

		if (!nv->IsString() || !vv->IsString())
			return ISO_BAD_RESPONSE;
		nlen = utf8_short(iso, nv.As<String>(), nbuf, sizeof(nbuf), &nbig, &name);
		vlen = utf8_short(iso, vv.As<String>(), vbuf, sizeof(vbuf), &vbig, &val);
		if (!is_token(name, nlen) || !is_field_value(val, vlen))
			return ISO_BAD_RESPONSE;
		vm->io->add_header(vm->io->opaque, name, nlen, val, vlen);
	}
	/* 204 and 304 have no body (RFC 9110 15.3.5, 15.4.5). */
	if (*status != 204 && *status != 304)
		emit_body(vm, body);
	return ISO_OK;
}

static void reset_request(iso_vm *vm)
{
	vm->reason.store(0);
	vm->alloc.hit.store(false);
	vm->isolate->CancelTerminateExecution();
	vm->stall = 0;
	vm->drain_due = false;	/* dispatch() drops what an earlier request left */
}

/*
 * The promise dispatch() returned, in *p. The caller keeps it in vm->pending only if
 * it is still pending after its first step: a global handle per request measured as
 * much as the rest of the hand-over.
 */
static int begin(iso_vm *vm, Local<Context> ctx, TryCatch &tc, MaybeLocal<Value> mv,
		 uint64_t deadline, Local<Promise> *p, char *err, size_t errlen)
{
	Local<Value> v;

	if (!mv.ToLocal(&v))
		return classify(vm, ctx, tc.Exception(), tc.HasTerminated(), err, errlen);
	if (!v->IsPromise()) {
		errf(err, errlen, "runtime hook did not return a promise");
		return ISO_EXCEPTION;
	}
	*p = v.As<Promise>();
	vm->pending_is_call = true;
	vm->deadline = deadline;
	return ISO_PENDING;
}

/* Calls dispatch(); the caller has entered the isolate, a handle scope and ctx. */
static int call_begin(iso_vm *vm, Local<Context> ctx, const struct iso_req *req,
		      Local<Promise> *p, char *err, size_t errlen)
{
	Isolate *iso = vm->isolate;
	TryCatch tc(iso);
	Local<Value> args[6];
	int rc;

	reset_request(vm);
	vm->req = req;
	args[0] = vm->handler.Get(iso);
	args[1] = str(iso, req->method, strlen(req->method));
	args[2] = str(iso, req->url, strlen(req->url));
	args[3] = flat_headers(iso, req);
	args[4] = req->body ? (Local<Value>)Number::New(iso, (double)req->body_len)
			    : (Local<Value>)Null(iso);
	args[5] = vm->env.Get(iso);
	rc = begin(vm, ctx, tc, vm->hooks[HOOK_DISPATCH].Get(iso)->Call(ctx, Undefined(iso),
									 6, args),
		   req->wall_deadline_ns, p, err, errlen);
	vm->req = nullptr;
	return rc;
}

int iso_vm_call_start(struct iso_vm *vm, const struct iso_req *req, char *err,
		      size_t errlen)
{
	Isolate *iso = held(vm);
	Isolate::Scope is(iso);
	HandleScope hs(iso);
	Local<Context> ctx = vm->ctx.Get(iso);
	Context::Scope cs(ctx);
	Local<Promise> p;
	int rc = call_begin(vm, ctx, req, &p, err, errlen);

	if (rc == ISO_PENDING)
		vm->pending.Reset(iso, p);
	return rc;
}

int iso_vm_busy(struct iso_vm *vm)
{
	return !vm->pending.IsEmpty();
}

/*
 * Right after the response, in the same slice: ctx.waitUntil() work becomes the pending
 * work; with none, leftover timers are dropped at once and the call is over, so a plain
 * request costs one slice. A failure here cannot change the answer already emitted;
 * the next request resets the isolate (reset_request).
 */
static void drain_begin(iso_vm *vm, Local<Context> ctx)
{
	Isolate *iso = vm->isolate;	/* held: the caller is in the isolate's scopes */
	TryCatch tc(iso);
	Local<Value> v;

	/* Nothing to wait for and no timer to drop: skip the call into the runtime. */
	if (!vm->drain_due)
		return;
	vm->drain_due = false;
	if (vm->hooks[HOOK_DRAIN].Get(iso)->Call(ctx, Undefined(iso), 0, nullptr).ToLocal(&v) &&
	    v->IsPromise()) {
		vm->pending.Reset(iso, v.As<Promise>());
		vm->pending_is_call = false;
	}
}

/* The runtime's reason why fetch() gave no Response (see toWire in 90_dispatch.js). */
static void not_a_response(iso_vm *vm, Local<Context> ctx, Local<Value> wire, char *err,
			   size_t errlen)
{
	Local<Value> why;

	if (wire->IsArray() && wire.As<Array>()->Get(ctx, 2).ToLocal(&why) && why->IsString())
		errf(err, errlen, "%s", utf8(vm->isolate, why.As<String>()).c_str());
	else
		errf(err, errlen, "fetch() must return a Response");
}

/* The pending promise settled: the response of a call, or the end of waitUntil work. */
static int finish(iso_vm *vm, Local<Context> ctx, Local<Promise> p, int *status,
		  char *err, size_t errlen)
{
	int rc;

	if (p->State() == Promise::kRejected)
		return classify(vm, ctx, p->Result(), false, err, errlen);
	if (!vm->pending_is_call)
		return ISO_OK;
	rc = emit_response(vm, ctx, p->Result(), status);
	if (rc && *status == 0)
		not_a_response(vm, ctx, p->Result(), err, errlen);
	else if (rc)
		errf(err, errlen, "fetch() resolved to a Response with an invalid status or "
		     "header");
	else
		drain_begin(vm, ctx);
	return rc;
}

/* One step of p, which is vm->pending unless it is a call's first step; the caller has
 * entered the isolate and ctx. */
static int step_in(iso_vm *vm, Local<Context> ctx, Local<Promise> p, int *status,
		   uint64_t *wake_ns, char *err, size_t errlen)
{
	TryCatch tc(vm->isolate);
	int rc;

	rc = loop_step(vm, ctx, p, vm->deadline, wake_ns);
	if (rc == ISO_PENDING) {
		if (vm->pending.IsEmpty())
			vm->pending.Reset(vm->isolate, p);
		return rc;
	}
	vm->pending.Reset();
	if (rc == ISO_NO_RESPONSE)
		errf(err, errlen, "the promise returned by fetch() can never settle");
	if (rc != ISO_OK)
		return rc;
	return finish(vm, ctx, p, status, err, errlen);
}

int iso_vm_step(struct iso_vm *vm, int *status, uint64_t *wake_ns, char *err, size_t errlen)
{
	Isolate *iso = held(vm);
	Isolate::Scope is(iso);
	HandleScope hs(iso);
	Local<Context> ctx = vm->ctx.Get(iso);
	Context::Scope cs(ctx);

	return step_in(vm, ctx, vm->pending.Get(iso), status, wake_ns, err, errlen);
}

/* Entering an isolate and its context costs about as much as a trivial handler, so the
 * usual request (a call that answers in its first step) enters them once. */
int iso_vm_call(struct iso_vm *vm, const struct iso_req *req, int *status, uint64_t *wake_ns,
		char *err, size_t errlen)
{
	Isolate *iso = held(vm);
	Isolate::Scope is(iso);
	HandleScope hs(iso);
	Local<Context> ctx = vm->ctx.Get(iso);
	Context::Scope cs(ctx);
	Local<Promise> p;
	int rc = call_begin(vm, ctx, req, &p, err, errlen);

	return rc == ISO_PENDING ? step_in(vm, ctx, p, status, wake_ns, err, errlen) : rc;
}
