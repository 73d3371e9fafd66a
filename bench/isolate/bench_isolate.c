/*
 * Isolate tier benchmark, through iso_tier_ops exactly as the gateway drives it:
 *
 *   cold start   request in -> response out for a deployed function's first request
 *                (pooled isolate, context from the snapshot, modules from the code cache)
 *   cold again   the third cold start of a function (its code caches were remade
 *                after its second instance's request)
 *   warm         the next requests to the same tenant
 *   bundle       cold start of a ~70 KB bundle
 *   density      RSS per live idle tenant with 1,000 and 10,000 tenants
 *   churn        10,000 tenants created and retired; RSS every 1,000 must plateau
 *
 * Usage: bench_isolate [-n samples] [-t tenants] [-o results.json]
 * Prints a table and writes the same figures as JSON.
 */
#include "common/fnlog.h"
#include "common/invoke.h"
#include "common/strbuf.h"

#include <errno.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static struct tier T = { .ops = &iso_tier_ops, .nworkers = 1 };
static char tmp[256];
static int nfn;

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

static double rss_mib(void)
{
	long pages = 0, rss = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	if (f) {
		if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
			rss = 0;
		fclose(f);
	}
	return (double)rss * sysconf(_SC_PAGESIZE) / (1 << 20);
}

/* Requests that logged "hold" (see again_src). */
static atomic_int holding;

static void quiet_sink(const char *fn, const char *rid, const char *stream, const char *msg,
		       size_t len)
{
	if (len == 4 && !memcmp(msg, "hold", 4))
		atomic_fetch_add(&holding, 1);
}

static void release_hook(struct fn *fn)
{
	T.ops->release(&T, fn);
}

static struct fn *deploy(const char *src)
{
	struct fn *fn = calloc(1, sizeof(*fn));
	char dir[512], path[600], err[512];
	FILE *f;

	snprintf(fn->name, sizeof(fn->name), "b%d", nfn++);
	snprintf(dir, sizeof(dir), "%s/%s", tmp, fn->name);
	mkdir(dir, 0755);
	snprintf(path, sizeof(path), "%s/index.js", dir);
	f = fopen(path, "w");
	if (!f)
		exit(2);
	fputs(src, f);
	fclose(f);
	atomic_init(&fn->refs, 1);
	strcpy(fn->entry, "index.js");
	fn->dir = strdup(dir);
	if (T.ops->prepare(&T, fn, err, sizeof(err))) {
		fprintf(stderr, "deploy failed: %s\n", err);
		exit(2);
	}
	return fn;
}

struct waiter {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int done;
	uint64_t t_done;
};

static void on_done(struct inv *inv)
{
	struct waiter *w = inv->gw;
	uint64_t t = now_ns();

	pthread_mutex_lock(&w->lock);
	w->t_done = t;
	w->done = 1;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

/* One request; returns its latency in microseconds (or -1 for a non-200 answer). */
static double request_path(struct fn *fn, const char *path, int *cold)
{
	struct waiter w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0 };
	struct inv *inv = calloc(1, sizeof(*inv));
	char url[256];
	uint64_t t0;
	double us;

	inv->fn = fn_ref(fn);
	strcpy(inv->request_id, "bench");
	inv->req.method = strdup("GET");
	inv->req.path = strdup(path);
	inv->req.query = strdup("");
	snprintf(url, sizeof(url), "http://bench.test%s", path);
	inv->req.url = strdup(url);
	inv->on_done = on_done;
	inv->gw = &w;
	t0 = now_ns();
	T.ops->invoke(&T, inv);
	pthread_mutex_lock(&w.lock);
	while (!w.done)
		pthread_cond_wait(&w.cond, &w.lock);
	pthread_mutex_unlock(&w.lock);
	us = (w.t_done - t0) / 1e3;
	if (inv->resp.status != 200) {
		fprintf(stderr, "request failed: %d %.*s\n", inv->resp.status,
			(int)inv->resp.body_len, inv->resp.body ? inv->resp.body : "");
		us = -1;
	}
	if (cold)
		*cold = inv->cold;
	inv_free(inv);
	return us;
}

