/*
 * Unit tests of the isolate tier through its public contract (iso_tier_ops): functions
 * are written to a temporary directory, prepared, invoked with fake invocations whose
 * on_done signals a condition variable, and their responses and logs checked.
 *
 * Run: build/src/isolate/test_isolate [filter]   (prints its own pass/fail counts)
 */
#include "common/fnlog.h"
#include "common/invoke.h"
#include "common/strbuf.h"
#include "isolate/iso_v8.h"

#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static struct tier T = { .ops = &iso_tier_ops, .nworkers = 2 };
/* Where call_async() sends requests: T, or a second tier with its own settings. */
static struct tier *cur_tier = &T;
static char tmp[256];
static int npass, nfail, nreq;
static const char *filter;

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static struct strbuf logs;

#define CHECK(cond, ...) check(!!(cond), __LINE__, #cond, __VA_ARGS__)

static void check(int ok, int line, const char *expr, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void check(int ok, int line, const char *expr, const char *fmt, ...)
{
	va_list ap;

	if (ok) {
		npass++;
		return;
	}
	nfail++;
	printf("FAIL line %d: %s: ", line, expr);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
}

static void log_sink(const char *fn, const char *rid, const char *stream, const char *msg,
		     size_t len)
{
	pthread_mutex_lock(&log_lock);
	sb_printf(&logs, "%s %s %s: %.*s\n", fn, rid, stream, (int)len, msg);
	pthread_mutex_unlock(&log_lock);
}

static int log_has(const char *needle)
{
	int found;

	pthread_mutex_lock(&log_lock);
	found = logs.buf && strstr(logs.buf, needle);
	pthread_mutex_unlock(&log_lock);
	return found;
}

static void write_file(const char *dir, const char *name, const char *data, size_t len)
{
	char path[1024];
	FILE *f;

	char *slash;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	slash = strrchr(path, '/');
	*slash = '\0';
	mkdir(path, 0755);
	*slash = '/';
	f = fopen(path, "wb");
	if (!f) {
		perror(path);
		exit(2);
	}
	fwrite(data, 1, len, f);
	fclose(f);
}

/*
 * Deploys a function from (file name, source) pairs ending with NULL; the first file is
 * the entry. Returns NULL and fills err when prepare fails.
 */
static struct fn *deploy_limits(const char *name, const struct fn_limits *lim, char *err,
				size_t errlen, ...)
{
	struct fn *fn = calloc(1, sizeof(*fn));
	char dir[512];
	const char *file, *src;
	va_list ap;
	int rc;

	snprintf(dir, sizeof(dir), "%s/%s", tmp, name);
	mkdir(dir, 0755);
	atomic_init(&fn->refs, 1);
	snprintf(fn->name, sizeof(fn->name), "%s", name);
	fn->dir = strdup(dir);
	if (lim)
		fn->limits = *lim;
	va_start(ap, errlen);
	while ((file = va_arg(ap, const char *))) {
		src = va_arg(ap, const char *);
		if (!fn->entry[0])
			snprintf(fn->entry, sizeof(fn->entry), "%s", file);
		write_file(dir, file, src, strlen(src));
	}
	va_end(ap);
	rc = T.ops->prepare(&T, fn, err, errlen);
	if (rc) {
		fn_unref(fn);
		return NULL;
	}
	return fn;
}

#define deploy(name, ...) deploy_limits(name, NULL, errbuf, sizeof(errbuf), __VA_ARGS__, NULL)
static char errbuf[1024];

struct waiter {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int done;
};

static void on_done(struct inv *inv)
{
	struct waiter *w = inv->gw;

	pthread_mutex_lock(&w->lock);
	w->done = 1;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

static void add_header(struct inv *inv, const char *name, const char *value)
{
	struct kv *h = realloc(inv->req.headers, (inv->req.nheaders + 1) * sizeof(*h));

	inv->req.headers = h;
	h += inv->req.nheaders++;
	h->name = strdup(name);
	h->value = strdup(value);
	h->name_len = strlen(name);
	h->value_len = strlen(value);
}

/* Waits (at most 60 s) for inv_done. */
static void wait_done(struct inv *inv)
{
	struct waiter *w = inv->gw;
	struct timespec until;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 60;
	pthread_mutex_lock(&w->lock);
	while (!w->done)
		if (pthread_cond_timedwait(&w->cond, &w->lock, &until) == ETIMEDOUT)
			break;
	pthread_mutex_unlock(&w->lock);
	if (!w->done) {
		printf("FATAL: request to %s timed out\n", inv->fn->name);
		exit(1);
	}
}

/* Sends one request without waiting; wait_done() then inv_free(). */
static struct inv *call_async(struct fn *fn, const char *method, const char *target,
			      const char *body, const char *hname, const char *hvalue,
			      struct waiter *w)
{
	struct inv *inv = calloc(1, sizeof(*inv));
	const char *q = strchr(target, '?');
	char url[1024];

	inv->fn = fn_ref(fn);
	snprintf(inv->request_id, sizeof(inv->request_id), "req-%d", ++nreq);
	inv->req.method = strdup(method);
	inv->req.path = q ? strndup(target, q - target) : strdup(target);
	inv->req.query = strdup(q ? q + 1 : "");
	snprintf(url, sizeof(url), "http://%s.test%s", fn->name, target);
	inv->req.url = strdup(url);
	add_header(inv, "host", "fn.test");
	if (hname)
		add_header(inv, hname, hvalue);
	if (body) {
		inv->req.body = strdup(body);
		inv->req.body_len = strlen(body);
	}
	inv->on_done = on_done;
	inv->gw = w;
	cur_tier->ops->invoke(cur_tier, inv);
	return inv;
}

/* Sends one request and waits for it. target is "/path?query". */
static struct inv *call_h(struct fn *fn, const char *method, const char *target,
			  const char *body, const char *hname, const char *hvalue)
{
	struct waiter w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 };
	struct inv *inv = call_async(fn, method, target, body, hname, hvalue, &w);

	wait_done(inv);
	inv->gw = NULL;
	return inv;
}

#define call(fn, method, target, body) call_h(fn, method, target, body, NULL, NULL)

static const char *body_of(struct inv *inv)
{
	static char buf[8192];
	size_t n = inv->resp.body_len < sizeof(buf) - 1 ? inv->resp.body_len : sizeof(buf) - 1;

	memcpy(buf, inv->resp.body ? inv->resp.body : "", n);
	buf[n] = '\0';
	return buf;
}

static const char *header_of(struct inv *inv, const char *name)
{
	size_t i;

	for (i = 0; i < inv->resp.nheaders; i++)
		if (!strcmp(inv->resp.headers[i].name, name))
			return inv->resp.headers[i].value;
	return NULL;
}

static int want(const char *name)
{
	return !filter || strstr(name, filter);
}

/*
 * Evaluates an async function body inside fetch and compares String(result) with
 * expect: the workhorse of the Web API tests.
 */
static void js_expect(const char *name, const char *body, const char *expect)
{
	char src[16384];
	struct fn *fn;
	struct inv *inv;

	if (!want(name))
		return;
	snprintf(src, sizeof(src),
		 "export default { async fetch(request, env, ctx) {\n"
		 "  const r = await (async () => { %s })();\n"
		 "  return new Response(String(r));\n} };\n", body);
	fn = deploy(name, "index.js", src);
	CHECK(fn, "%s: deploy failed: %s", name, errbuf);
	if (!fn)
		return;
	fn->env = calloc(1, sizeof(*fn->env));
	fn->env[0] = (struct kv){ strdup("GREETING"), strdup("hi"), 8, 2 };
	fn->nenv = 1;
	inv = call(fn, "GET", "/t?x=1", NULL);
	CHECK(inv->resp.status == 200 && !strcmp(body_of(inv), expect),
	      "%s: got %d '%s', want '%s'", name, inv->resp.status, body_of(inv), expect);
	inv_free(inv);
	T.ops->retire(&T, fn);
	fn_unref(fn);
}

/* ---- basic request/response mapping ---- */

static void test_hello(void)
{
	struct fn *fn;
	struct inv *inv;

	if (!want("hello"))
		return;
	fn = deploy("hello",
		    "index.js",
		    "export default { async fetch(req, env, ctx) {\n"
		    "  const u = new URL(req.url);\n"
		    "  console.log('hello log', req.method, u.pathname);\n"
		    "  return new Response(`hi ${req.method} ${u.pathname} ${u.search} `\n"
		    "    + `${req.headers.get('x-test')} ${await req.text()}`,\n"
		    "    { status: 201, headers: { 'X-Out': 'yes' } });\n} };\n");
	CHECK(fn, "deploy: %s", errbuf);
	if (!fn)
		return;
	inv = call_h(fn, "POST", "/a/b?q=1", "data", "x-test", "tv");
	CHECK(inv->resp.status == 201, "status %d body %s", inv->resp.status, body_of(inv));
	CHECK(!strcmp(body_of(inv), "hi POST /a/b ?q=1 tv data"), "body '%s'", body_of(inv));
	CHECK(header_of(inv, "x-out") && !strcmp(header_of(inv, "x-out"), "yes"), "x-out");
	CHECK(header_of(inv, "content-type") &&
	      !strcmp(header_of(inv, "content-type"), "text/plain;charset=UTF-8"), "ctype");
	CHECK(inv->cold == 1, "first request is cold");
	inv_free(inv);
	inv = call(fn, "GET", "/", NULL);
	CHECK(inv->resp.status == 201 && inv->cold == 0, "warm: %d cold %d", inv->resp.status,
	      inv->cold);
	inv_free(inv);
	CHECK(log_has("hello req-") && log_has("stdout: hello log POST /a/b"), "console.log");
	T.ops->retire(&T, fn);
	fn_unref(fn);
}


/* ---- limits and failure isolation ---- */

/* A function that misbehaves when asked (?bad) and answers "ok N" otherwise, N counting
 * requests served by this instance (so a fresh isolate shows as "ok 1"). */
static struct fn *deploy_bad(const char *name, const char *bad, const struct fn_limits *lim)
{
	char src[4096];

	snprintf(src, sizeof(src),
		 "let n = 0;\n"
		 "export default { async fetch(req) {\n"
		 "  n++;\n"
		 "  if (new URL(req.url).search === '?bad') { %s }\n"
		 "  return new Response('ok ' + n);\n} };\n", bad);
	return deploy_limits(name, lim, errbuf, sizeof(errbuf), "index.js", src, NULL);
}

static void expect_limit(const char *name, const char *bad, const struct fn_limits *lim,
			 int status, const char *kind, const char *logline)
{
	struct fn *fn, *other;
	struct inv *inv;
	char oname[80];

	if (!want(name))
		return;
	fn = deploy_bad(name, bad, lim);
	snprintf(oname, sizeof(oname), "%s-other", name);
	other = deploy_bad(oname, "", NULL);
	CHECK(fn && other, "%s: deploy: %s", name, errbuf);
	if (!fn || !other)
		return;
	inv = call(fn, "GET", "/", NULL);
	CHECK(!strcmp(body_of(inv), "ok 1"), "%s: warm-up '%s'", name, body_of(inv));
	inv_free(inv);
	inv = call(fn, "GET", "/?bad", NULL);
	CHECK(inv->resp.status == status && inv->resp.error_kind &&
	      !strcmp(inv->resp.error_kind, kind),
	      "%s: got %d %s '%s'", name, inv->resp.status,
	      inv->resp.error_kind ? inv->resp.error_kind : "-", body_of(inv));
	CHECK(strstr(body_of(inv), "\"error\":\"") && strstr(body_of(inv), kind),
	      "%s: JSON error body '%s'", name, body_of(inv));
	inv_free(inv);
	CHECK(log_has(logline), "%s: log line '%s'", name, logline);
	inv = call(other, "GET", "/", NULL);
	CHECK(inv->resp.status == 200, "%s: other tenant still answers: %d", name,
	      inv->resp.status);
	inv_free(inv);
	inv = call(fn, "GET", "/", NULL);
	CHECK(inv->resp.status == 200 && !strncmp(body_of(inv), "ok ", 3),
	      "%s: next request succeeds: %d '%s'", name, inv->resp.status, body_of(inv));
	inv_free(inv);
	T.ops->retire(&T, fn);
	T.ops->retire(&T, other);
	fn_unref(fn);
	fn_unref(other);
}

static void test_limits(void)
{
	struct fn_limits small = { .memory_mb = 32, .cpu_ms = 5000 };
	struct fn_limits wall = { .wall_ms = 300, .cpu_ms = 50 };
	/* A budget under the watchdog's 2 ms horizon: the slice wakes it as it starts. */
	struct fn_limits tiny = { .cpu_ms = 1 };

	expect_limit("cpu", "while (true) {}", NULL, 503, "cpu_limit",
		     "exceeded its CPU time limit (50 ms, limits.cpu_ms)");
	expect_limit("cpu1", "while (true) {}", &tiny, 503, "cpu_limit",
		     "exceeded its CPU time limit (1 ms, limits.cpu_ms)");
	expect_limit("heap", "const a = []; while (true) a.push({ x: new Array(100).fill(n) });",
		     &small, 503, "memory_limit",
		     "exceeded its memory limit (32 MB, limits.memory_mb)");
	expect_limit("buffers", "const a = []; for (let i = 0; i < 1000; i++) "
		     "a.push(new ArrayBuffer(1 << 20));", &small, 503, "memory_limit",
		     "exceeded its memory limit (32 MB, limits.memory_mb)");
	expect_limit("stack", "const f = (x) => f(x + 1) + 1; f(0);", NULL, 500,
		     "stack_overflow", "overflowed its stack");
	expect_limit("wall", "await new Promise((r) => setTimeout(r, 5000));", &wall, 504,
		     "wall_limit", "exceeded its wall time limit (300 ms, limits.wall_s)");
	expect_limit("throws", "throw new Error('boom ' + n);", NULL, 500, "exception",
		     "Uncaught Error: boom 2");
	expect_limit("eval", "eval('1 + 1');", NULL, 500, "exception",
		     "Code generation from strings disallowed");
	expect_limit("newfn", "new Function('return 1')();", NULL, 500, "exception",
		     "Code generation from strings disallowed");
	expect_limit("noresp", "return 42;", NULL, 500, "bad_response",
		     "fetch() must return a Response, not number");
	expect_limit("hang", "await new Promise(() => {});", NULL, 500, "no_response",
		     "never produced a response");
}

/* What goes on the wire comes from the Response's internal state, not from properties
 * the tenant can redefine. */
static void test_response_tampering(void)
{
	struct fn *fn;
	struct inv *inv;

	if (!want("tamper"))
		return;
	fn = deploy("tamper", "index.js",
		    "export default { fetch(req) {\n"
		    "  const w = new URL(req.url).search;\n"
		    "  if (w === '?error') return Response.error();\n"
		    "  const r = new Response('body', { headers: { 'x-ok': '1' } });\n"
		    "  Object.defineProperty(r, 'status', { value: 70000 });\n"
		    "  Object.defineProperty(r, 'headers',\n"
		    "    { value: [['x-a', '1\\r\\nx-b: 2']] });\n"
		    "  return r; } };\n");
	CHECK(fn, "deploy: %s", errbuf);
	if (!fn)
		return;
	inv = call(fn, "GET", "/", NULL);
	CHECK(inv->resp.status == 500 && !header_of(inv, "x-a") &&
	      strstr(body_of(inv), "status was redefined"),
	      "tampered response: %d %s", inv->resp.status, body_of(inv));
	inv_free(inv);
	inv = call(fn, "GET", "/?error", NULL);
	CHECK(inv->resp.status == 500 && !strcmp(inv->resp.error_kind, "bad_response"),
	      "Response.error(): %d", inv->resp.status);
	inv_free(inv);
	fn_unref(fn);
}

static void test_deploy_errors(void)
{
	struct fn *fn;

	if (!want("deploy"))
		return;
	fn = deploy("syntax", "index.js",
		    "export default {\n  fetch() {\n    return 1 +;\n  }\n};\n");
	CHECK(!fn && strstr(errbuf, "index.js: line 3, column") && strstr(errbuf, "SyntaxError"),
	      "syntax error: '%s'", errbuf);
	fn = deploy("syntax2", "index.js", "import { x } from './lib.js';\nexport default x;\n",
		    "lib.js", "export const x = {\n\n  a: ]\n};\n");
	CHECK(!fn && strstr(errbuf, "lib.js: line 3, column 6"), "import error: '%s'", errbuf);
	fn = deploy("missing", "index.js", "import './nope.js';\n");
	CHECK(!fn && strstr(errbuf, "nope.js"), "missing import: '%s'", errbuf);
	fn = deploy("bare", "index.js", "import 'hono';\n");
	CHECK(!fn && strstr(errbuf, "hono"), "bare import: '%s'", errbuf);
	/* Deploys evaluate the modules once: what could never answer is refused. */
	fn = deploy("nohandler", "index.js", "export default { x: 1 };\n");
	CHECK(!fn && strstr(errbuf, "no default export with a fetch method"),
	      "no handler: '%s'", errbuf);
	fn = deploy("swsyntax", "index.js",
		    "addEventListener('fetch', (e) => e.respondWith(new Response('x')));\n");
	CHECK(!fn && strstr(errbuf, "top-level code failed") &&
	      strstr(errbuf, "addEventListener") && strstr(errbuf, "write export default"),
	      "service-worker syntax: '%s'", errbuf);
	fn = deploy("cjs", "index.js", "module.exports = { fetch() {} };\n");
	CHECK(!fn && strstr(errbuf, "module is not defined") &&
	      strstr(errbuf, "write export default"), "CommonJS: '%s'", errbuf);
	fn = deploy("topthrow", "index.js", "throw new Error('at load');\n"
		    "export default { fetch: () => new Response('x') };\n");
	CHECK(!fn && strstr(errbuf, "at load"), "top-level throw: '%s'", errbuf);
	fn = deploy("topspin", "index.js", "while (true) {}\n"
		    "export default { fetch: () => new Response('x') };\n");
	CHECK(!fn && strstr(errbuf, "top-level code ran for more than"),
	      "top-level loop: '%s'", errbuf);
	fn = deploy("tsbad", "index.ts", "const x: number = ;\nexport default {};\n");
	CHECK(!fn && strstr(errbuf, "index.ts: line 1, column 19"), "ts error: '%s'", errbuf);
}

static uint64_t ms_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Deploys src (index.js) and answers GET /real; fails the check if deploying took
 * more than max_ms. */
static void trial_case(const char *name, const char *src, uint64_t max_ms,
		       const char *want_body)
{
	uint64_t t0 = ms_now(), took;
	struct fn *fn = deploy(name, "index.js", src);
	struct inv *inv;

	took = ms_now() - t0;
	CHECK(fn, "%s: deploy failed: %s", name, errbuf);
	if (!fn)
		return;
	CHECK(took <= max_ms, "%s: deploy took %llu ms", name, (unsigned long long)took);
	inv = call(fn, "GET", "/real", NULL);
	CHECK(inv->resp.status == 200 && !strcmp(body_of(inv), want_body),
	      "%s: %d '%s'", name, inv->resp.status, body_of(inv));
	inv_free(inv);
	fn_unref(fn);
}

/*
 * A deploy calls fetch() once with a synthetic GET / in its throwaway trial isolate
 * (so the code cache holds fetch() compiled). However that call ends, the deploy
 * stands, the call's output reaches no log, and none of its state reaches the tenant.
 */
static void test_deploy_trial(void)
{
	if (!want("trial"))
		return;
	trial_case("trial-throw", "export default { fetch(r) {\n"
		   "  if (new URL(r.url).pathname === '/') throw new Error('trial-boom');\n"
		   "  return new Response('served'); } };\n", 5000, "served");
	trial_case("trial-reject", "export default { async fetch(r) {\n"
		   "  if (new URL(r.url).pathname === '/') return Promise.reject(1);\n"
		   "  return new Response('served'); } };\n", 5000, "served");
	trial_case("trial-spin", "export default { fetch(r) {\n"
		   "  if (new URL(r.url).pathname === '/') while (true) {}\n"
		   "  return new Response('served'); } };\n", 5000, "served");
	trial_case("trial-microtasks", "export default { fetch(r) {\n"
		   "  if (new URL(r.url).pathname === '/') {\n"
		   "    const f = () => Promise.resolve().then(f); return f(); }\n"
		   "  return new Response('served'); } };\n", 5000, "served");
	trial_case("trial-timers", "export default { async fetch(r) {\n"
		   "  if (new URL(r.url).pathname === '/') {\n"
		   "    setInterval(() => console.log('trial-interval'), 0);\n"
		   "    await new Promise((ok) => setTimeout(ok, 60000)); }\n"
		   "  return new Response('served'); } };\n", 5000, "served");
	trial_case("trial-state", "let n = 0; globalThis.seen = [];\n"
		   "export default { fetch(r, env, ctx) {\n"
		   "  n++; seen.push(new URL(r.url).pathname);\n"
		   "  ctx.waitUntil(Promise.resolve().then(() => console.log('trial-wait')));\n"
		   "  return new Response(n + ' ' + seen.join()); } };\n", 5000, "1 /real");
	trial_case("trial-console", "console.log('top-level-line');\n"
		   "export default { fetch(r) {\n"
		   "  console.log('fetch-line ' + new URL(r.url).pathname);\n"
		   "  console.error('fetch-err ' + new URL(r.url).pathname);\n"
		   "  return new Response('served'); } };\n", 5000, "served");
	CHECK(log_has("trial-console deploy stdout: top-level-line"),
	      "top-level output of a deploy is in the logs");
	CHECK(log_has("fetch-line /real") && log_has("fetch-err /real"),
	      "the real request's output is in the logs");
	CHECK(!log_has("fetch-line /\n") && !log_has("fetch-err /\n") &&
	      !log_has("trial-boom") && !log_has("trial-interval"),
	      "the trial request's output reached the logs");
}

/* Every context comes from one snapshot: its Math.random state must not. */
static void test_random_differs(void)
{
	static const char src[] = "export default { fetch() {\n"
		"  return new Response(String(Math.random())); } };\n";
	struct fn *a = deploy("rand-a", "index.js", src), *b = deploy("rand-b", "index.js", src);
	struct inv *ia, *ib;
	char first[64];

	CHECK(a && b, "deploy: %s", errbuf);
	if (!a || !b)
		return;
	ia = call(a, "GET", "/", NULL);
	ib = call(b, "GET", "/", NULL);
	snprintf(first, sizeof(first), "%s", body_of(ia));
	CHECK(first[0] && strcmp(first, body_of(ib)),
	      "Math.random repeats across tenants: %s", first);
	inv_free(ia);
	inv_free(ib);
	fn_unref(a);
	fn_unref(b);
}

static void test_isolation(void)
{
	struct fn *a, *b;
	struct inv *inv;

	if (!want("isolation"))
		return;
	a = deploy("tenant-a", "index.js",
		   "globalThis.secret = 'a-secret'; Response.prototype.leak = 'a';\n"
		   "export default { fetch() { return new Response(globalThis.secret); } };\n");
	b = deploy("tenant-b", "index.js",
		   "export default { fetch() { return new Response(\n"
		   "  typeof globalThis.secret + ' ' + typeof Response.prototype.leak); } };\n");
	CHECK(a && b, "deploy: %s", errbuf);
	if (!a || !b)
		return;
	inv = call(a, "GET", "/", NULL);
	CHECK(!strcmp(body_of(inv), "a-secret"), "a: %s", body_of(inv));
	inv_free(inv);
	inv = call(b, "GET", "/", NULL);
	CHECK(!strcmp(body_of(inv), "undefined undefined"), "b sees a: %s", body_of(inv));
	inv_free(inv);
	fn_unref(a);
	fn_unref(b);
	test_random_differs();
}


/* ---- Web APIs: each case is an async function body and the String() it must give ---- */

static const char *const api_cases[][3] = {
	/* URL (WHATWG parsing and serialization) */
	{ "url-relative", "return new URL('../c/./d?x=1#f', 'http://ex.com/a/b/').href",
	  "http://ex.com/a/c/d?x=1#f" },
	{ "url-normalize", "return new URL('HTTP://EX.com:80/%7Efoo/../bar').href",
	  "http://ex.com/bar" },
	{ "url-parts", "const u = new URL('https://u:p@Ex.com:8443/p/a?q=1#h');"
	  "return [u.protocol, u.username, u.password, u.host, u.hostname, u.port, u.pathname,"
	  "u.search, u.hash, u.origin].join('|')",
	  "https:|u|p|ex.com:8443|ex.com|8443|/p/a|?q=1|#h|https://ex.com:8443" },
	{ "url-encode", "return new URL('http://ex.com/a b/ü?q=a b&c=ü#x y').href",
	  "http://ex.com/a%20b/%C3%BC?q=a%20b&c=%C3%BC#x%20y" },
	{ "url-ipv4", "return new URL('http://0x7f.1/').host + ' ' +"
	  "new URL('http://[::1]:8/').host",
	  "127.0.0.1 [::1]:8" },
	{ "url-ipv4-forms", "const h = (s) => { try { return new URL('http://' + s + '/').host }"
	  " catch (e) { return 'bad' } };"
	  "return ['0177.0.0.1', '4294967295', '0x', '1.0x10.3', '192.168.1.1.', '256.1.1.1',"
	  " '1.2.3.4.5', '09.1.1.1', '0xg.1', '1.2.65536', '127.1:8'].map(h).join()",
	  "127.0.0.1,255.255.255.255,0.0.0.0,1.16.0.3,192.168.1.1,bad,bad,bad,bad,bad,"
	  "127.0.0.1:8" },
	{ "url-invalid", "try { new URL('nope'); return 'no' } catch (e) {"
	  "return e instanceof TypeError }", "true" },
	{ "url-canparse", "return [URL.canParse('http://a'), URL.canParse('/x'),"
	  "URL.canParse('/x', 'http://a')].join()", "true,false,true" },
	{ "url-setters", "const u = new URL('http://a.com/x?y=1'); u.pathname = '/p q';"
	  "u.search = '?k=v'; u.hash = 'h'; u.port = '81'; return u.href",
	  "http://a.com:81/p%20q?k=v#h" },
	{ "url-opaque", "const u = new URL('mailto:Joe@Ex.com');"
	  "return u.pathname + ' ' + u.origin",
	  "Joe@Ex.com null" },
	{ "url-backslash", "return new URL('http://a.com\\\\b\\\\c').pathname", "/b/c" },
	{ "url-searchparams-live", "const u = new URL('http://a/?a=1&b=2');"
	  "u.searchParams.append('c', '3 4'); u.searchParams.delete('a'); return u.href",
	  "http://a/?b=2&c=3+4" },
	{ "usp-parse", "const p = new URLSearchParams('?a=1&a=2&b=%20x+y&c');"
	  "return [p.getAll('a').join(), p.get('b'), p.get('c'), p.get('z'), p.size].join('|')",
	  "1,2| x y|||4" },
	{ "usp-record", "return new URLSearchParams({ x: 'a&b', y: 'é' }).toString()",
	  "x=a%26b&y=%C3%A9" },
	{ "usp-sort", "const p = new URLSearchParams('z=1&a=2&z=0&b=3'); p.sort();"
	  "return p.toString()", "a=2&b=3&z=1&z=0" },
	{ "usp-set", "const p = new URLSearchParams('a=1&b=2&a=3'); p.set('a', 'x');"
	  "return p.toString() + ' ' + p.has('b') + ' ' + p.has('b', '9')", "a=x&b=2 true false" },
	/* Headers */
	{ "headers-basic", "const h = new Headers({ 'Content-Type': 'a' });"
	  "h.append('X-A', ' 1 ');"
	  "h.append('x-a', '2'); return [h.get('content-type'), h.get('X-A'), h.has('x-b'),"
	  "[...h.keys()].join()].join('|')", "a|1, 2|false|content-type,x-a" },
	{ "headers-invalid", "try { new Headers({ 'a b': '1' }); return 'no' } catch (e) {"
	  "return e.name }", "TypeError" },
	{ "headers-cookie", "const h = new Headers(); h.append('Set-Cookie', 'a=1');"
	  "h.append('Set-Cookie', 'b=2'); return h.getSetCookie().join('|') + ' ' +"
	  "[...h].length", "a=1|b=2 2" },
	{ "headers-request", "return request.headers.get('Host') + ' ' + request.method",
	  "fn.test GET" },
	/* Request */
	{ "request-ctor", "const r = new Request('https://a.com/x', { method: 'post',"
	  "body: 'hi', headers: { 'x': 'y' } }); return [r.method, r.url, r.headers.get('x'),"
	  "r.headers.get('content-type'), await r.text(), r.bodyUsed].join('|')",
	  "POST|https://a.com/x|y|text/plain;charset=UTF-8|hi|true" },
	{ "request-get-body", "try { new Request('http://a', { body: 'x' }); return 'no' }"
	  "catch (e) { return e.name }", "TypeError" },
	{ "request-clone", "const r = new Request('http://a',"
	  "{ method: 'PUT', body: '{\"a\":1}' });"
	  "const c = r.clone(); return (await r.json()).a + (await c.text())", "1{\"a\":1}" },
	{ "request-url", "return request.url", "http://request-url.test/t?x=1" },
	/* Response */
	{ "response-json", "const r = Response.json({ a: [1] }, { status: 202 });"
	  "return [r.status, r.headers.get('content-type'), await r.text(), r.ok].join('|')",
	  "202|application/json|{\"a\":[1]}|true" },
	{ "response-redirect", "const r = Response.redirect('http://a.com/b c', 301);"
	  "return r.status + ' ' + r.headers.get('location')", "301 http://a.com/b%20c" },
	{ "response-redirect-bad", "try { Response.redirect('http://a', 200) } catch (e) {"
	  "return e.name }", "RangeError" },
	{ "response-status", "try { new Response('', { status: 99 }) }"
	  "catch (e) { return e.name }",
	  "RangeError" },
	{ "response-nullbody", "try { new Response('x', { status: 204 }) } catch (e) {"
	  "return e.name }", "TypeError" },
	{ "response-arraybuffer", "const b = await new Response(new Uint8Array([104, 105]))"
	  ".arrayBuffer(); return b.byteLength + new TextDecoder().decode(b)", "2hi" },
	{ "response-used", "const r = new Response('x'); await r.text();"
	  "try { await r.text() } catch (e) { return e.name }", "TypeError" },
	{ "response-defaults", "const r = new Response(); return [r.status, r.statusText === '',"
	  "r.ok, r.type, r.body === null, r.headers.has('content-type')].join()",
	  "200,true,true,default,true,false" },
	{ "response-error", "const r = Response.error(); return r.status + r.type", "0error" },
	/* Encoding */
	{ "textencoder", "return Array.from(new TextEncoder().encode('aé€😀')).join()",
	  "97,195,169,226,130,172,240,159,152,128" },
	{ "textencoder-into", "const u = new Uint8Array(4);"
	  "const r = new TextEncoder().encodeInto('aé€', u); return r.read + ',' + r.written",
	  "2,3" },
	{ "textdecoder", "return new TextDecoder().decode(new Uint8Array([0xef, 0xbb, 0xbf, 0x61,"
	  "0xff, 0x62]))", "a\xef\xbf\xbd" "b" },
	{ "textdecoder-fatal", "try { new TextDecoder('utf-8', { fatal: true })"
	  ".decode(new Uint8Array([0xc3])) } catch (e) { return e.name }", "TypeError" },
	{ "textdecoder-label", "try { new TextDecoder('latin2') } catch (e) { return e.name }",
	  "RangeError" },
	{ "btoa", "return btoa('hello\\xff') + ' ' + atob(' aGVs bG8= ')", "aGVsbG//" " hello" },
	{ "btoa-invalid", "try { btoa('€') } catch (e) { return e.name }",
	  "InvalidCharacterError" },
	{ "atob-invalid", "try { atob('a') } catch (e) { return e.name + e.code }",
	  "InvalidCharacterError5" },
	/* crypto, structuredClone */
	{ "random-values", "const a = crypto.getRandomValues(new Uint32Array(8));"
	  "return a.some((x) => x !== 0) && a.length === 8", "true" },
	{ "random-float", "try { crypto.getRandomValues(new Float64Array(1)) } catch (e) {"
	  "return e.name }", "TypeMismatchError" },
	{ "random-quota", "try { crypto.getRandomValues(new Uint8Array(65537)) } catch (e) {"
	  "return e.name }", "QuotaExceededError" },
	{ "random-uuid", "const u = crypto.randomUUID(); return /^[0-9a-f]{8}-[0-9a-f]{4}-4"
	  "[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(u) && u !== crypto.randomUUID()",
	  "true" },
	{ "structured-clone", "const o = { d: new Date(0), m: new Map([[1, { x: 2 }]]),"
	  "s: new Set([3]), u: new Uint8Array([4]) }; o.self = o; const c = structuredClone(o);"
	  "return [c !== o, c.self === c, c.d.getTime(), c.m.get(1).x, c.s.has(3), c.u[0]].join()",
	  "true,true,0,2,true,4" },
	{ "structured-clone-fn", "try { structuredClone(() => 1) } catch (e) { return e.name }",
	  "DataCloneError" },
	/* Timers and microtasks */
	{ "timers-order", "const out = []; setTimeout(() => out.push('t20'), 20);"
	  "setTimeout(() => out.push('t0'), 0); queueMicrotask(() => out.push('micro'));"
	  "Promise.resolve().then(() => out.push('promise')); out.push('sync');"
	  "await new Promise((r) => setTimeout(r, 40)); return out.join()",
	  "sync,micro,promise,t0,t20" },
	{ "timers-clear", "let hit = 0; const id = setTimeout(() => hit++, 5); clearTimeout(id);"
	  "await new Promise((r) => setTimeout(r, 20)); return hit", "0" },
	{ "timers-args", "return await new Promise((r) =>"
	  "setTimeout((a, b) => r(a + b), 1, 2, 3))",
	  "5" },
	{ "timers-interval", "let n = 0; await new Promise((r) => { const i = setInterval(() => {"
	  "if (++n === 3) { clearInterval(i); r(); } }, 1); }); return n", "3" },
	{ "timers-many", "let n = 0; for (let i = 0; i < 5000; i++) setTimeout(() => n++, i % 20);"
	  "const t = setTimeout(() => { n += 1e6; }, 5); clearTimeout(t);"
	  "await new Promise((r) => setTimeout(r, 30)); return n", "5000" },
	{ "timers-elapsed", "const t = Date.now(); await new Promise((r) => setTimeout(r, 50));"
	  "return Date.now() - t >= 49", "true" },
	/* env, ctx, globals */
	{ "env", "return env.GREETING + ' ' + Object.keys(env).join()", "hi GREETING" },
	{ "ctx", "return typeof ctx.waitUntil + typeof ctx.passThroughOnException",
	  "functionfunction" },
	{ "globals", "return [typeof fetch, typeof Blob, typeof FormData, typeof AbortController,"
	  "typeof DOMException, self === globalThis].join()",
	  "function,function,function,function,function,true" },
	{ "console-format", "console.log('fmt %s=%d', 'n', 42, { a: [1, 'x'] });"
	  "console.error(new Error('to-stderr')); return 1", "1" },
	{ "blob", "const b = new Blob(['ab', new Uint8Array([99])], { type: 'Text/Plain' });"
	  "return b.size + b.type + await b.text()", "3text/plainabc" },
	{ "formdata", "const r = new Request('http://a', { method: 'POST', body:"
	  "new URLSearchParams('a=1&b=x+y') }); const f = await r.formData();"
	  "return f.get('a') + f.get('b')", "1x y" },
	{ "wasm-sync", "const b = new Uint8Array(["
	  "0,97,115,109,1,0,0,0,1,7,1,96,2,127,127,1,127,3,2,"
	  "1,0,7,7,1,3,97,100,100,0,0,10,9,1,7,0,32,0,32,1,106,11]);"
	  "const { instance } = await WebAssembly.instantiate(b);"
	  "return instance.exports.add(2, 3)", "5" },
	{ "math-random", "return typeof Math.random()", "number" },
	{ "console-surrogate", "console.log('lone \\ud800 x'); return 1", "1" },
	{ "wasm-memory-cap", "try { new WebAssembly.Memory({ initial: 4096 }); return 'grew' }"
	  "catch (e) { return e.name }", "RangeError" },
};

static void test_apis(void)
{
	size_t i;

	for (i = 0; i < sizeof(api_cases) / sizeof(api_cases[0]); i++)
		js_expect(api_cases[i][0], api_cases[i][1], api_cases[i][2]);
	if (want("console-format")) {
		CHECK(log_has("stdout: fmt n=42 { a: [ 1, 'x' ] }"), "console.log format");
		CHECK(log_has("stderr: Error: to-stderr"), "console.error to stderr");
	}
	if (want("console-surrogate")) {
		CHECK(log_has("stdout: lone \xef\xbf\xbd x"), "lone surrogate logged as U+FFFD");
	}
}


/* ---- modules, Wasm, TypeScript, waitUntil, eviction ---- */

/* (module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)) */
static const unsigned char add_wasm[] = {
	0, 97, 115, 109, 1, 0, 0, 0, 1, 7, 1, 96, 2, 127, 127, 1, 127, 3, 2, 1, 0, 7, 7, 1,
	3, 97, 100, 100, 0, 0, 10, 9, 1, 7, 0, 32, 0, 32, 1, 106, 11,
};

static void expect_body(struct fn *fn, const char *target, const char *want_body)
{
	struct inv *inv = call(fn, "GET", target, NULL);

	CHECK(inv->resp.status == 200 && !strcmp(body_of(inv), want_body),
	      "%s: got %d '%s', want '%s'", fn->name, inv->resp.status, body_of(inv), want_body);
	inv_free(inv);
}

static void test_modules(void)
{
	struct fn *fn;
	char dir[600];

	if (!want("modules"))
		return;
	snprintf(dir, sizeof(dir), "%s/wasmmod", tmp);
	mkdir(dir, 0755);
	write_file(dir, "add.wasm", (const char *)add_wasm, sizeof(add_wasm));
	fn = deploy("wasmmod", "index.js",
		    "import mod from './add.wasm';\n"
		    "import { twice } from './lib/util.js';\n"
		    "export default { async fetch() {\n"
		    "  const i = await WebAssembly.instantiate(mod);\n"
		    "  return new Response(`${mod instanceof WebAssembly.Module} `\n"
		    "    + twice(i.exports.add(20, 1)));\n} };\n",
		    "lib/util.js", "import { one } from '../one.js';\n"
		    "export const twice = (x) => x * 2 * one;\n",
		    "one.js", "export const one = 1;\n");
	CHECK(fn, "modules deploy: %s", errbuf);
	if (fn) {
		expect_body(fn, "/", "true 42");
		fn_unref(fn);
	}
	fn = deploy("ts", "index.ts",
		    "import { greet } from './greet.ts';\n"
		    "interface Env { NAME?: string }\n"
		    "export default { async fetch(req: Request, env: Env): Promise<Response> {\n"
		    "  const n: number = 2;\n  return new Response(greet('ts') + n);\n} };\n",
		    "greet.ts", "export function greet(who: string): string {\n"
		    "  return `hi ${who}`; }\n");
	CHECK(fn, "ts deploy: %s", errbuf);
	if (fn) {
		expect_body(fn, "/", "hi ts2");
		fn_unref(fn);
	}
	fn = deploy("tla", "index.js",
		    "const v = await new Promise((r) => setTimeout(() => r('late'), 5));\n"
		    "export default { fetch() { return new Response(v); } };\n");
	CHECK(fn, "tla deploy: %s", errbuf);
	if (fn) {
		expect_body(fn, "/", "late");
		fn_unref(fn);
	}
}

/* Hono from npm, bundled by examples/router-js/build.sh; skipped when not built. */
static void test_router_bundle(void)
{
	char err[1024], dir[512];
	struct fn *fn;
	struct inv *inv;

	if (!want("router"))
		return;
	snprintf(dir, sizeof(dir), "%s/examples/router-js", STOKE_SOURCE_ROOT);
	if (access(STOKE_SOURCE_ROOT "/examples/router-js/dist/index.js", R_OK)) {
		printf("skip router: run examples/router-js/build.sh to bundle Hono\n");
		return;
	}
	fn = calloc(1, sizeof(*fn));
	atomic_init(&fn->refs, 1);
	strcpy(fn->name, "router-js");
	strcpy(fn->entry, "dist/index.js");
	fn->dir = strdup(dir);
	if (T.ops->prepare(&T, fn, err, sizeof(err))) {
		CHECK(0, "router deploy: %s", err);
		fn_unref(fn);
		return;
	}
	expect_body(fn, "/hello/unit", "Hello, unit!");
	inv = call_h(fn, "POST", "/echo", "{\"a\":1}", "content-type", "application/json");
	CHECK(inv->resp.status == 201 && !strcmp(body_of(inv), "{\"received\":{\"a\":1}}"),
	      "router echo: %d %s", inv->resp.status, body_of(inv));
	inv_free(inv);
	inv = call(fn, "GET", "/missing", NULL);
	CHECK(inv->resp.status == 404, "router 404: %d", inv->resp.status);
	inv_free(inv);
	fn_unref(fn);
}

static long metric_value(const char *name);

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* With limits.max_instances 1, requests queue behind each other in order. */
static void test_one_instance(const char *slow)
{
	struct waiter w1 = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 };
	struct waiter w2 = w1;
	struct fn_limits one = { .max_instances = 1 };
	struct fn *fn = deploy_limits("single", &one, errbuf, sizeof(errbuf), "index.js", slow,
				      NULL);
	struct inv *a, *b;
	uint64_t t0 = mono_ms();

	CHECK(fn, "deploy: %s", errbuf);
	if (!fn)
		return;
	a = call_async(fn, "GET", "/", NULL, NULL, NULL, &w1);
	b = call_async(fn, "GET", "/", NULL, NULL, NULL, &w2);
	wait_done(a);
	wait_done(b);
	CHECK(!strcmp(body_of(a), "slow 1"), "a: %s", body_of(a));
	CHECK(!strcmp(body_of(b), "slow 2") && mono_ms() - t0 >= 800,
	      "b queued behind a: %s after %llu ms", body_of(b),
	      (unsigned long long)(mono_ms() - t0));
	inv_free(a);
	inv_free(b);
	fn_unref(fn);
}

