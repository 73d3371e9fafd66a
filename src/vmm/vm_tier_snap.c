/* Snapshots in the VM tier: see vm_tier_snap.h. */
#include "vm_tier_snap.h"
#include "frame.h"
#include "vmsnap.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* A python3 runtime reaches its first read in well under a second; this is slack. */
#define DUMP_WAIT_MS 30000

/* 1 when the dump is whole, -ENOTSUP when the VMM took none, else 0. */
static int dump_complete(const char *path)
{
	char magic[8];
	int fd = open(path, O_RDONLY | O_CLOEXEC), r = 0;

	if (fd < 0)
		return 0;
	if (pread(fd, magic, sizeof(magic), 0) == (ssize_t)sizeof(magic)) {
		if (!memcmp(magic, VMSNAP_DUMP_MAGIC, sizeof(magic)))
			r = 1;
		else if (!memcmp(magic, VMSNAP_DUMP_NONE, sizeof(magic)))
			r = -ENOTSUP;
	}
	close(fd);
	return r;
}

/*
 * Drains the guest's output into the function's log (so it never blocks on a full
 * pipe, and what the import printed is kept) until the dump is whole.
 */
int vm_tier_snap_wait_dump(struct vm_proc *p, const char *dump, const struct vm_logto *to,
			   const atomic_int *cancel)
{
	int waited, done, rounds;

	for (waited = 0; waited < DUMP_WAIT_MS; waited += 5) {
		if (cancel && atomic_load(cancel))
			return -ECANCELED;
		done = dump_complete(dump);
		if (done) {
			vm_proc_flush_output(p, to);
			return done > 0 ? 0 : done;
		}
		if (vm_proc_exited(p)) {
			/* The last of its stderr (a traceback) may still be in the pipes;
			 * bounded, as a child of the VMM could hold them open. */
			for (rounds = 0; rounds < 100 && vm_proc_pump(p, 20, to) > 0; rounds++)
				;
			vm_proc_flush_output(p, to);
			return -ECHILD;
		}
		vm_proc_pump(p, 5, to);
	}
	return -ETIMEDOUT;
}

/* Sends one frame on the VM's (non-blocking) channel. */
static int send_frame(int fd, uint8_t type, const char *payload)
{
	size_t len = strlen(payload), off = 0;
	uint8_t hdr[FRAME_HDR_SIZE];
	struct pollfd pf = { fd, POLLOUT, 0 };
	ssize_t n;

	frame_hdr_pack(hdr, (uint32_t)len, type);
	while (off < FRAME_HDR_SIZE + len) {
		if (off < FRAME_HDR_SIZE)
			n = write(fd, hdr + off, FRAME_HDR_SIZE - off);
		else
			n = write(fd, payload + off - FRAME_HDR_SIZE, len + FRAME_HDR_SIZE - off);
		if (n < 0 && errno == EAGAIN && poll(&pf, 1, DUMP_WAIT_MS) > 0)
			continue;
		if (n < 0 && errno != EINTR)
			return -errno;
		off += n > 0 ? (size_t)n : 0;
	}
	return 0;
}

/*
 * The load frame for a runtime restored to import a function: the function's
 * environment as its launch gives it (--env=NAME=VALUE options).
 */
static char *load_frame(const struct vm_launch *l)
{
	cJSON *o = cJSON_CreateObject(), *env = cJSON_AddObjectToObject(o, "env");
	char name[256], *text;
	const char *eq;
	int i;

	for (i = 0; env && i < l->argc && strcmp(l->argv[i], "--"); i++) {
		if (strncmp(l->argv[i], "--env=", 6) || !(eq = strchr(l->argv[i] + 6, '=')))
			continue;
		snprintf(name, sizeof(name), "%.*s", (int)(eq - l->argv[i] - 6), l->argv[i] + 6);
		cJSON_AddStringToObject(env, name, eq + 1);
	}
	text = env ? cJSON_PrintUnformatted(o) : NULL;
	cJSON_Delete(o);
	return text;
}

/*
 * Starts l and waits until the VMM wrote the dump, after sending load (a load frame)
 * when given; the VM is stopped either way. Its output goes to `to` (NULL: dropped).
 */
