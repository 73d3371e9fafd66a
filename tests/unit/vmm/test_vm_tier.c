/*
 * vm_tier_ops end to end: a Python handler deployed through prepare(), invoked through
 * invoke() on the tier's worker threads, warm reuse, crash, exit and timeout handling,
 * metrics. Needs /dev/kvm, stoke-vmm ($STOKE_VMM) and the python3 root file system.
 */
#include "check.h"
#include "common/invoke.h"
#include "common/strbuf.h"
#include "vmm/vm_proc.h"

#include <errno.h>
#include <semaphore.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <unistd.h>

#define SKIP 77

static const char handler_py[] =
	"import os, sys\n"
	"count = 0\n"
	"def handler(event, context):\n"
	"    global count\n"
	"    count += 1\n"
	"    p = event['path']\n"
	"    if p == '/crash':\n"
	"        import ctypes; ctypes.string_at(0)\n"
	"    if p == '/exit':\n"
	"        print('bye', file=sys.stderr); os._exit(3)\n"
	"    if p == '/raise':\n"
	"        raise ValueError('boom')\n"
	"    if p == '/loop':\n"
	"        while True: pass\n"
	"    if p == '/bin':\n"
	"        return bytes(range(256))\n"
	"    h = event['headers'].get('x-multi', '')\n"
	"    q = ','.join(event['query'].get('a', []))\n"
	"    return {'statusCode': 201, 'headers': {'x-count': str(count)},\n"
	"            'body': f\"{context.function_name} {p} {q} {h} {event['body']}\"}\n";

static sem_t done_sem;

static void on_done(struct inv *inv)
{
	(void)inv;
	sem_post(&done_sem);
}

static struct inv *run(struct tier *t, struct fn *fn, const char *path, const char *query)
{
	struct inv *inv = calloc(1, sizeof(*inv));
	struct timespec ts;
	static int n;

	snprintf(inv->request_id, sizeof(inv->request_id), "req-%d", ++n);
	inv->fn = fn_ref(fn);
	inv->req.method = strdup("POST");
	inv->req.path = strdup(path);
	inv->req.query = strdup(query);
	inv->req.url = strdup("http://hello.localhost/");
	inv->req.headers = calloc(2, sizeof(struct kv));
	inv->req.nheaders = 2;
	for (int i = 0; i < 2; i++) {
		inv->req.headers[i].name = strdup("x-multi");
		inv->req.headers[i].value = strdup(i ? "b" : "a");
		inv->req.headers[i].name_len = 7;
		inv->req.headers[i].value_len = 1;
	}
	inv->req.body = strdup("hi");
	inv->req.body_len = 2;
	inv->on_done = on_done;
	t->ops->invoke(t, inv);
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 60;
	if (sem_timedwait(&done_sem, &ts)) {
		fprintf(stderr, "invocation %s did not finish\n", path);
		exit(1);
	}
	return inv;
}

static const char *header(struct inv *inv, const char *name)
{
	for (size_t i = 0; i < inv->resp.nheaders; i++)
		if (!strcmp(inv->resp.headers[i].name, name))
			return inv->resp.headers[i].value;
	return "";
}

static struct fn *make_fn(const char *dir)
{
	struct fn *fn = calloc(1, sizeof(*fn));

	atomic_init(&fn->refs, 1);
	strcpy(fn->name, "hello");
	fn->version = 1;
	fn->tier = TIER_VM;
	strcpy(fn->runtime, "python3");
	strcpy(fn->entry, "handler.py");
	fn->dir = strdup(dir);
	fn->limits.wall_ms = 1500;
	fn->limits.memory_mb = 128;
	fn->limits.tmp_mb = 8;
	return fn;
}

static void test_requests(struct tier *t, struct fn *fn)
{
	struct inv *inv;

	inv = run(t, fn, "/a", "a=1&a=2");
	CHECK(inv->resp.status == 201);
	CHECK(inv->cold == 1);
	CHECK(inv->resp.body && !strcmp(inv->resp.body, "hello /a 1,2 a, b hi"));
	CHECK_STR(header(inv, "x-count"), "1");
	inv_free(inv);

	inv = run(t, fn, "/b", "");
	CHECK(inv->resp.status == 201);
	CHECK(inv->cold == 0);		/* warm reuse of the same VM */
	CHECK(inv->cpu_ns > 0 && inv->cpu_ns < 1000000000ULL);
	CHECK_STR(header(inv, "x-count"), "2");
	inv_free(inv);

	inv = run(t, fn, "/bin", "");
	CHECK(inv->resp.status == 200 && inv->resp.body_len == 256);
	CHECK(inv->resp.body && (unsigned char)inv->resp.body[255] == 255);
	inv_free(inv);

	inv = run(t, fn, "/raise", "");
	CHECK(inv->resp.status == 500);	/* handler exception: the VM stays */
	inv_free(inv);
}