/* A request waiting on a timer must not hold up other tenants on its worker, and a
 * busy function gets more instances (up to limits.max_instances). */
static void test_concurrency(void)
{
	static const char slow[] = "let n = 0;\nexport default { async fetch() {\n"
		"  const me = ++n; await new Promise((r) => setTimeout(r, 400));\n"
		"  return new Response('slow ' + me); } };\n";
	struct waiter w1 = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 };
	struct waiter w2 = w1, w3 = w1;
	struct fn *s1, *s2, *fast;
	struct inv *a, *b, *c;
	long refreshes;
	uint64_t t0;

	if (!want("concurrency"))
		return;
	s1 = deploy("slow1", "index.js", slow);
	s2 = deploy("slow2", "index.js", slow);
	fast = deploy("fast", "index.js",
		      "export default { fetch() { return new Response('f'); } };\n");
	CHECK(s1 && s2 && fast, "deploy: %s", errbuf);
	if (!s1 || !s2 || !fast)
		return;
	refreshes = metric_value("stoke_isolate_code_refreshes_total");
	/* Two workers, assigned round-robin: fast shares a worker with slow1. */
	t0 = mono_ms();
	a = call_async(s1, "GET", "/", NULL, NULL, NULL, &w1);
	b = call_async(s2, "GET", "/", NULL, NULL, NULL, &w2);
	c = call_async(s1, "GET", "/", NULL, NULL, NULL, &w3);
	usleep(50000);
	expect_body(fast, "/", "f");
	CHECK(mono_ms() - t0 < 300, "fast tenant waited %llu ms behind slow ones",
	      (unsigned long long)(mono_ms() - t0));
	wait_done(a);
	wait_done(b);
	wait_done(c);
	CHECK(!strcmp(body_of(a), "slow 1"), "a: %s", body_of(a));
	/* A second instance of slow1 served c alongside a. */
	CHECK(!strcmp(body_of(c), "slow 1") && mono_ms() - t0 < 800,
	      "c on its own instance: %s after %llu ms", body_of(c),
	      (unsigned long long)(mono_ms() - t0));
	CHECK(!strcmp(body_of(b), "slow 1"), "b: %s", body_of(b));
	/* slow1's second instance remade its code caches; slow2 and fast had one. */
	CHECK(metric_value("stoke_isolate_code_refreshes_total") == refreshes + 1,
	      "code refreshes %ld, were %ld", metric_value("stoke_isolate_code_refreshes_total"),
	      refreshes);
	inv_free(a);
	inv_free(b);
	inv_free(c);
	fn_unref(s1);
	fn_unref(s2);
	fn_unref(fast);
	test_one_instance(slow);
}