static int run_to_dump(const struct vm_launch *l, const char *dump, const char *load,
		       const struct vm_logto *to, const atomic_int *cancel, const char *vmm_path,
		       char *why, size_t len)
{
	struct vm_proc p;
	int r;

	r = vm_proc_spawn(&p, l, vmm_path);
	if (r)
		return snprintf(why, len, "starting the VM: %s", strerror(-r)), r;
	p.tail[0] = '\0';
	if (load)
		r = send_frame(p.chan, FRAME_LOAD, load);
	r = r ? r : vm_tier_snap_wait_dump(&p, dump, to, cancel);
	if (r == -ECANCELED)
		snprintf(why, len, "the daemon is stopping");
	else if (r == -ECHILD)
		snprintf(why, len, "%s", p.tail[0] ? p.tail : "the runtime exited at start");
	else if (r)
		snprintf(why, len, "the VM did not reach its first read: %s", strerror(-r));
	vm_proc_kill(&p);
	return r;
}

static int boot_and_dump(struct vm_tier_snap *s, const struct vm_launch *boot,
			 const struct vm_logto *to, const char *vmm_path, char *why, size_t len)
{
	char opt[1100];
	const char *opts[] = { opt, NULL };
	struct vm_launch l;
	int r;

	snprintf(opt, sizeof(opt), "--snapshot-dump=%s", s->dump);
	r = vm_launch_with(&l, boot, opts);
	if (r)
		return snprintf(why, len, "starting the VM: %s", strerror(-r)), r;
	return run_to_dump(&l, s->dump, NULL, to, s->cancel, vmm_path, why, len);
}

static int make_launches(struct vm_tier_snap *s, const struct vm_launch *boot)
{
	char restore[1100], store[1100], ws_out[1100], ws[1100];
	const char *plain[] = { restore, store, NULL };
	const char *record[] = { restore, store, ws_out, NULL };
	/*
	 * 4 KiB pages, shared with the page cache: a VM keeps only what it wrote private
	 * (--snap-huge would copy whole 2 MiB regions, ~20 MiB more per VM). A parked shell
	 * takes its guest page faults (~25 us each here) before the request instead.
	 */
	const char *prefetch[] = { restore, store, ws, NULL };
	const char *shell[] = { restore, store, ws, "--snap-touch", NULL };
	int r;

	snprintf(restore, sizeof(restore), "--restore=%s", s->file);
	snprintf(store, sizeof(store), "--snap-store=%s", s->store);
	snprintf(ws_out, sizeof(ws_out), "--ws-out=%s", s->ws_raw);
	snprintf(ws, sizeof(ws), "--snap-ws=%s", s->ws);
	r = vm_launch_with(&s->plain, boot, plain);
	r = r ? r : vm_launch_with(&s->record, boot, record);
	r = r ? r : vm_launch_with(&s->shell, boot, shell);
	return r ? r : vm_launch_with(&s->prefetch, boot, prefetch);
}

static int top_layer(struct vm_tier_snap *s)
{
	struct snap_file f;
	char hex[65];
	int r = snap_file_read(s->file, &f, NULL);

	if (r)
		return r;
	s->top = f.st.layers[0];
	snap_id_hex(&s->top, hex);
	/* A function on a runtime restores from a split image (snap_image_open_chain). */
	snprintf(s->image, sizeof(s->image), "%s/images/%s.%s", s->store, hex,
		 f.st.nlayers >= 3 ? "top" : "img");
	snap_file_release(&f);
	return 0;
}

static int snap_paths(struct vm_tier_snap *s, const char *dir, const char *key, char *why,
		      size_t len)
{
	const atomic_int *cancel = s->cancel;	/* the owner's, not the last build's */

	memset(s, 0, sizeof(*s));
	s->cancel = cancel;
	snprintf(s->store, sizeof(s->store), "%s/store", dir);
	snprintf(s->file, sizeof(s->file), "%s/%s.snap", dir, key);
	snprintf(s->dump, sizeof(s->dump), "%s/%s.dump", dir, key);
	snprintf(s->ws_raw, sizeof(s->ws_raw), "%s/%s.wsraw", dir, key);
	if ((mkdir(dir, 0700) < 0 && errno != EEXIST) ||
	    (mkdir(s->store, 0700) < 0 && errno != EEXIST))
		return snprintf(why, len, "%s: %s", dir, strerror(errno)), -errno;
	return 0;
}

/* After the build (r): the launches that restore from the snapshot. */
static int snap_finish(struct vm_tier_snap *s, const struct vm_launch *boot, int r)
{
	unlink(s->dump);
	if (!r)
		r = top_layer(s);
	if (!r)
		r = vmsnap_ws_path(s->file, s->store, s->ws, sizeof(s->ws));
	if (!r)
		r = make_launches(s, boot);
	s->ready = !r;
	return r;
}

