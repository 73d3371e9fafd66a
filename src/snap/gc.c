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
	struct stat sb;
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
		if (fstatat(s->pages, path, &sb, 0) < 0 || unlinkat(s->pages, path, 0) < 0)
			continue;
		st->deleted++;
		st->bytes_freed += (uint64_t)sb.st_blocks * 512;
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
			if ((strstr(d->d_name, ".img.") || strstr(d->d_name, ".top.")) &&
			    !unlinkat(s->images, d->d_name, 0))
				st->tmp_removed++;
			continue;
		}
		if (!dot || dot - d->d_name != 64)
			continue;
		memcpy(hex, d->d_name, 64);
		hex[64] = 0;
		if (!fstatat(s->layers, hex, &sb, 0) || errno != ENOENT ||
		    fstatat(s->images, d->d_name, &sb, 0) < 0)
			continue;
		if (!unlinkat(s->images, d->d_name, 0)) {
			st->images_removed++;
			st->bytes_freed += (uint64_t)sb.st_blocks * 512;
		}
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

/* Every manifest's id and parent link, each read and verified. */
struct links {
	struct snap_layer *l;	/* entries not kept: only ids and parents */
	size_t n, cap;
	uint8_t *keep;
};

static int read_links(struct snap_store *s, struct links *k, struct snap_err *err)
{
	struct dirent *d;
	DIR *dir = open_listing(s->layers);
	struct snap_id id;
	int r = 0;

	if (!dir)
		return snap__fail(err, errno, "gc: listing layers: %s", strerror(errno));
	while (!r && (d = readdir(dir))) {
		if (d->d_name[0] == '.')
			continue;
		if (snap_id_parse(d->d_name, &id)) {
			r = snap__fail(err, EINVAL, "gc: stray file layers/%s", d->d_name);
			break;
		}
		if (k->n == k->cap) {
			size_t cap = k->cap ? k->cap * 2 : 64;
			void *p = realloc(k->l, cap * sizeof(*k->l));

			if (!p) {
				r = snap__fail(err, ENOMEM, "gc: out of memory");
				break;
			}
			k->l = p;
			k->cap = cap;
		}
		r = snap_layer_read(s, &id, &k->l[k->n], err);
		if (!r)
			snap_layer_release(&k->l[k->n++]);
	}
	closedir(dir);
	k->keep = r ? NULL : calloc(k->n + 1, 1);
	return r ? r : k->keep ? 0 : snap__fail(err, ENOMEM, "gc: out of memory");
}

static void keep_chain(struct links *k, const struct snap_id *id)
{
	struct snap_id cur = *id;

	/* At most one pass per layer: a chain cannot be longer than the manifests. */
	for (size_t hops = 0; hops <= k->n; hops++) {
		size_t i;

		for (i = 0; i < k->n && memcmp(&k->l[i].id, &cur, sizeof(cur)); i++)
			;
		if (i == k->n || k->keep[i])
			return;
		k->keep[i] = 1;
		if (!k->l[i].has_parent)
			return;
		cur = k->l[i].parent;
	}
}

/* Deletes the manifests no root reaches; their pages go in the sweep that follows. */
static int drop_unreachable(struct snap_store *s, const struct snap_id *roots,
			    size_t nroots, struct snap_gc_stats *st, struct snap_err *err)
{
	struct links k = { 0 };
	char hex[65];
	int r;

	r = read_links(s, &k, err);
	for (size_t i = 0; !r && i < nroots; i++)
		keep_chain(&k, &roots[i]);
	for (size_t i = 0; !r && i < k.n; i++) {
		if (k.keep[i])
			continue;
		snap_id_hex(&k.l[i].id, hex);
		if (!unlinkat(s->layers, hex, 0))
			st->layers_removed++;
	}
	free(k.l);
	free(k.keep);
	return r;
}

static int gc_run(struct snap_store *s, const struct snap_id *roots, size_t nroots,
		  int use_roots, struct snap_gc_stats *st, struct snap_err *err)
{
	struct snap_gc_stats dummy;
	int r;

	if (!st)
		st = &dummy;
	memset(st, 0, sizeof(*st));
	r = snap__lock(s, 1);
	if (r)
		return snap__fail(err, -r, "gc: store lock: %s", strerror(-r));
	if (use_roots)
		r = drop_unreachable(s, roots, nroots, st, err);
	if (!r && use_roots && st->layers_removed && fsync(s->layers) < 0)
		r = snap__fail(err, errno, "gc: fsync layers: %s", strerror(errno));
	r = r ? r : gc_locked(s, st, err);
	snap__unlock(s);
	return r;
}

int snap_store_gc(struct snap_store *s, struct snap_gc_stats *st, struct snap_err *err)
{
	return gc_run(s, NULL, 0, 0, st, err);
}

int snap_store_gc_roots(struct snap_store *s, const struct snap_id *roots, size_t nroots,
			struct snap_gc_stats *st, struct snap_err *err)
{
	return gc_run(s, roots, nroots, 1, st, err);
}