static void test_wait_until(void)
{
	struct fn *fn;
	int i;

	if (!want("waituntil"))
		return;
	fn = deploy("waituntil", "index.js",
		    "let done = 0;\n"
		    "export default { fetch(req, env, ctx) {\n"
		    "  ctx.waitUntil(new Promise((r) => setTimeout(() => {\n"
		    "    done++; console.log('waited ' + done); r(); }, 20)));\n"
		    "  return new Response('done ' + done);\n} };\n");
	CHECK(fn, "deploy: %s", errbuf);
	if (!fn)
		return;
	expect_body(fn, "/", "done 0");
	/* The response comes first; the work finishes on the worker afterwards. */
	for (i = 0; i < 200 && !log_has("stdout: waited 1"); i++)
		usleep(5000);
	CHECK(log_has("stdout: waited 1"), "waitUntil work ran after the response");
	expect_body(fn, "/", "done 1");
	fn_unref(fn);
}

/*
 * A timer a request leaves behind is dropped with the response, and a request that set
 * none skips the runtime's drain() (the shim only calls it after waitUntil or a timer):
 * neither may let a later request see the first one's timer fire.
 */
static void test_leftover_timer(void)
{
	struct fn *fn;

	if (!want("leftover"))
		return;
	fn = deploy("leftover", "index.js",
		    "let fired = 0;\n"
		    "export default { fetch(req) {\n"
		    "  if (req.url.endsWith('/set')) setTimeout(() => { fired++;\n"
		    "    console.log('leftover fired'); }, 1);\n"
		    "  return new Response('fired ' + fired);\n} };\n");
	CHECK(fn, "deploy: %s", errbuf);
	if (!fn)
		return;
	expect_body(fn, "/set", "fired 0");
	usleep(30000);
	expect_body(fn, "/", "fired 0");
	usleep(30000);
	expect_body(fn, "/", "fired 0");
	CHECK(!log_has("leftover fired"), "a timer left by an answered request never fires");
	fn_unref(fn);
}