int vm_tier_snap_take(struct vm_tier_snap *s, const struct vm_launch *boot, const char *dir,
		      const char *key, const struct vm_logto *to, const char *vmm_path,
		      char *why, size_t len)
{
	int r = snap_paths(s, dir, key, why, len);

	if (r)
		return r;
	r = boot_and_dump(s, boot, to, vmm_path, why, len);
	r = r ? r : vmsnap_build(s->dump, s->store, s->file, why, len);
	return snap_finish(s, boot, r);
}

static void count(struct vm_snap_stats *st, enum vm_layer_kind k, int hit, uint64_t bytes)
{
	atomic_fetch_add(hit ? &st->hit[k] : &st->miss[k], 1);
	atomic_fetch_add(&st->bytes[k], bytes);
}

int vm_tier_snap_take_on(struct vm_tier_snap *s, const struct vm_tier_rt *rt,
			 const struct vm_launch *launch, const char *dir, const char *key,
			 const struct vm_logto *to, const char *vmm_path, struct vm_snap_stats *st,
			 char *why, size_t len)
{
	char restore[1200], store[1200], dump[1100];
	const char *opts[] = { restore, store, dump, NULL };
	struct vmsnap_build_info info;
	struct vm_launch l;
	char *load;
	int r = snap_paths(s, dir, key, why, len);

	if (r)
		return r;
	snprintf(restore, sizeof(restore), "--restore=%s", rt->file);
	snprintf(store, sizeof(store), "--snap-store=%s", rt->store);
	snprintf(dump, sizeof(dump), "--snapshot-dump=%s", s->dump);
	load = load_frame(launch);
	r = load ? vm_launch_with(&l, launch, opts) : -ENOMEM;
	if (r)
		snprintf(why, len, "starting the VM: %s", strerror(-r));
	r = r ? r : run_to_dump(&l, s->dump, load, to, s->cancel, vmm_path, why, len);
	free(load);
	r = r ? r : vmsnap_build_info(s->dump, s->store, s->file, &info, why, len);
	if (!r) {
		count(st, VM_LAYER_FUNCTION, info.layer[0].existed, info.layer[0].bytes_new);
		count(st, VM_LAYER_IMAGE, !info.image_built, 0);
	}
	s->stats = st;
	return snap_finish(s, launch, r);
}

/* ---- runtime snapshots ---- */

static const char *launch_opt(const struct vm_launch *l, const char *prefix)
{
	for (int i = 0; i < l->argc && strcmp(l->argv[i], "--"); i++)
		if (!strncmp(l->argv[i], prefix, strlen(prefix)))
			return l->argv[i] + strlen(prefix);
	return NULL;
}

static uint64_t fnv(uint64_t h, const char *s)
{
	for (; *s; s++)
		h = (h ^ (uint8_t)*s) * 0x100000001b3ULL;
	return h;
}

/* A file's identity for the key: a rebuilt VMM or an edited bootstrap is a new runtime. */
static uint64_t fnv_file(uint64_t h, const char *path)
{
	struct stat sb;
	char buf[128];

	if (stat(path, &sb) < 0)
		return fnv(h, "missing");
	snprintf(buf, sizeof(buf), "%lld.%lld.%ld", (long long)sb.st_size,
		 (long long)sb.st_mtim.tv_sec, sb.st_mtim.tv_nsec);
	return fnv(fnv(h, path), buf);
}

/*
 * The key says what the runtime layer depends on: runtime, memory size, root file
 * system, bootstrap, VMM binary and jail; not the function (task, environment).
 */
static int rt_key(struct vm_tier_rt *rt, const struct vm_launch *l, const char *dir)
{
	const char *rootfs = launch_opt(l, "--rootfs="), *rtdir = launch_opt(l, "--runtime=");
	const char *name = rtdir ? strrchr(rtdir, '/') : NULL;
	char path[1100];
	uint64_t h = 0xcbf29ce484222325ULL;

	if (!rootfs || !rtdir || !l->argc)
		return -EINVAL;
	snprintf(path, sizeof(path), "%s/bootstrap.py", rtdir);
	h = fnv(fnv(h, rootfs), rtdir);
	h = fnv_file(fnv_file(h, path), l->argv[0]);
	h = fnv(h, launch_opt(l, "--no-jail") ? "nojail" : "jail");
	snprintf(rt->key, sizeof(rt->key), "%.32s-%um-%016llx", name ? name + 1 : rtdir,
		 l->mem_mb, (unsigned long long)h);
	snprintf(rt->file, sizeof(rt->file), "%s/runtimes/%s.snap", dir, rt->key);
	snprintf(rt->store, sizeof(rt->store), "%s/store", dir);
	snprintf(path, sizeof(path), "%s/runtimes", dir);
	if ((mkdir(dir, 0700) < 0 && errno != EEXIST) ||
	    (mkdir(path, 0700) < 0 && errno != EEXIST) ||
	    (mkdir(rt->store, 0700) < 0 && errno != EEXIST))
		return -errno;
	return 0;
}

