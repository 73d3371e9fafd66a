/* Snapshots in the VM tier: see vm_tier_snap.h. */
#include "vm_tier_snap.h"
#include "vmsnap.h"

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

static int exited(pid_t pid)
{
	siginfo_t si = { 0 };

	/* WNOWAIT: vm_proc_kill still reaps it. */
	return waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid;
}

/* Keeps the last bytes of the guest's stderr in p->tail, for the deploy's error. */
static void keep_tail(struct vm_proc *p, const char *buf, ssize_t n)
{
	size_t have = strlen(p->tail), room = sizeof(p->tail) - 1;

	if (n <= 0)
		return;
	if ((size_t)n >= room) {
		memcpy(p->tail, buf + (size_t)n - room, room);
		p->tail[room] = '\0';
		return;
	}
	if (have + (size_t)n > room) {
		memmove(p->tail, p->tail + have + (size_t)n - room, room - (size_t)n);
		have = room - (size_t)n;
	}
	memcpy(p->tail + have, buf, (size_t)n);
	p->tail[have + (size_t)n] = '\0';
}

/* Drains the guest's output (so it never blocks on a full pipe) until the dump is whole. */
static int wait_dump(struct vm_proc *p, const char *dump)
{
	struct pollfd pf[2] = { { p->out, POLLIN, 0 }, { p->err, POLLIN, 0 } };
	char buf[4096];
	ssize_t n;
	int waited, i;

	for (waited = 0; waited < DUMP_WAIT_MS; waited += 5) {
		int done = dump_complete(dump);

		if (done)
			return done > 0 ? 0 : done;
		if (exited(p->pid))
			return -ECHILD;
		if (poll(pf, 2, 5) <= 0)
			continue;
		for (i = 0; i < 2; i++) {
			if (!(pf[i].revents & (POLLIN | POLLHUP)))
				continue;
			n = read(pf[i].fd, buf, sizeof(buf));
			if (n <= 0)
				pf[i].fd = -1;
			else if (i == 1)
				keep_tail(p, buf, n);
		}
	}
	return -ETIMEDOUT;
}

static int boot_and_dump(struct vm_tier_snap *s, const struct vm_launch *boot,
			 const char *vmm_path, char *why, size_t len)
{
	char opt[1100];
	const char *opts[] = { opt, NULL };
	struct vm_launch l;
	struct vm_proc p;
	int r;

	snprintf(opt, sizeof(opt), "--snapshot-dump=%s", s->dump);
	r = vm_launch_with(&l, boot, opts);
	r = r ? r : vm_proc_spawn(&p, &l, vmm_path);
	if (r)
		return snprintf(why, len, "starting the VM: %s", strerror(-r)), r;
	p.tail[0] = '\0';
	r = wait_dump(&p, s->dump);
	if (r == -ECHILD)
		snprintf(why, len, "%s", p.tail[0] ? p.tail : "the runtime exited at start");
	else if (r)
		snprintf(why, len, "the VM did not reach its first read: %s", strerror(-r));
	vm_proc_kill(&p);
	return r;
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
	int r = snap_file_read(s->file, &f, NULL);

	if (r)
		return r;
	s->top = f.st.layers[0];
	snap_file_release(&f);
	return 0;
}

int vm_tier_snap_take(struct vm_tier_snap *s, const struct vm_launch *boot, const char *dir,
		      const char *key, const char *vmm_path, char *why, size_t len)
{
	int r;

	memset(s, 0, sizeof(*s));
	snprintf(s->store, sizeof(s->store), "%s/store", dir);
	snprintf(s->file, sizeof(s->file), "%s/%s.snap", dir, key);
	snprintf(s->dump, sizeof(s->dump), "%s/%s.dump", dir, key);
	snprintf(s->ws_raw, sizeof(s->ws_raw), "%s/%s.wsraw", dir, key);
	if ((mkdir(dir, 0700) < 0 && errno != EEXIST) ||
	    (mkdir(s->store, 0700) < 0 && errno != EEXIST))
		return snprintf(why, len, "%s: %s", dir, strerror(errno)), -errno;
	r = boot_and_dump(s, boot, vmm_path, why, len);
	r = r ? r : vmsnap_build(s->dump, s->store, s->file, why, len);
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

const struct vm_launch *vm_tier_snap_launch(struct vm_tier_snap *s)
{
	if (!s->ready)
		return NULL;
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

int vm_tier_snap_collect(const char *store, const struct snap_id *layers, int n)
{
	struct snap_store *st;
	int i, r;

	r = snap_store_open(store, NULL, &st, NULL);
	if (r)
		return r;
	/* -EBUSY: another version's layer still names it (none do: ours are bases). */
	for (i = 0; i < n; i++)
		snap_layer_delete(st, &layers[i], NULL);
	r = snap_store_gc(st, NULL, NULL);
	snap_store_close(st);
	return r;
}