static void test_retire(void)
{
	struct fn *fn;
	struct inv *inv;

	if (!want("retire"))
		return;
	fn = deploy("retire", "index.js",
		    "let n = 0;\n"
		    "export default { fetch() { return new Response(String(++n)); } };\n");
	CHECK(fn, "deploy: %s", errbuf);
	if (!fn)
		return;
	expect_body(fn, "/", "1");
	expect_body(fn, "/", "2");
	T.ops->retire(&T, fn);
	/* Retired versions still answer in-flight requests, from a fresh instance. */
	inv = call(fn, "GET", "/", NULL);
	CHECK(inv->resp.status == 200 && !strcmp(body_of(inv), "1") && inv->cold,
	      "after retire: '%s'", body_of(inv));
	inv_free(inv);
	fn_unref(fn);
}

static long tier_metric(struct tier *t, const char *name);

static long metric_value(const char *name)
{
	return tier_metric(&T, name);
}

/* main() caps live isolates at 40: more tenants evict the least recently used. */
static void test_live_cap(void)
{
	struct fn *fns[60];
	char name[32];
	int i, n = 0;

	if (!want("livecap"))
		return;
	for (i = 0; i < 60; i++) {
		snprintf(name, sizeof(name), "cap%d", i);
		fns[i] = deploy(name, "index.js",
				"let n = 0; export default { fetch() {\n"
				"  return new Response(String(++n)); } };\n");
		if (!fns[i])
			break;
		n++;
		expect_body(fns[i], "/", "1");
	}
	CHECK(n == 60, "deploy: %s", errbuf);
	CHECK(metric_value("stoke_isolate_live") <= 40 &&
	      metric_value("stoke_isolate_live_max") == 40,
	      "live %ld of max %ld", metric_value("stoke_isolate_live"),
	      metric_value("stoke_isolate_live_max"));
	CHECK(metric_value("stoke_isolate_evictions_total") >= 20, "evictions %ld",
	      metric_value("stoke_isolate_evictions_total"));
	/* The first tenants were evicted: they answer again from a fresh isolate. */
	if (n)
		expect_body(fns[0], "/", "1");
	expect_body(fns[n - 1], "/", "2");
	for (i = 0; i < n; i++) {
		T.ops->retire(&T, fns[i]);
		fn_unref(fns[i]);
	}
}

