/*
 * The page store: one file per distinct page under pages/<2 hex>/<62 hex>, holding
 * either the raw 4 KiB or a zstd frame (whichever is smaller). A page file appears by
 * rename, so a name that exists is complete; its contents are verified against the
 * name whenever it is read.
 */
#include "snap_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zstd.h>

/* Level 1: page stores are written on the snapshot path; ratio differs little. */
#define ZSTD_LEVEL	1

static int open_dir(int at, const char *name, struct snap_err *err)
{
	int fd;

	if (mkdirat(at, name, 0755) < 0 && errno != EEXIST)
		return snap__fail(err, errno, "store: mkdir %s: %s", name, strerror(errno));
	fd = openat(at, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return snap__fail(err, errno, "store: open %s: %s", name, strerror(errno));
	return fd;
}

static int open_dirs(struct snap_store *s, const char *root, const char *image_dir,
		     struct snap_err *err)
{
	if (mkdir(root, 0755) < 0 && errno != EEXIST)
		return snap__fail(err, errno, "store: mkdir %s: %s", root, strerror(errno));
	s->root = open_dir(AT_FDCWD, root, err);
	if (s->root < 0)
		return s->root;
	s->pages = open_dir(s->root, "pages", err);
	if (s->pages < 0)
		return s->pages;
	s->layers = open_dir(s->root, "layers", err);
	if (s->layers < 0)
		return s->layers;
	s->tmp = open_dir(s->root, "tmp", err);
	if (s->tmp < 0)
		return s->tmp;
	s->images = image_dir ? open_dir(AT_FDCWD, image_dir, err) : open_dir(s->root,
									    "images", err);
	if (s->images < 0)
		return s->images;
	s->lock = openat(s->root, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (s->lock < 0)
		return snap__fail(err, errno, "store: lock file: %s", strerror(errno));
	return 0;
}

int snap_store_open(const char *root, const char *image_dir, struct snap_store **out,
		    struct snap_err *err)
{
	struct snap_store *s = calloc(1, sizeof(*s));
	int r;

	if (!s)
		return snap__fail(err, ENOMEM, "store: out of memory");
	s->root = s->pages = s->layers = s->tmp = s->images = s->lock = -1;
	r = open_dirs(s, root, image_dir, err);
	if (!r) {
		s->cctx = ZSTD_createCCtx();
		s->dctx = ZSTD_createDCtx();
		if (!s->cctx || !s->dctx)
			r = snap__fail(err, ENOMEM, "store: out of memory");
	}
	if (r) {
		snap_store_close(s);
		return r;
	}
	*out = s;
	return 0;
}

void snap_store_close(struct snap_store *s)
{
	int *fds[] = { &s->root, &s->pages, &s->layers, &s->tmp, &s->images, &s->lock };

	if (!s)
		return;
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		if (*fds[i] >= 0)
			close(*fds[i]);
	ZSTD_freeCCtx(s->cctx);
	ZSTD_freeDCtx(s->dctx);
	free(s);
}

/* Nested calls (a layer build assembling its parent's image) keep the outer lock. */
int snap__lock(struct snap_store *s, int exclusive)
{
	if (s->lock_depth++)
		return 0;
	while (flock(s->lock, exclusive ? LOCK_EX : LOCK_SH) < 0) {
		if (errno != EINTR) {
			s->lock_depth--;
			return -errno;
		}
	}
	return 0;
}

void snap__unlock(struct snap_store *s)
{
	if (!--s->lock_depth)
		flock(s->lock, LOCK_UN);
}

void snap__page_path(const struct snap_id *id, char out[68])
{
	char hex[65];

	snap_id_hex(id, hex);
	snprintf(out, 68, "%.2s/%s", hex, hex + 2);
}

/* Writes the page's bytes to a new file in tmp/ and returns its name in tmp. */
static int write_tmp(struct snap_store *s, const void *data, size_t len, char tmp[64])
{
	int fd, r;

	snprintf(tmp, 64, "page.%d.%u", (int)getpid(), snap__seq());
	fd = openat(s->tmp, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	r = snap__write_all(fd, data, len);
	if (close(fd) < 0 && !r)
		r = -errno;
	if (r)
		unlinkat(s->tmp, tmp, 0);
	return r;
}

/* Moves tmp/<tmp> to pages/<path> unless a page already has that name (or replace). */
static int publish(struct snap_store *s, const char *tmp, const char *path, int replace,
		   int *added)
{
	char sub[3] = { path[0], path[1], 0 };
	int r;

	for (int tries = 0; tries < 2; tries++) {
		if (!renameat2(s->tmp, tmp, s->pages, path, replace ? 0 : RENAME_NOREPLACE)) {
			*added = 1;
			return 0;
		}
		if (errno == EEXIST) {
			unlinkat(s->tmp, tmp, 0);
			return 0;
		}
		if (errno != ENOENT || (mkdirat(s->pages, sub, 0755) < 0 && errno != EEXIST))
			break;
	}
	r = -errno;
	unlinkat(s->tmp, tmp, 0);
	return r;
}

int snap__page_put(struct snap_store *s, const uint8_t *page, const struct snap_id *id,
		   int *added, uint64_t *bytes)
{
	uint8_t zbuf[ZSTD_COMPRESSBOUND(SNAP_PAGE)];
	const void *data = page;
	size_t len = SNAP_PAGE, z;
	char path[68], tmp[64];
	int exists, r;
	struct stat st;

	*added = 0;
	snap__page_path(id, path);
	/*
	 * An empty file under a page's name is what delayed allocation can leave after a
	 * power loss between the rename and the writeback; it is replaced, never trusted.
	 */
	exists = !fstatat(s->pages, path, &st, 0);
	if (exists && st.st_size > 0)
		return 0;
	z = ZSTD_compressCCtx(s->cctx, zbuf, sizeof(zbuf), page, SNAP_PAGE, ZSTD_LEVEL);
	/* A raw page is exactly SNAP_PAGE bytes; any other size is a zstd frame. */
	if (!ZSTD_isError(z) && z < SNAP_PAGE) {
		data = zbuf;
		len = z;
	}
	r = write_tmp(s, data, len, tmp);
	if (!r)
		r = publish(s, tmp, path, exists, added);
	if (!r && *added)
		*bytes += len;
	return r;
}

int snap_page_read(struct snap_store *s, const struct snap_id *id, void *out,
		   struct snap_err *err)
{
	uint8_t zbuf[SNAP_PAGE];
	char path[68], hex[65];
	struct snap_id h;
	ssize_t n;
	int fd;

	if (snap_id_is_zero(id)) {
		memset(out, 0, SNAP_PAGE);
		return 0;
	}
	snap__page_path(id, path);
	snap_id_hex(id, hex);
	fd = openat(s->pages, path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return snap__fail(err, errno, "page %s: %s", hex, strerror(errno));
	n = pread(fd, zbuf, sizeof(zbuf), 0);
	close(fd);
	if (n < 0)
		return snap__fail(err, errno, "page %s: %s", hex, strerror(errno));
	if (n == SNAP_PAGE)
		memcpy(out, zbuf, SNAP_PAGE);
	else if (ZSTD_decompressDCtx(s->dctx, out, SNAP_PAGE, zbuf, (size_t)n) != SNAP_PAGE)
		return snap__fail(err, EBADMSG, "page %s: corrupt compressed data", hex);
	snap__sha256(out, SNAP_PAGE, &h);
	if (memcmp(&h, id, sizeof(h)))
		return snap__fail(err, EBADMSG, "page %s: contents do not match its id", hex);
	return 0;
}

static uint64_t slot_of(const struct snap_id *id, uint64_t cap)
{
	uint64_t h;

	memcpy(&h, id->b, sizeof(h));	/* SHA-256 output is already uniform */
	return h & (cap - 1);
}

static int idset_grow(struct snap__idset *set)
{
	struct snap__idset bigger = { 0 };

	bigger.cap = set->cap ? set->cap * 2 : 1024;
	bigger.slot = calloc(bigger.cap, sizeof(*bigger.slot));
	if (!bigger.slot)
		return -ENOMEM;
	for (uint64_t i = 0; i < set->cap; i++)
		if (!snap_id_is_zero(&set->slot[i]))
			snap__idset_add(&bigger, &set->slot[i]);
	free(set->slot);
	*set = bigger;
	return 0;
}

int snap__idset_add(struct snap__idset *set, const struct snap_id *id)
{
	uint64_t i;

	if (snap_id_is_zero(id))
		return 0;	/* the zero page is never stored */
	if ((set->n + 1) * 2 > set->cap && idset_grow(set))
		return -ENOMEM;
	for (i = slot_of(id, set->cap);; i = (i + 1) & (set->cap - 1)) {
		if (!memcmp(&set->slot[i], id, sizeof(*id)))
			return 0;
		if (snap_id_is_zero(&set->slot[i]))
			break;
	}
	set->slot[i] = *id;
	set->n++;
	return 0;
}

int snap__idset_has(const struct snap__idset *set, const struct snap_id *id)
{
	if (!set->cap)
		return 0;
	for (uint64_t i = slot_of(id, set->cap);; i = (i + 1) & (set->cap - 1)) {
		if (!memcmp(&set->slot[i], id, sizeof(*id)))
			return 1;
		if (snap_id_is_zero(&set->slot[i]))
			return 0;
	}
}

void snap__idset_free(struct snap__idset *set)
{
	free(set->slot);
	memset(set, 0, sizeof(*set));
}
