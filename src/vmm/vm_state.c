/* Kept state of stateful VM functions, daemon side: see vm_state.h. */
#include "vm_state.h"
#include "vm_tier_snap.h"
#include "vmsnap.h"
#include "frame.h"
#include "common/invoke.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int mkdir_one(const char *path)
{
	return mkdir(path, 0700) < 0 && errno != EEXIST ? -errno : 0;
}

/* Removes the plain files of dir, then dir (state directories hold nothing else). */
static void remove_dir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;

	if (!d)
		return;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			unlinkat(dirfd(d), e->d_name, 0);
	closedir(d);
	rmdir(dir);
}

/* A new version starts with fresh state: other versions' directories go. */
static void remove_other_versions(const char *fn_dir, const char *keep)
{
	DIR *d = opendir(fn_dir);
	struct dirent *e;
	char path[4400];

	if (!d)
		return;
	while ((e = readdir(d))) {
		if (e->d_name[0] != 'v' || !strcmp(e->d_name, keep))
			continue;
		snprintf(path, sizeof(path), "%s/%s", fn_dir, e->d_name);
		remove_dir(path);
	}
	closedir(d);
}

static int read_layer(const char *file, struct snap_id *id)
{
	struct snap_file f;
	int r = snap_file_read(file, &f, NULL);

	if (r)
		return r;
	*id = f.st.layers[0];
	snap_file_release(&f);
	return 0;
}

static void init_slot(struct vm_state *st, uint32_t i)
{
	struct vm_slot *sl = &st->slots[i];

	sl->index = i;
	snprintf(sl->file, sizeof(sl->file), "%s/slot-%u.snap", st->dir, i);
	snprintf(sl->dump, sizeof(sl->dump), "%s/slot-%u.dump", st->dir, i);
	unlink(sl->dump);
	/* A damaged file still counts: the slot's next request reports it. */
	sl->has_state = access(sl->file, F_OK) == 0;
	if (sl->has_state && read_layer(sl->file, &sl->layer))
		memset(&sl->layer, 0, sizeof(sl->layer));
}

int vm_state_init(struct vm_state *st, const struct fn *fn, const char *data_dir,
		  const char *store, int fresh, char *err, size_t errlen)
{
	char fn_dir[4096], ver[32];
	uint32_t i;
	int r;

	memset(st, 0, sizeof(*st));
	snprintf(ver, sizeof(ver), "v%lld", (long long)fn->version);
	snprintf(fn_dir, sizeof(fn_dir), "%s/vm-state", data_dir);
	r = mkdir_one(fn_dir);
	snprintf(fn_dir, sizeof(fn_dir), "%s/vm-state/%s", data_dir, fn->name);
	r = r ? r : mkdir_one(fn_dir);
	snprintf(st->dir, sizeof(st->dir), "%.4000s/%s", fn_dir, ver);
	r = r ? r : mkdir_one(st->dir);
	if (r) {
		snprintf(err, errlen, "cannot create %s: %s", st->dir, strerror(-r));
		return r;
	}
	if (fresh)
		remove_other_versions(fn_dir, ver);
	snprintf(st->store, sizeof(st->store), "%s", store);
	st->nslots = fn->limits.max_instances ? fn->limits.max_instances : 1;
	st->queue_max = fn->limits.queue;
	st->slots = calloc(st->nslots, sizeof(*st->slots));
	if (!st->slots)
		return -ENOMEM;
	for (i = 0; i < st->nslots; i++)
		init_slot(st, i);
	return 0;
}

void vm_state_free(struct vm_state *st)
{
	free(st->slots);
	st->slots = NULL;
}

/* FNV-1a: stable across restarts and builds, so a key keeps its slot and its state. */
static uint64_t key_hash(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	size_t i;

	for (i = 0; i < n; i++)
		h = (h ^ (uint8_t)s[i]) * 0x100000001b3ULL;
	return h;
}

struct vm_slot *vm_state_slot(struct vm_state *st, const struct inv *inv)
{
	const char *key = "";
	size_t i, n = 0;

	for (i = 0; i < inv->req.nheaders; i++)
		if (!strcmp(inv->req.headers[i].name, "x-stoke-key")) {
			key = inv->req.headers[i].value;
			n = inv->req.headers[i].value_len;
			break;
		}
	return &st->slots[key_hash(key, n) % st->nslots];
}

void vm_state_dump_opt(const struct vm_slot *sl, char *out, size_t len)
{
	snprintf(out, len, "--state-dump=%s", sl->dump);
}