/* A second tier with a 16 MiB budget keeps few idle tenants, evicting the least
 * recently used; evicted ones answer again from a fresh isolate. */
static void test_memory_budget(void)
{
	struct tier small = { .ops = &iso_tier_ops, .nworkers = 1,
			      .memory_budget = 16 << 20 };
	struct fn *fns[24];
	struct strbuf m = STRBUF_INIT;
	char name[32];
	int i, n = 0;

	if (!want("budget"))
		return;
	small.data_dir = tmp;
	CHECK(small.ops->start(&small) == 0, "second tier starts");
	cur_tier = &small;
	for (i = 0; i < 24; i++) {
		snprintf(name, sizeof(name), "budget%d", i);
		fns[i] = deploy(name, "index.js",
				"let n = 0; export default { fetch() {\n"
				"  return new Response(String(++n)); } };\n");
		if (!fns[i])
			break;
		n++;
		expect_body(fns[i], "/", "1");
	}
	small.ops->metrics(&small, &m);
	CHECK(m.buf && !strstr(m.buf, "stoke_isolate_evictions_total 0\n") &&
	      !strstr(m.buf, "stoke_isolate_live 24\n"), "budget evicts: %s", m.buf);
	sb_free(&m);
	if (n) {
		expect_body(fns[0], "/", "1");
		expect_body(fns[n - 1], "/", "2");
	}
	for (i = 0; i < n; i++) {
		small.ops->retire(&small, fns[i]);
		fn_unref(fns[i]);
	}
	small.ops->stop(&small);
	cur_tier = &T;
}