static double request(struct fn *fn, int *cold)
{
	return request_path(fn, "/hello", cold);
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

struct dist {
	double p50, p99, min, max;
	int n;
};

static struct dist summarize(double *v, int n)
{
	struct dist d = { 0 };

	qsort(v, n, sizeof(*v), cmp_double);
	d.n = n;
	d.min = v[0];
	d.max = v[n - 1];
	d.p50 = v[n / 2];
	d.p99 = v[(int)(n * 0.99) < n ? (int)(n * 0.99) : n - 1];
	return d;
}

/*
 * The pool is refilled between requests; give the worker 3 ms to do it, as a real host
 * gets between cold starts, and count the misses anyway. On an idle host the gap is
 * sleep (the CPU goes cold: this VM's vCPUs then run the next request about twice as
 * slowly); on a busy host it is filled with warm requests to another tenant.
 */

static void let_pool_refill(struct fn *hot)
{
	uint64_t until = now_ns() + 3000000;

	if (!hot) {
		usleep(3000);
		return;
	}
	while (now_ns() < until)
		request(hot, NULL);
}

static const char small_src[] =
	"export default { async fetch(request, env, ctx) {\n"
	"  const url = new URL(request.url);\n"
	"  return new Response(`Hello from ${request.method} ${url.pathname}`);\n} };\n";

/* Cold starts, each of a function deployed for it. */
static struct dist bench_cold(const char *src, int n, struct fn *hot)
{
	double *v = calloc(n, sizeof(*v));
	struct fn *fn;
	struct dist d;
	int i, cold;

	for (i = 0; i < n; i++) {
		fn = deploy(src);
		let_pool_refill(hot);
		v[i] = request(fn, &cold);
		if (!cold || v[i] < 0)
			fprintf(stderr, "sample %d was not a good cold start\n", i);
		T.ops->retire(&T, fn);
		fn_unref(fn);
	}
	d = summarize(v, n);
	free(v);
	return d;
}

/* A function whose /wait holds its instance for 100 ms, so the next request starts
 * another instance. */
static const char again_src[] =
	"export default { async fetch(request, env, ctx) {\n"
	"  const url = new URL(request.url);\n"
	"  if (url.pathname === '/wait') {\n"
	"    console.log('hold'); await new Promise((r) => setTimeout(r, 100)); }\n"
	"  return new Response(`Hello from ${request.method} ${url.pathname}`);\n} };\n";

static void *wait_request(void *fn)
{
	request_path(fn, "/wait", NULL);
	return NULL;
}

/* Starts `n` requests that keep `n` instances busy for 100 ms; returns once they all
 * run (at most 1 s). */
static void hold_instances(struct fn *fn, pthread_t *t, int n)
{
	int i, want = atomic_load(&holding) + n;

	for (i = 0; i < n; i++)
		pthread_create(&t[i], NULL, wait_request, fn);
	for (i = 0; i < 1000 && atomic_load(&holding) < want; i++)
		usleep(1000);
}

/*
 * The third cold start of a function, with the first two instances busy: the tier
 * remade the function's code caches after the second one's request, as it does for
 * every function that cold-starts more than once (scale-out, eviction).
 */
static struct dist bench_cold_again(int n)
{
	double *v = calloc(n, sizeof(*v));
	pthread_t t[2];
	struct fn *fn;
	struct dist d;
	int i, cold;

	for (i = 0; i < n; i++) {
		fn = deploy(again_src);
		request(fn, NULL);
		hold_instances(fn, t, 1);
		request(fn, NULL);
		pthread_join(t[0], NULL);
		hold_instances(fn, t, 2);
		v[i] = request(fn, &cold);
		if (!cold || v[i] < 0)
			fprintf(stderr, "sample %d was not a good cold start\n", i);
		pthread_join(t[0], NULL);
		pthread_join(t[1], NULL);
		T.ops->retire(&T, fn);
		fn_unref(fn);
	}
	d = summarize(v, n);
	free(v);
	return d;
}

static struct dist bench_warm(int n)
{
	double *v = calloc(n, sizeof(*v));
	struct fn *fn = deploy(small_src);
	struct dist d;
	int i;

	request(fn, NULL);
	for (i = 0; i < n; i++)
		v[i] = request(fn, NULL);
	T.ops->retire(&T, fn);
	fn_unref(fn);
	d = summarize(v, n);
	free(v);
	return d;
}

/* About 70 KB of router-shaped code: many handlers, tables and helpers. */
static char *bundle_src(void)
{
	struct strbuf sb = STRBUF_INIT;
	int i;

	sb_adds(&sb, "const routes = new Map();\n");
	for (i = 0; sb.len < 70 * 1024; i++)
		sb_printf(&sb,
			  "function handler%d(req, params) {\n"
			  "  const parts = params.path.split('/').filter(Boolean);\n"
			  "  const out = { id: %d, name: 'handler%d', parts,\n"
			  "    n: parts.length * %d };\n"
			  "  if (out.n > 1000000) throw new Error('unreachable %d');\n"
			  "  return new Response(JSON.stringify(out), { headers: "
			  "{ 'content-type': 'application/json' } });\n}\n"
			  "routes.set('/r%d', handler%d);\n", i, i, i, i, i, i, i);
	sb_adds(&sb,
		"export default { async fetch(request) {\n"
		"  const url = new URL(request.url);\n"
		"  const h = routes.get(url.pathname) || (() => new Response('Hello'));\n"
		"  return h(request, { path: url.pathname });\n} };\n");
	return sb_detach(&sb, NULL);
}

static unsigned long metric(const char *name);

/* Idle tenants are collected by the worker a second after their last request; density
 * is measured in that steady state. Bounded: at most two minutes. */
static void wait_idle_trims(void)
{
	int i;

	for (i = 0; i < 1200 && metric("stoke_isolate_trim_pending"); i++)
		usleep(100000);
}

struct density {
	int tenants;		/* deployed and invoked once */
	long live;		/* still live: the tier caps isolates by vm.max_map_count */
	double rss_mib, per_tenant_kib;
};

static struct fn **live;
static int nlive;

static struct density grow_to(int target, double rss0)
{
	struct density d;

	for (; nlive < target; nlive++) {
		live[nlive] = deploy(small_src);
		request(live[nlive], NULL);
	}
	wait_idle_trims();
	d.tenants = target;
	d.live = (long)metric("stoke_isolate_live");
	d.rss_mib = rss_mib();
	d.per_tenant_kib = (d.rss_mib - rss0) * 1024 / (d.live > 0 ? d.live : 1);
	return d;
}

static void drop_live(void)
{
	int i;

	for (i = 0; i < nlive; i++) {
		T.ops->retire(&T, live[i]);
		fn_unref(live[i]);
	}
	nlive = 0;
}

#define CHURN_STEPS 10

static void churn(int n, double *rss)
{
	struct fn *fn;
	int i;

	for (i = 0; i < n; i++) {
		fn = deploy(small_src);
		request(fn, NULL);
		T.ops->retire(&T, fn);
		fn_unref(fn);
		if ((i + 1) % (n / CHURN_STEPS) == 0)
			rss[(i + 1) / (n / CHURN_STEPS) - 1] = rss_mib();
	}
}

static void print_dist(const char *name, struct dist d, const char *target)
{
	printf("%-36s %6d %9.3f %9.3f %9.3f  %s\n", name, d.n, d.p50 / 1e3, d.p99 / 1e3,
	       d.max / 1e3, target);
}

static void json_dist(FILE *f, const char *name, struct dist d, int last)
{
	fprintf(f, "    \"%s\": {\"samples\": %d, \"p50_ms\": %.4f, \"p99_ms\": %.4f, "
		"\"min_ms\": %.4f, \"max_ms\": %.4f}%s\n", name, d.n, d.p50 / 1e3, d.p99 / 1e3,
		d.min / 1e3, d.max / 1e3, last ? "" : ",");
}

static void json_density(FILE *f, struct density d, int last)
{
	fprintf(f, "    {\"tenants\": %d, \"live\": %ld, \"rss_mib\": %.1f, "
		"\"kib_per_live_tenant\": %.1f}%s\n", d.tenants, d.live, d.rss_mib,
		d.per_tenant_kib, last ? "" : ",");
}

/* The value of a sample line "NAME VALUE" (not its "# TYPE NAME gauge" line). */
static unsigned long metric(const char *name)
{
	struct strbuf m = STRBUF_INIT;
	char line[128];
	const char *p;
	unsigned long v = 0;

	T.ops->metrics(&T, &m);
	snprintf(line, sizeof(line), "\n%s ", name);
	p = m.buf ? strstr(m.buf, line) : NULL;
	if (p)
		v = strtoul(p + strlen(line), NULL, 10);
	sb_free(&m);
	return v;
}

/* Everything one run measures. */
struct results {
	struct dist cold, cold_busy, cold_again, warm, bundle;
	struct density d1, d2;
	double rss0, churn_rss[CHURN_STEPS];
	unsigned long misses, live_max;
	size_t bundle_bytes;
	int n, tenants;
};

static void print_table(const struct results *r)
{
	int i;

	printf("\nstoke isolate tier (V8 10.2, 1 worker thread, pooled isolates, runtime "
	       "snapshot, code cache)\n\n");
	printf("%-36s %6s %9s %9s %9s  %s\n", "latency, request in -> response out", "n",
	       "p50 ms", "p99 ms", "max ms", "target");
	print_dist("cold start, small fn, idle host", r->cold, "p50 <= 0.4, p99 <= 1.1");
	print_dist("cold start, small fn, busy host", r->cold_busy, "p50 <= 0.4, p99 <= 1.1");
	print_dist("3rd cold start of a small fn", r->cold_again, "");
	print_dist("cold start, 70 KB bundle, idle host", r->bundle, "");
	print_dist("warm request", r->warm, "");
	printf("pool misses during cold starts: %lu of %d\n\n", r->misses, 2 * r->n + 20);
	printf("%-12s %8s %9s %12s   (live isolates capped at %lu by vm.max_map_count)\n",
	       "tenants", "live", "RSS MiB", "KiB/live", r->live_max);
	printf("%-12d %8ld %9.1f %12.1f   target <= 1024\n", r->d1.tenants, r->d1.live,
	       r->d1.rss_mib, r->d1.per_tenant_kib);
	printf("%-12d %8ld %9.1f %12.1f   target <= 1024\n", r->d2.tenants, r->d2.live,
	       r->d2.rss_mib, r->d2.per_tenant_kib);
	printf("\ncreate + retire %d tenants, RSS MiB every %d:", r->tenants,
	       r->tenants / CHURN_STEPS);
	for (i = 0; i < CHURN_STEPS; i++)
		printf(" %.0f", r->churn_rss[i]);
	printf("\n");
}

static int write_json(const char *path, const struct results *r)
{
	FILE *f = fopen(path, "w");
	int i;

	if (!f) {
		perror(path);
		return -1;
	}
	fprintf(f, "{\n  \"tier\": \"isolate\",\n  \"workers\": 1,\n  \"latency\": {\n");
	json_dist(f, "cold_start_small_idle_host", r->cold, 0);
	json_dist(f, "cold_start_small_busy_host", r->cold_busy, 0);
	json_dist(f, "cold_start_third_instance_small", r->cold_again, 0);
	json_dist(f, "cold_start_bundle_70k", r->bundle, 0);
	json_dist(f, "warm", r->warm, 1);
	fprintf(f, "  },\n  \"pool_misses\": %lu,\n  \"bundle_bytes\": %zu,\n", r->misses,
		r->bundle_bytes);
	fprintf(f, "  \"density\": [\n");
	json_density(f, r->d1, 0);
	json_density(f, r->d2, 1);
	fprintf(f, "  ],\n  \"live_max\": %lu,\n", r->live_max);
	fprintf(f, "  \"baseline_rss_mib\": %.1f,\n  \"churn\": {\"tenants\": %d, "
		"\"rss_mib_every_%d\": [", r->rss0, r->tenants, r->tenants / CHURN_STEPS);
	for (i = 0; i < CHURN_STEPS; i++)
		fprintf(f, "%.1f%s", r->churn_rss[i], i + 1 < CHURN_STEPS ? ", " : "");
	fprintf(f, "]}\n}\n");
	return fclose(f);
}

static void run_latency(struct results *r)
{
	struct fn *hot;
	char *big;

	bench_cold(small_src, 20, NULL);
	r->cold = bench_cold(small_src, r->n, NULL);
	hot = deploy(small_src);
	r->cold_busy = bench_cold(small_src, r->n, hot);
	T.ops->retire(&T, hot);
	fn_unref(hot);
	r->misses = metric("stoke_isolate_pool_misses_total");
	r->cold_again = bench_cold_again(r->n / 4 > 100 ? r->n / 4 : 100);
	r->warm = bench_warm(r->n);
	big = bundle_src();
	r->bundle_bytes = strlen(big);
	r->bundle = bench_cold(big, r->n / 4 > 100 ? r->n / 4 : 100, NULL);
	free(big);
}

static void run_density(struct results *r)
{
	wait_idle_trims();
	r->rss0 = rss_mib();
	live = calloc(r->tenants, sizeof(*live));
	r->d1 = grow_to(r->tenants / 10, r->rss0);
	r->d2 = grow_to(r->tenants, r->rss0);
	r->live_max = metric("stoke_isolate_live_max");
	drop_live();
	churn(r->tenants, r->churn_rss);
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
	struct results r = { .n = 1000, .tenants = 10000 };
	const char *out = "bench/results/isolate.json";
	int opt;

	while ((opt = getopt(argc, argv, "n:t:o:")) != -1) {
		if (opt == 'n')
			r.n = atoi(optarg);
		else if (opt == 't')
			r.tenants = atoi(optarg);
		else if (opt == 'o')
			out = optarg;
	}
	snprintf(tmp, sizeof(tmp), "/tmp/stoke-iso-bench-XXXXXX");
	if (!mkdtemp(tmp))
		return 2;
	T.data_dir = tmp;
	T.memory_budget = 64ull << 30;
	fnlog_set_sink(quiet_sink);
	fn_set_release_hook(release_hook);
	if (T.ops->start(&T))
		return 2;
	usleep(50000);
	run_latency(&r);
	run_density(&r);
	print_table(&r);
	T.ops->stop(&T);
	remove_tree(tmp);
	return write_json(out, &r) ? 1 : 0;
}