/* The snapshot file reads, its chain is whole and verified, and its image opens. */
static int rt_check(const struct vm_tier_rt *rt, struct vm_snap_stats *st, struct snap_id *top,
		    char *why, size_t len)
{
	struct snap_id chain[SNAP_MAX_CHAIN];
	struct snap_err e = { 0 };
	struct snap_store *store = NULL;
	struct snap_image img;
	struct snap_file f;
	int r, n = 0;

	r = snap_file_read(rt->file, &f, &e);
	if (r)
		return snprintf(why, len, "%s", e.msg), r;
	*top = f.st.layers[0];
	r = snap_store_open(rt->store, NULL, &store, &e);
	if (!r && (n = snap_layer_chain(store, top, chain, &e)) < 0)
		r = n;
	if (!r && ((uint32_t)n != f.st.nlayers ||
		   memcmp(chain, f.st.layers, (size_t)n * sizeof(chain[0])))) {
		snprintf(e.msg, sizeof(e.msg), "its layer list is not the store's chain");
		r = -EINVAL;
	}
	if (!r)
		r = snap_image_open(store, top, &img, &e);
	if (!r) {
		count(st, VM_LAYER_IMAGE, !img.built, 0);
		snap_image_close(&img);
	}
	if (r)
		snprintf(why, len, "%s", e.msg[0] ? e.msg : strerror(-r));
	snap_file_release(&f);
	snap_store_close(store);
	return r;
}

/* Boots the runtime with no function: base dump at load, runtime dump at its first read. */
static int rt_build(const struct vm_tier_rt *rt, const struct vm_launch *fn_launch,
		    const char *vmm_path, struct vm_snap_stats *st, char *why, size_t len)
{
	static const char *const drop[] = { "--task=", "--env=", NULL };
	char base[1200], dump[1200], base_opt[1300], dump_opt[1300];
	const char *opts[] = { "--env=STOKE_CHANNEL_FD=3", "--env=STOKE_SNAPSHOT=runtime",
			       base_opt, dump_opt, NULL };
	struct vmsnap_build_info info;
	struct vm_launch l;
	int r;

	snprintf(base, sizeof(base), "%s.%d.base.dump", rt->file, (int)getpid());
	snprintf(dump, sizeof(dump), "%s.%d.dump", rt->file, (int)getpid());
	snprintf(base_opt, sizeof(base_opt), "--snapshot-base-dump=%s", base);
	snprintf(dump_opt, sizeof(dump_opt), "--snapshot-dump=%s", dump);
	r = vm_launch_without(&l, fn_launch, drop, opts);
	if (r)
		snprintf(why, len, "starting the runtime: %s", strerror(-r));
	/* The runtime's own start-up output belongs to no function. */
	r = r ? r : run_to_dump(&l, dump, NULL, NULL, NULL, vmm_path, why, len);
	r = r ? r : vmsnap_build_runtime(base, dump, rt->store, rt->file, &info, why, len);
	if (!r) {
		count(st, VM_LAYER_RUNTIME, info.layer[0].existed, info.layer[0].bytes_new);
		count(st, VM_LAYER_BASE, info.layer[1].existed, info.layer[1].bytes_new);
		count(st, VM_LAYER_IMAGE, !info.image_built, 0);
	}
	unlink(base);
	unlink(dump);
	return r;
}