static long tier_metric(struct tier *t, const char *name)
{
	struct strbuf m = STRBUF_INIT;
	char line[128];
	const char *p;
	long v = -1;

	t->ops->metrics(t, &m);
	snprintf(line, sizeof(line), "\n%s ", name);
	p = m.buf ? strstr(m.buf, line) : NULL;
	if (p)
		v = strtol(p + strlen(line), NULL, 10);
	sb_free(&m);
	return v;
}

static int is_done(struct waiter *w)
{
	int done;

	pthread_mutex_lock(&w->lock);
	done = w->done;
	pthread_mutex_unlock(&w->lock);
	return done;
}

/* Polls the function logs (at most 10 s) for a line. */
static int wait_log(const char *needle)
{
	int i;

	for (i = 0; i < 2000 && !log_has(needle); i++)
		usleep(5000);
	return log_has(needle);
}

/* Starts a second tier with one worker and sends call_async() there. */
static int start_one_worker(struct tier *one)
{
	*one = (struct tier){ .ops = &iso_tier_ops, .nworkers = 1, .data_dir = tmp };
	if (one->ops->start(one)) {
		CHECK(0, "one-worker tier starts");
		return -1;
	}
	cur_tier = one;
	return 0;
}

static const char spin_src[] =
	"export default { fetch(request) {\n"
	"  const ms = Number(new URL(request.url).searchParams.get('ms'));\n"
	"  console.log('spinning ' + ms); const end = Date.now() + ms;\n"
	"  while (Date.now() < end) {} return new Response('spun'); } };\n";

