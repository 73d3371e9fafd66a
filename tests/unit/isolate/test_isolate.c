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

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static struct tier T = { .ops = &iso_tier_ops, .nworkers = 2 };
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

	snprintf(path, sizeof(path), "%s/%s", dir, name);
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

/* Sends one request and waits (at most 60 s) for inv_done. target is "/path?query". */
static struct inv *call_h(struct fn *fn, const char *method, const char *target,
			  const char *body, const char *hname, const char *hvalue)
{
	struct waiter w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 };
	struct inv *inv = calloc(1, sizeof(*inv));
	const char *q = strchr(target, '?');
	struct timespec until;
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
	inv->gw = &w;
	T.ops->invoke(&T, inv);
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 60;
	pthread_mutex_lock(&w.lock);
	while (!w.done)
		if (pthread_cond_timedwait(&w.cond, &w.lock, &until) == ETIMEDOUT)
			break;
	pthread_mutex_unlock(&w.lock);
	if (!w.done) {
		printf("FATAL: request to %s timed out\n", fn->name);
		exit(1);
	}
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
	struct fn_limits small = { .memory_mb = 32, .cpu_ms = 5000 }, wall = { .wall_ms = 300, .cpu_ms = 50 };

	expect_limit("cpu", "while (true) {}", NULL, 503, "cpu_limit",
		     "exceeded its CPU time limit (50 ms)");
	expect_limit("heap", "const a = []; while (true) a.push({ x: new Array(100).fill(n) });",
		     &small, 503, "memory_limit", "exceeded its memory limit (32 MB)");
	expect_limit("buffers", "const a = []; for (let i = 0; i < 1000; i++) "
		     "a.push(new ArrayBuffer(1 << 20));", &small, 503, "memory_limit",
		     "exceeded its memory limit (32 MB)");
	expect_limit("stack", "const f = (x) => f(x + 1) + 1; f(0);", NULL, 500,
		     "stack_overflow", "overflowed its stack");
	expect_limit("wall", "await new Promise((r) => setTimeout(r, 5000));", &wall, 504,
		     "wall_limit", "exceeded its wall time limit (300 ms)");
	expect_limit("throws", "throw new Error('boom ' + n);", NULL, 500, "exception",
		     "Uncaught Error: boom 2");
	expect_limit("eval", "eval('1 + 1');", NULL, 500, "exception",
		     "Code generation from strings disallowed");
	expect_limit("newfn", "new Function('return 1')();", NULL, 500, "exception",
		     "Code generation from strings disallowed");
	expect_limit("noresp", "return 42;", NULL, 500, "exception",
		     "fetch() must return a Response");
	expect_limit("hang", "await new Promise(() => {});", NULL, 500, "no_response",
		     "never produced a response");
}

static void test_deploy_errors(void)
{
	struct fn *fn;

	if (!want("deploy"))
		return;
	fn = deploy("syntax", "index.js", "export default {\n  fetch() {\n    return 1 +;\n  }\n};\n");
	CHECK(!fn && strstr(errbuf, "index.js: line 3, column") && strstr(errbuf, "SyntaxError"),
	      "syntax error: '%s'", errbuf);
	fn = deploy("syntax2", "index.js", "import { x } from './lib.js';\nexport default x;\n",
		    "lib.js", "export const x = {\n\n  a: ]\n};\n");
	CHECK(!fn && strstr(errbuf, "lib.js: line 3, column 6"), "import error: '%s'", errbuf);
	fn = deploy("missing", "index.js", "import './nope.js';\n");
	CHECK(!fn && strstr(errbuf, "nope.js"), "missing import: '%s'", errbuf);
	fn = deploy("bare", "index.js", "import 'hono';\n");
	CHECK(!fn && strstr(errbuf, "hono"), "bare import: '%s'", errbuf);
	fn = deploy("nohandler", "index.js", "export default { x: 1 };\n");
	CHECK(fn, "no handler deploys: %s", errbuf);
	if (fn) {
		struct inv *inv = call(fn, "GET", "/", NULL);

		CHECK(inv->resp.status == 500 && !strcmp(inv->resp.error_kind, "no_handler"),
		      "no handler: %d", inv->resp.status);
		inv_free(inv);
		fn_unref(fn);
	}
	fn = deploy("tsbad", "index.ts", "const x: number = ;\nexport default {};\n");
	CHECK(!fn && strstr(errbuf, "index.ts: line 1, column 19"), "ts error: '%s'", errbuf);
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
}

static void release_hook(struct fn *fn)
{
	T.ops->release(&T, fn);
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
	fn_set_release_hook(release_hook);
	if (T.ops->start(&T)) {
		printf("FATAL: the isolate tier did not start\n");
		return 2;
	}
	test_hello();
	js_expect("smoke", "return 1 + 1", "2");
	test_limits();
	test_deploy_errors();
	test_isolation();
	T.ops->stop(&T);
	printf("test_isolate: %d passed, %d failed\n", npass, nfail);
	return nfail ? 1 : 0;
}