int vm_tier_rt_get(struct vm_tier_rt *rt, const struct vm_launch *fn_launch, const char *dir,
		   const char *vmm_path, struct vm_snap_stats *st, char *why, size_t len)
{
	struct snap_id top;
	char img[1300], hex[65];
	int r = rt_key(rt, fn_launch, dir);

	if (r)
		return snprintf(why, len, "runtime snapshot directory: %s", strerror(-r)), r;
	if (access(rt->file, F_OK))
		return rt_build(rt, fn_launch, vmm_path, st, why, len);
	memset(&top, 0, sizeof(top));
	r = rt_check(rt, st, &top, why, len);
	if (!r) {
		count(st, VM_LAYER_RUNTIME, 1, 0);
		count(st, VM_LAYER_BASE, 1, 0);
		return 0;
	}
	/* Derived or damaged: both go, so the next deploy builds the runtime afresh. */
	atomic_fetch_add(&st->damaged, 1);
	unlink(rt->file);
	if (!snap_id_is_zero(&top)) {
		snap_id_hex(&top, hex);
		snprintf(img, sizeof(img), "%s/images/%s.img", rt->store, hex);
		unlink(img);
	}
	return -EBADMSG;
}

const struct vm_launch *vm_tier_snap_launch(struct vm_tier_snap *s)
{
	if (!s->ready)
		return NULL;
	/* One access(2), a few microseconds: gc may have removed it, or nobody yet. */
	if (s->stats)
		count(s->stats, VM_LAYER_IMAGE, !access(s->image, F_OK), 0);
	if (atomic_load(&s->ws_ready))
		return &s->prefetch;
	/* One VM records the working set; the others restore without one meanwhile. */
	if (!atomic_exchange(&s->recording, 1))
		return &s->record;
	return &s->plain;
}

const struct vm_launch *vm_tier_snap_shell_launch(struct vm_tier_snap *s)
{
	return s->ready && atomic_load(&s->ws_ready) ? &s->shell : NULL;
}

void vm_tier_snap_tick(struct vm_tier_snap *s)
{
	char why[256];

	if (!s->ready || !atomic_load(&s->recording) || atomic_load(&s->ws_ready))
		return;
	if (vmsnap_ws_commit(s->ws_raw, s->store, why, sizeof(why)) == 0) {
		unlink(s->ws_raw);
		atomic_store(&s->ws_ready, 1);
	}
}

int vm_tier_snap_remove(struct vm_tier_snap *s)
{
	int had = s->ready;

	if (!s->file[0])
		return 0;
	unlink(s->file);
	unlink(s->dump);
	unlink(s->ws_raw);
	s->ready = 0;
	return had;
}

struct roots {
	struct snap_id *id;
	size_t n, cap;
};

static int add_root(struct roots *r, const char *path)
{
	struct snap_file f;

	/* A snapshot that does not read cannot be restored: it pins nothing. */
	if (snap_file_read(path, &f, NULL))
		return 0;
	if (r->n == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 32;
		void *p = realloc(r->id, cap * sizeof(*r->id));

		if (!p) {
			snap_file_release(&f);
			return -ENOMEM;
		}
		r->id = p;
		r->cap = cap;
	}
	r->id[r->n++] = f.st.layers[0];
	snap_file_release(&f);
	return 0;
}

/* A daemon's pid named in a file name, and that daemon is gone. */
static int pid_gone(long pid)
{
	return pid > 0 && pid != getpid() && kill((pid_t)pid, 0) < 0 && errno == ESRCH;
}

/*
 * A version's snapshot is named NAME.VERSION.PID.SEQ.snap after the daemon that took
 * it; once that process is gone nothing restores from it (a restart takes new ones).
 */
static int stale(const char *name)
{
	const char *p = name;
	long pid;
	int dots = 0;

	for (; *p; p++)
		dots += *p == '.';
	if (dots != 4)
		return 0;
	p = strchr(strchr(name, '.') + 1, '.') + 1;
	pid = strtol(p, NULL, 10);
	return pid_gone(pid);
}

/* Removes the file named like snap_path (ending ".snap") with ext instead; 1 if it went. */
static int remove_beside(const char *snap_path, const char *ext)
{
	char path[4200];

	snprintf(path, sizeof(path), "%.*s%s", (int)(strlen(snap_path) - 5), snap_path, ext);
	return !unlink(path);
}

/* Whether a runtime snapshot file (KEY.snap) is one of the keys in use. */
static int key_in_use(const char *name, char (*keys)[96], int nkeys)
{
	size_t n = strlen(name) - 5;

	if (!keys)
		return 1;
	for (int i = 0; i < nkeys; i++)
		if (strlen(keys[i]) == n && !strncmp(keys[i], name, n))
			return 1;
	return 0;
}