/*
 * On a tier with one worker, a tenant spinning for 1.5 s of CPU must not hold up a warm
 * tenant or a cold start on that worker: they are answered while it still spins (the
 * worker went on on another thread), and every isolate works on whichever thread
 * serves it afterwards.
 */
static void test_handoff(void)
{
	struct tier one;
	struct waiter w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 };
	struct fn_limits lim = { .cpu_ms = 10000, .wall_ms = 20000 };
	struct fn *spin, *warm, *cold;
	struct inv *s;

	if (!want("handoff") || start_one_worker(&one))
		return;
	spin = deploy_limits("spinner", &lim, errbuf, sizeof(errbuf), "index.js", spin_src,
			     NULL);
	warm = deploy("warmone", "index.js", "let n = 0; export default { fetch() {\n"
		      "  return new Response(String(++n)); } };\n");
	cold = deploy("coldone", "index.js", "export default { fetch() {\n"
		      "  return new Response('cold'); } };\n");
	CHECK(spin && warm && cold, "deploy: %s", errbuf);
	if (!spin || !warm || !cold)
		goto out;
	expect_body(warm, "/", "1");
	s = call_async(spin, "GET", "/?ms=1500", NULL, NULL, NULL, &w);
	CHECK(wait_log("spinning 1500"), "the spinner started");
	expect_body(warm, "/", "2");
	expect_body(cold, "/", "cold");
	CHECK(!is_done(&w), "warm and cold tenants answered while the spinner spins");
	CHECK(tier_metric(&one, "stoke_isolate_handoffs_total") >= 1 &&
	      tier_metric(&one, "stoke_isolate_threads") >= 2, "handoffs %ld, threads %ld",
	      tier_metric(&one, "stoke_isolate_handoffs_total"),
	      tier_metric(&one, "stoke_isolate_threads"));
	wait_done(s);
	CHECK(s->resp.status == 200 && !strcmp(body_of(s), "spun"), "spinner: %d %s",
	      s->resp.status, body_of(s));
	inv_free(s);
	/* Each isolate again, now that they have moved between threads. */
	expect_body(warm, "/", "3");
	expect_body(spin, "/?ms=1", "spun");
	expect_body(cold, "/", "cold");
out:
	if (spin)
		fn_unref(spin);
	if (warm)
		fn_unref(warm);
	if (cold)
		fn_unref(cold);
	one.ops->stop(&one);
	cur_tier = &T;
}

/*
 * Many hand-offs at once on one worker: six requests spinning 1.5 s (two functions,
 * three instances each) and sixty quick ones to five functions, all sent together.
 * Every one is answered correctly, and the quick ones before the spinners (which
 * share the cores with them: on two loaded cores the quick ones took 0.2-0.4 s).
 */
static void test_handoff_many(void)
{
	enum { NSPIN = 6, NQUICK = 60, NFN = 5 };
	struct waiter ws[NSPIN + NQUICK];
	struct inv *inv[NSPIN + NQUICK];
	struct fn_limits lim = { .cpu_ms = 5000, .max_instances = 3 };
	struct fn *spin[2], *quick[NFN];
	struct tier one;
	char name[32], src[200];
	int i, ok = 1, quick_first = 1;

	if (!want("handoff") || start_one_worker(&one))
		return;
	for (i = 0; i < 2; i++) {
		snprintf(name, sizeof(name), "manyspin%d", i);
		spin[i] = deploy_limits(name, &lim, errbuf, sizeof(errbuf), "index.js", spin_src,
					NULL);
	}
	for (i = 0; i < NFN; i++) {
		snprintf(name, sizeof(name), "manyquick%d", i);
		snprintf(src, sizeof(src), "export default { fetch() {\n"
			 "  return new Response('q%d'); } };\n", i);
		quick[i] = deploy(name, "index.js", src);
	}
	CHECK(spin[0] && spin[1] && quick[0] && quick[NFN - 1], "deploy: %s", errbuf);
	for (i = 0; i < NSPIN + NQUICK; i++) {
		ws[i] = (struct waiter){ PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 };
		inv[i] = i < NSPIN ? call_async(spin[i % 2], "GET", "/?ms=1500", NULL, NULL, NULL,
						&ws[i])
				   : call_async(quick[i % NFN], "GET", "/", NULL, NULL, NULL,
						&ws[i]);
	}
	for (i = NSPIN; i < NSPIN + NQUICK; i++) {
		wait_done(inv[i]);
		snprintf(name, sizeof(name), "q%d", i % NFN);
		ok &= inv[i]->resp.status == 200 && !strcmp(body_of(inv[i]), name);
	}
	for (i = 0; i < NSPIN; i++)
		quick_first &= !is_done(&ws[i]);
	for (i = 0; i < NSPIN; i++) {
		wait_done(inv[i]);
		ok &= inv[i]->resp.status == 200 && !strcmp(body_of(inv[i]), "spun");
	}
	CHECK(ok, "every request answered correctly");
	CHECK(quick_first, "the quick requests were answered while the spinners spun");
	for (i = 0; i < NSPIN + NQUICK; i++)
		inv_free(inv[i]);
	for (i = 0; i < 2; i++)
		fn_unref(spin[i]);
	for (i = 0; i < NFN; i++)
		fn_unref(quick[i]);
	one.ops->stop(&one);
	cur_tier = &T;
}