static void test_failures(struct tier *t, struct fn *fn)
{
	struct inv *inv;

	inv = run(t, fn, "/crash", "");
	CHECK(inv->resp.status == 502);
	CHECK(inv->resp.error_kind && !strcmp(inv->resp.error_kind, "crash"));
	CHECK(inv->resp.body && strstr(inv->resp.body, "signal 11"));
	inv_free(inv);

	inv = run(t, fn, "/a", "");
	CHECK(inv->resp.status == 201 && inv->cold == 1);	/* a fresh VM */
	CHECK_STR(header(inv, "x-count"), "1");
	inv_free(inv);

	inv = run(t, fn, "/exit", "");
	CHECK(inv->resp.status == 502);
	CHECK(inv->resp.body && strstr(inv->resp.body, "status 3"));
	inv_free(inv);

	inv = run(t, fn, "/loop", "");
	CHECK(inv->resp.status == 504);
	CHECK(inv->resp.error_kind && !strcmp(inv->resp.error_kind, "wall_limit"));
	inv_free(inv);
}

/* With STOKE_VM_IDLE_TTL_S=1 (set by main), an idle VM is stopped within seconds. */
static void test_idle_reaping(struct tier *t, struct fn *fn)
{
	struct strbuf m = STRBUF_INIT;
	int i, gone = 0;

	inv_free(run(t, fn, "/a", ""));
	for (i = 0; i < 50 && !gone; i++) {
		usleep(100000);
		t->ops->metrics(t, &m);
		gone = m.buf && strstr(m.buf, "stoke_vm_live 0\n") != NULL;
		sb_free(&m);
	}
	CHECK(gone);
}

/* The runtime's launch is the function's without its task and environment. */
static void test_launch_without(void)
{
	static const char *const drop[] = { "--task=", "--env=", NULL };
	static const char *const add[] = { "--env=STOKE_SNAPSHOT=runtime", NULL };
	struct vm_launch src = { .argv = { "vmm", "--task=/t", "--mem-mb=256", "--env=A=1",
					   "--env=B=2", "--", "/usr/bin/python3", "--env=x" },
				 .argc = 8, .mem_mb = 256, .wall_ms = 5 };
	struct vm_launch l;

	CHECK(vm_launch_without(&l, &src, drop, add) == 0);
	CHECK(l.argc == 6 && l.mem_mb == 256 && l.wall_ms == 5);
	CHECK_STR(l.argv[0], "vmm");
	CHECK_STR(l.argv[1], "--mem-mb=256");
	CHECK_STR(l.argv[2], "--env=STOKE_SNAPSHOT=runtime");
	CHECK_STR(l.argv[3], "--");
	CHECK_STR(l.argv[5], "--env=x");	/* the guest's own arguments stay */
	CHECK(l.argv[6] == NULL);
}

int main(void)
{
	const char *vmm = getenv("STOKE_VMM"), *home = getenv("HOME");
	char dir[] = "/tmp/stoke-test-vmtier-XXXXXX", path[1024], rootfs[512];
	struct strbuf m = STRBUF_INIT;
	struct tier t = { 0 };
	struct fn *fn;
	char err[256] = "";
	FILE *f;

	test_launch_without();
	snprintf(rootfs, sizeof(rootfs), "%s/.cache/stoke/rootfs", home ? home : "/root");
	snprintf(path, sizeof(path), "%s/python3/usr/bin/python3", rootfs);
	if (!vmm || access("/dev/kvm", R_OK | W_OK) || access(path, F_OK)) {
		printf("skipped: needs /dev/kvm, $STOKE_VMM and %s\n", path);
		return SKIP;
	}
	sem_init(&done_sem, 0, 0);
	setenv("STOKE_VM_IDLE_TTL_S", "1", 1);
	mkdtemp(dir);
	chmod(dir, 0755);	/* the jailed VMM reads it as an unprivileged user */
	snprintf(path, sizeof(path), "%s/handler.py", dir);
	f = fopen(path, "w");
	fputs(handler_py, f);
	fclose(f);
	t.ops = &vm_tier_ops;
	t.rootfs_dir = rootfs;
	t.vmm_path = vmm;
	t.nworkers = 2;
	t.memory_budget = 1ULL << 30;
	CHECK(t.ops->start(&t) == 0);
	fn = make_fn(dir);
	CHECK(t.ops->prepare(&t, fn, err, sizeof(err)) == 0);
	test_requests(&t, fn);
	test_failures(&t, fn);
	t.ops->metrics(&t, &m);
	CHECK(m.buf && strstr(m.buf, "stoke_vm_boots_total 3"));
	CHECK(m.buf && strstr(m.buf, "stoke_vm_timeouts_total 1"));
	sb_free(&m);
	test_idle_reaping(&t, fn);

	strcpy(fn->entry, "missing.py");
	{
		struct fn *bad = make_fn(dir);

		strcpy(bad->entry, "missing.py");
		CHECK(t.ops->prepare(&t, bad, err, sizeof(err)) == -ENOENT);
		CHECK(strstr(err, "missing.py") != NULL);
		strcpy(bad->runtime, "ruby");
		free(bad->dir);
		free(bad);
	}
	t.ops->retire(&t, fn);
	t.ops->release(&t, fn);
	t.ops->stop(&t);
	unlink(path);
	rmdir(dir);
	return check_done();
}