static int ends_with(const char *s, size_t n, const char *ext)
{
	size_t e = strlen(ext);

	return n > e && !strcmp(s + n - e, ext);
}

/*
 * A runtime build's dump, KEY.snap.PID.dump or KEY.snap.PID.base.dump (rt_build), whose
 * daemon PID died before it finished: nothing else would ever remove it.
 */
static int rt_dump_stale(const char *name, size_t n)
{
	const char *p = strstr(name, ".snap.");
	char *end;
	long pid;

	if (!p || !ends_with(name, n, ".dump"))
		return 0;
	pid = strtol(p + 6, &end, 10);
	if (end == p + 6 || (strcmp(end, ".dump") && strcmp(end, ".base.dump")))
		return 0;
	return pid_gone(pid);
}

/* Snapshot files under dir: roots, except stale ones, which are removed. */
static int scan_roots(const char *dir, int top, char (*keys)[96], int nkeys,
		      struct roots *roots, uint64_t *removed)
{
	char path[4200];
	struct dirent *d;
	DIR *dp = opendir(dir);
	size_t n;
	int r = 0;

	if (!dp)
		return errno == ENOENT ? 0 : -errno;
	while (!r && (d = readdir(dp))) {
		n = strlen(d->d_name);
		snprintf(path, sizeof(path), "%s/%s", dir, d->d_name);
		/* A dead daemon's build that never made its .snap: nothing removes these
		 * beside it, and a dump is as long as the guest's memory. */
		if (top && (ends_with(d->d_name, n, ".dump") || ends_with(d->d_name, n, ".wsraw")))
			*removed += stale(d->d_name) && !unlink(path);
		if (!top && rt_dump_stale(d->d_name, n))
			*removed += !unlink(path);
		if (!ends_with(d->d_name, n, ".snap"))
			continue;
		if (top && stale(d->d_name) && !unlink(path))
			*removed += 1 + remove_beside(path, ".wsraw") +
				    remove_beside(path, ".dump");
		else if (!top && !key_in_use(d->d_name, keys, nkeys) && !unlink(path))
			(*removed)++;
		else
			r = add_root(roots, path);
	}
	closedir(dp);
	return r;
}

/*
 * Saved state of `state: keep` instances (docs/state.md): NAME/vN/slot-N.snap under the
 * state directory, each naming the layer of one instance's memory. Roots, like the
 * snapshot files; depth counts the directory levels above the files.
 */
static int scan_state_roots(const char *dir, int depth, struct roots *roots)
{
	char path[4200];
	struct dirent *d;
	DIR *dp = opendir(dir);
	size_t n;
	int r = 0;

	if (!dp)
		return errno == ENOENT || errno == ENOTDIR ? 0 : -errno;
	while (!r && (d = readdir(dp))) {
		n = strlen(d->d_name);
		if (d->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, d->d_name);
		if (depth)
			r = scan_state_roots(path, depth - 1, roots);
		else if (n > 5 && !strcmp(d->d_name + n - 5, ".snap"))
			r = add_root(roots, path);
	}
	closedir(dp);
	return r;
}

int vm_tier_snap_collect(const char *dir, const char *state_dir, char (*rt_keys)[96],
			 int nkeys, struct snap_gc_stats *gs, uint64_t *files_removed,
			 char *why, size_t len)
{
	struct roots roots = { 0 };
	struct snap_err e = { 0 };
	struct snap_store *st = NULL;
	char sub[1100];
	int r;

	*files_removed = 0;
	memset(gs, 0, sizeof(*gs));
	if (access(dir, F_OK) && errno == ENOENT)
		return 0;	/* nothing was ever snapshotted here */
	snprintf(sub, sizeof(sub), "%s/runtimes", dir);
	r = scan_roots(dir, 1, rt_keys, nkeys, &roots, files_removed);
	r = r ? r : scan_roots(sub, 0, rt_keys, nkeys, &roots, files_removed);
	r = r ? r : scan_state_roots(state_dir, 2, &roots);
	if (r) {
		free(roots.id);
		return snprintf(why, len, "listing snapshots: %s", strerror(-r)), r;
	}
	snprintf(sub, sizeof(sub), "%s/store", dir);
	r = snap_store_open(sub, NULL, &st, &e);
	r = r ? r : snap_store_gc_roots(st, roots.id, roots.n, gs, &e);
	if (r)
		snprintf(why, len, "%s", e.msg[0] ? e.msg : strerror(-r));
	snap_store_close(st);
	free(roots.id);
	return r;
}
