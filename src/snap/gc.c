/*
 * Garbage collection: mark every page some manifest references, then sweep the rest.
 * Reference counts are derived from the manifests each time rather than kept in an
 * index, so there is no count to get wrong after a crash: a manifest either exists
 * (its pages stay) or not. A crash during the sweep leaves only unreferenced pages
 * that the next run deletes.
 */
#include "snap_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static DIR *open_listing(int dirfd)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd < 0 ? NULL : fdopendir(fd);

	if (!d && fd >= 0)
		close(fd);
	return d;
}

static int mark_layer(struct snap_store *s, const char *name, struct snap__idset *set,
		      struct snap_err *err)
{
	struct snap_layer l = { 0 };
	struct snap_id id;
	int r;

	if (snap_id_parse(name, &id))
		return snap__fail(err, EINVAL, "gc: stray file layers/%s", name);
	r = snap_layer_read(s, &id, &l, err);
	for (uint64_t i = 0; !r && i < l.n; i++)
		if (snap__idset_add(set, &l.e[i].page))
			r = snap__fail(err, ENOMEM, "gc: out of memory");
	snap_layer_release(&l);
	return r;
}

/* Half-written manifests (dot names) belong to writers that died: we hold the lock. */
static int mark(struct snap_store *s, struct snap__idset *set, struct snap_gc_stats *st,
		struct snap_err *err)
{
	struct dirent *d;
	DIR *dir;
	int r = 0;

	dir = open_listing(s->layers);
	if (!dir)
		return snap__fail(err, errno, "gc: listing layers: %s", strerror(errno));
	while (!r && (d = readdir(dir))) {
		if (d->d_name[0] == '.') {
			if (strcmp(d->d_name, ".") && strcmp(d->d_name, "..") &&
			    !unlinkat(s->layers, d->d_name, 0))
				st->tmp_removed++;
			continue;
		}
		r = mark_layer(s, d->d_name, set, err);
		st->layers++;
	}
	closedir(dir);
	return r;
}

static int sweep_dir(struct snap_store *s, const char *sub, const struct snap__idset *set,
		     struct snap_gc_stats *st)
{
	char hex[65], path[68];
	struct snap_id id;
	struct dirent *d;
	int fd;
	DIR *dir;

	fd = openat(s->pages, sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	dir = fd < 0 ? NULL : fdopendir(fd);
	if (!dir)
		return fd < 0 && errno == ENOENT ? 0 : -errno;
	while ((d = readdir(dir))) {
		/* Only names that parse as ids are pages; anything else is left alone. */
		if (strlen(d->d_name) != 62)
			continue;
		memcpy(hex, sub, 2);
		memcpy(hex + 2, d->d_name, 63);
		if (snap_id_parse(hex, &id))
			continue;
		if (snap__idset_has(set, &id)) {
			st->kept++;
			continue;
		}
		snap__page_path(&id, path);
		if (unlinkat(s->pages, path, 0) < 0)
			continue;
		st->deleted++;
		if (snap__hook)
			snap__hook(SNAP__STEP_GC_DELETED, st->deleted);
	}
	closedir(dir);
	return 0;
}

static void clean_tmp(struct snap_store *s, struct snap_gc_stats *st)
{
	struct dirent *d;
	DIR *dir = open_listing(s->tmp);

	if (!dir)
		return;
	while ((d = readdir(dir)))
		if (d->d_name[0] != '.' && !unlinkat(s->tmp, d->d_name, 0))
			st->tmp_removed++;
	closedir(dir);
}

/*
 * Restore images and working sets whose layer is gone, and images that assemblers
 * (which hold the lock shared) left half-written when they died.
 */
static void prune_images(struct snap_store *s, struct snap_gc_stats *st)
{
	DIR *dir = open_listing(s->images);
	struct stat sb;
	struct dirent *d;
	char hex[65];

	while (dir && (d = readdir(dir))) {
		const char *dot = strchr(d->d_name, '.');

		if (d->d_name[0] == '.') {
			if (strstr(d->d_name, ".img.") && !unlinkat(s->images, d->d_name, 0))
				st->tmp_removed++;
			continue;
		}
		if (!dot || dot - d->d_name != 64)
			continue;
		memcpy(hex, d->d_name, 64);
		hex[64] = 0;
		if (!fstatat(s->layers, hex, &sb, 0) || errno != ENOENT)
			continue;
		if (!unlinkat(s->images, d->d_name, 0))
			st->images_removed++;
	}
	if (dir)
		closedir(dir);
}

static int gc_locked(struct snap_store *s, struct snap_gc_stats *st, struct snap_err *err)
{
	struct snap__idset set = { 0 };
	char sub[3];
	int r;

	clean_tmp(s, st);
	r = mark(s, &set, st, err);
	st->referenced = set.n;
	for (int i = 0; !r && i < 256; i++) {
		snprintf(sub, sizeof(sub), "%02x", i);
		r = sweep_dir(s, sub, &set, st);
		if (r)
			snap__fail(err, -r, "gc: pages/%s: %s", sub, strerror(-r));
	}
	snap__idset_free(&set);
	if (!r)
		prune_images(s, st);
	/* Unlinks need no fsync: one that a crash undoes leaves an unreferenced page. */
	return r;
}

int snap_store_gc(struct snap_store *s, struct snap_gc_stats *st, struct snap_err *err)
{
	struct snap_gc_stats dummy;
	int r;

	if (!st)
		st = &dummy;
	memset(st, 0, sizeof(*st));
	r = snap__lock(s, 1);
	if (r)
		return snap__fail(err, -r, "gc: store lock: %s", strerror(-r));
	r = gc_locked(s, st, err);
	snap__unlock(s);
	return r;
}