int vm_state_check(struct vm_state *st, struct vm_slot *sl, char *why, size_t len)
{
	struct snap_err e = { 0 };
	struct snap_store *store;
	struct snap_image img;
	struct snap_file f;
	int r;

	r = snap_file_read(sl->file, &f, &e);
	if (r)
		return snprintf(why, len, "%s", e.msg[0] ? e.msg : strerror(-r)), r;
	r = snap_store_open(st->store, NULL, &store, &e);
	if (!r) {
		/* Reads and verifies the layer's pages unless the image is already built. */
		r = snap_image_open(store, &f.st.layers[0], &img, &e);
		if (!r)
			snap_image_close(&img);
		snap_store_close(store);
	}
	if (!r)
		sl->layer = f.st.layers[0];
	snap_file_release(&f);
	if (r)
		snprintf(why, len, "%s", e.msg[0] ? e.msg : strerror(-r));
	return r;
}

/*
 * The VMM keeps its dump file open for its whole life (it was opened before the jail),
 * so the file is never unlinked while the VM lives; a refused dump left "STOKNONE" at
 * its start, which must not be read as the answer to the next request for a dump.
 */
static int ask_dump(struct vm_proc *p, const char *dump)
{
	static const char blank[8];
	uint8_t hdr[FRAME_HDR_SIZE];
	int fd = open(dump, O_WRONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -errno;
	n = pwrite(fd, blank, sizeof(blank), 0);
	close(fd);
	if (n != (ssize_t)sizeof(blank))
		return -EIO;
	frame_hdr_pack(hdr, 0, FRAME_STATE_DUMP);
	/* An idle channel is empty: eight bytes fit in the socket buffer at once. */
	n = write(p->chan, hdr, sizeof(hdr));
	return n == (ssize_t)sizeof(hdr) ? 0 : n < 0 ? -errno : -EIO;
}

int vm_state_save(struct vm_state *st, struct vm_slot *sl, struct vm_proc *p,
		  pthread_mutex_t *build_lock, struct snap_id *old, int *had_old,
		  char *why, size_t len)
{
	struct snap_id id;
	int r;

	*had_old = 0;
	r = ask_dump(p, sl->dump);
	r = r ? r : vm_tier_snap_wait_dump(p, sl->dump, NULL, NULL);
	if (r == -ENOTSUP)
		return snprintf(why, len, "the VM refused the dump (files in /tmp are not "
				"kept)"), r;
	vm_proc_kill(p);
	if (r) {
		unlink(sl->dump);
		return snprintf(why, len, "dumping the VM: %s", strerror(-r)), r;
	}
	/* gc (which holds the lock) sees the new layer only with the file that names it. */
	pthread_mutex_lock(build_lock);
	r = vmsnap_build(sl->dump, st->store, sl->file, why, len);
	pthread_mutex_unlock(build_lock);
	unlink(sl->dump);
	if (r)
		return r;
	/* The old layer stays named by nothing once the new file is in place. */
	*had_old = sl->has_state && !snap_id_is_zero(&sl->layer);
	*old = sl->layer;
	r = read_layer(sl->file, &id);
	sl->layer = r ? (struct snap_id){ { 0 } } : id;
	sl->has_state = 1;
	if (*had_old && !memcmp(old, &sl->layer, sizeof(*old)))
		*had_old = 0;	/* the same memory again: the same layer */
	return 0;
}

void vm_state_discard(struct vm_slot *sl)
{
	char aside[4300];

	snprintf(aside, sizeof(aside), "%s.corrupt", sl->file);
	if (rename(sl->file, aside))
		unlink(sl->file);
	sl->has_state = 0;
	memset(&sl->layer, 0, sizeof(sl->layer));
}

int vm_state_remove(struct vm_state *st, struct snap_id *layers, int max)
{
	char parent[4096], *slash;
	uint32_t i;
	int n = 0;

	for (i = 0; i < st->nslots; i++) {
		struct vm_slot *sl = &st->slots[i];

		if (sl->has_state && !snap_id_is_zero(&sl->layer) && n < max)
			layers[n++] = sl->layer;
		sl->has_state = 0;
	}
	remove_dir(st->dir);
	/* The function's directory goes with its last version (rmdir fails otherwise). */
	snprintf(parent, sizeof(parent), "%s", st->dir);
	slash = strrchr(parent, '/');
	if (slash) {
		*slash = '\0';
		rmdir(parent);
	}
	return n;
}