/* stop() while a handed-off slice still spins: it is cut short and answered. */
static void test_handoff_stop(void)
{
	struct tier one;
	struct waiter w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 };
	struct fn_limits lim = { .cpu_ms = 20000, .wall_ms = 20000 };
	struct fn *spin, *warm;
	struct inv *s;
	uint64_t t0;

	if (!want("handoff") || start_one_worker(&one))
		return;
	spin = deploy_limits("spinstop", &lim, errbuf, sizeof(errbuf), "index.js", spin_src,
			     NULL);
	warm = deploy("warmstop", "index.js", "export default { fetch() {\n"
		      "  return new Response('w'); } };\n");
	CHECK(spin && warm, "deploy: %s", errbuf);
	if (spin && warm) {
		s = call_async(spin, "GET", "/?ms=15000", NULL, NULL, NULL, &w);
		CHECK(wait_log("spinning 15000"), "the spinner started");
		expect_body(warm, "/", "w");
		t0 = mono_ms();
		one.ops->stop(&one);
		wait_done(s);
		CHECK((s->resp.status == 503 || s->resp.status == 504) && mono_ms() - t0 < 5000,
		      "spinning at stop: %d after %llu ms", s->resp.status,
		      (unsigned long long)(mono_ms() - t0));
		inv_free(s);
	} else {
		one.ops->stop(&one);
	}
	if (spin)
		fn_unref(spin);
	if (warm)
		fn_unref(warm);
	cur_tier = &T;
}

static int shim_header(void *opaque, const char *n, size_t nl, const char *v, size_t vl)
{
	return 0;
}

static void shim_body(void *opaque, char *body, size_t len)
{
	snprintf(opaque, 64, "%.*s", (int)len, body);
	free(body);
}

/* Loads code into a fresh vm and runs one GET; the body goes to out (64 bytes). */
static struct iso_vm *shim_run(struct iso_code *code, char *out)
{
	struct iso_io io = { .opaque = out, .add_header = shim_header, .set_body = shim_body };
	struct iso_kv host = { "host", "fn.test", 4, 7 };
	uint64_t deadline = iso_v8_now_ns() + 10000000000ull, wake;
	struct iso_req req = { "GET", "http://fn.test/a/b", &host, 1, NULL, 0, deadline };
	struct iso_vm *vm = iso_vm_new();
	int rc, status = 0;

	out[0] = '\0';
	iso_vm_set_io(vm, &io);
	rc = iso_vm_load(vm, code, NULL, 0, deadline, errbuf, sizeof(errbuf));
	if (rc == ISO_OK)
		rc = iso_vm_call_start(vm, &req, errbuf, sizeof(errbuf));
	while (rc == ISO_PENDING)
		rc = iso_vm_step(vm, &status, &wake, errbuf, sizeof(errbuf));
	CHECK(rc == ISO_OK && status == 200, "shim call: rc %d status %d %s", rc, status,
	      errbuf);
	return vm;
}

/* After a first request the caches are remade with the functions it compiled, and a
 * fresh isolate loads from them and answers the same. */
static void test_code_refresh(void)
{
	static const char entry[] = "import { greet } from './lib.js';\n"
		"export default { fetch(r) {\n"
		"  return new Response(greet(new URL(r.url).pathname)); } };\n";
	static const char lib[] = "export function greet(p) { return 'hi ' + p; }\n";
	char dir[512], a[64], b[64];
	struct iso_code *code = NULL;
	struct iso_vm *vm;
	size_t before;
	long grew;

	if (!want("refresh"))
		return;
	snprintf(dir, sizeof(dir), "%s/refresh", tmp);
	mkdir(dir, 0755);
	write_file(dir, "index.js", entry, strlen(entry));
	write_file(dir, "lib.js", lib, strlen(lib));
	CHECK(iso_code_compile(dir, "index.js", &code, errbuf, sizeof(errbuf)) == 0,
	      "compile: %s", errbuf);
	if (!code)
		return;
	before = iso_code_size(code);
	vm = shim_run(code, a);
	grew = iso_vm_code_refresh(vm, code);
	CHECK(grew > 0 && iso_code_size(code) == before + (size_t)grew,
	      "caches grew by %ld bytes", grew);
	iso_vm_free(vm);
	iso_vm_free(shim_run(code, b));
	CHECK(!strcmp(a, "hi /a/b") && !strcmp(b, a), "before '%s', after '%s'", a, b);
	iso_code_free(code);
}

/* Long modules: an ASCII one is shared by the isolates as an external string (its
 * functions' source text still reads back), a non-ASCII one is copied. */
static void test_long_sources(void)
{
	static const char *const tails[] = { "'long ok'", "'long \u00e9 ok'" };
	const char *const want_body[] = { "function f() { return 'long ok'; }",
					  "function f() { return 'long \u00e9 ok'; }" };
	struct strbuf src = STRBUF_INIT;
	struct fn *fn;
	struct inv *inv;
	int i, k;

	if (!want("longsource"))
		return;
	for (k = 0; k < 2; k++) {
		sb_adds(&src, "/*");
		for (i = 0; i < 40; i++)
			sb_adds(&src, " padding to make the module longer than one KiB.\n");
		sb_printf(&src, "*/\nfunction f() { return %s; }\n"
			  "export default { fetch() { return new Response(f.toString()); } };\n",
			  tails[k]);
		fn = deploy(k ? "longsrc2" : "longsrc1", "index.js", src.buf);
		CHECK(fn, "deploy: %s", errbuf);
		if (!fn)
			return;
		expect_body(fn, "/", want_body[k]);
		T.ops->retire(&T, fn);
		/* A second isolate over the same source. */
		inv = call(fn, "GET", "/", NULL);
		CHECK(inv->cold && !strcmp(body_of(inv), want_body[k]), "again: %s",
		      body_of(inv));
		inv_free(inv);
		fn_unref(fn);
		sb_free(&src);
	}
}

static void test_metrics(void)
{
	struct strbuf m = STRBUF_INIT;

	if (!want("metrics"))
		return;
	T.ops->metrics(&T, &m);
	CHECK(m.buf && strstr(m.buf, "stoke_isolate_live ") &&
	      strstr(m.buf, "stoke_isolate_cold_starts_total ") &&
	      strstr(m.buf, "stoke_isolate_pool_size ") &&
	      strstr(m.buf, "stoke_isolate_memory_bytes ") &&
	      strstr(m.buf, "stoke_isolate_limit_kills_total{limit=\"cpu\"} "),
	      "metrics: %s", m.buf ? m.buf : "");
	sb_free(&m);
}

/* stop() answers requests still in flight instead of leaving the gateway waiting. */
static void stop_with_request_in_flight(void)
{
	struct waiter w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 };
	struct fn *fn = deploy("inflight", "index.js",
			       "export default { async fetch() {\n"
			       "  await new Promise((r) => setTimeout(r, 5000));\n"
			       "  return new Response('late'); } };\n");
	struct inv *inv;
	uint64_t t0 = mono_ms();

	if (!fn) {
		T.ops->stop(&T);
		CHECK(0, "deploy: %s", errbuf);
		return;
	}
	inv = call_async(fn, "GET", "/", NULL, NULL, NULL, &w);
	usleep(100000);
	T.ops->stop(&T);
	wait_done(inv);
	CHECK(inv->resp.status == 503 && !strcmp(inv->resp.error_kind, "shutting_down") &&
	      mono_ms() - t0 < 2000, "in flight at stop: %d after %llu ms", inv->resp.status,
	      (unsigned long long)(mono_ms() - t0));
	inv_free(inv);
	fn_unref(fn);
}

static void release_hook(struct fn *fn)
{
	T.ops->release(&T, fn);
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

/* The temporary functions' directories go when the run ends. */
static void remove_tree(const char *dir)
{
	nftw(dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

int main(int argc, char **argv)
{
	const char *base = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";

	filter = argc > 1 ? argv[1] : NULL;
	snprintf(tmp, sizeof(tmp), "%s/stoke-iso-test-XXXXXX", base);
	if (!mkdtemp(tmp)) {
		perror("mkdtemp");
		return 2;
	}
	T.data_dir = tmp;
	fnlog_set_sink(log_sink);
	setenv("STOKE_ISO_MAX_LIVE", "40", 1);
	fn_set_release_hook(release_hook);
	if (T.ops->start(&T)) {
		printf("FATAL: the isolate tier did not start\n");
		return 2;
	}
	test_hello();
	js_expect("smoke", "return 1 + 1", "2");
	test_apis();
	test_limits();
	test_deploy_errors();
	test_deploy_trial();
	test_response_tampering();
	test_isolation();
	test_modules();
	test_router_bundle();
	test_concurrency();
	test_wait_until();
	test_leftover_timer();
	test_retire();
	test_live_cap();
	test_memory_budget();
	test_handoff();
	test_handoff_many();
	test_handoff_stop();
	test_code_refresh();
	test_long_sources();
	test_metrics();
	stop_with_request_in_flight();
	remove_tree(tmp);
	printf("test_isolate: %d passed, %d failed\n", npass, nfail);
	return nfail ? 1 : 0;
}
