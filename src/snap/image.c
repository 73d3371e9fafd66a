/*
 * Restore images: a layer chain flattened into one file of guest memory, so a restore
 * is one mmap. The file is derived data: if a crash loses it, it is assembled again.
 */
#include "snap_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Pages written per pwrite when they are contiguous. */
#define RUN_PAGES	256

/* For each page, the id from the highest layer that has it (top first wins). */
struct flat {
	struct snap_layer_entry *e;
	uint64_t n;
	uint64_t mem_bytes;
};

static int cmp_gpn(const void *a, const void *b)
{
	const struct snap_layer_entry *x = a, *y = b;

	return x->gpn < y->gpn ? -1 : x->gpn > y->gpn;
}

static int flatten_layer(struct flat *f, const struct snap_layer *l, uint64_t *seen)
{
	void *e = realloc(f->e, (f->n + l->n + 1) * sizeof(*f->e));

	if (!e)
		return -ENOMEM;
	f->e = e;
	for (uint64_t i = 0; i < l->n; i++) {
		uint64_t g = l->e[i].gpn;

		if (seen[g / 64] & 1ULL << (g % 64))
			continue;
		seen[g / 64] |= 1ULL << (g % 64);
		f->e[f->n++] = l->e[i];
	}
	return 0;
}

static int flatten(struct snap_store *s, const struct snap_id *top, struct flat *f,
		   struct snap_err *err)
{
	struct snap_id ids[SNAP_MAX_CHAIN];
	struct snap_layer l;
	uint64_t *seen = NULL;
	int n, r = 0;

	n = snap_layer_chain(s, top, ids, err);
	if (n < 0)
		return n;
	for (int i = 0; !r && i < n; i++) {
		r = snap_layer_read(s, &ids[i], &l, err);
		if (r)
			break;
		if (!i) {
			f->mem_bytes = l.mem_bytes;
			seen = calloc((l.mem_bytes / SNAP_PAGE + 63) / 64, 8);
		}
		if (l.mem_bytes != f->mem_bytes)
			r = snap__fail(err, EINVAL, "image: layers of different memory sizes");
		else if (!seen || flatten_layer(f, &l, seen))
			r = snap__fail(err, ENOMEM, "image: out of memory");
		snap_layer_release(&l);
	}
	free(seen);
	if (!r)
		qsort(f->e, f->n, sizeof(*f->e), cmp_gpn);
	return r;
}

int snap__flatten(struct snap_store *s, const struct snap_id *top,
		  struct snap_layer_entry **e, uint64_t *n, struct snap_err *err)
{
	struct flat f = { 0 };
	int r = flatten(s, top, &f, err);

	if (r) {
		free(f.e);
		return r;
	}
	*e = f.e;
	*n = f.n;
	return 0;
}

static int write_run(int fd, const uint8_t *buf, uint64_t k, uint64_t gpn,
		     struct snap_err *err)
{
	ssize_t n = pwrite(fd, buf, k * SNAP_PAGE, (off_t)(gpn * SNAP_PAGE));

	if (n < 0)
		return snap__fail(err, errno, "image: write: %s", strerror(errno));
	/* A short write to a regular file means the file system is full. */
	if (n != (ssize_t)(k * SNAP_PAGE))
		return snap__fail(err, ENOSPC, "image: write: %s", strerror(ENOSPC));
	return 0;
}

/* Writes the non-zero pages, batching contiguous ones; zero pages stay holes. */
static int write_pages(struct snap_store *s, int fd, const struct snap_layer_entry *e,
		       uint64_t n, struct snap_err *err)
{
	uint8_t *buf = malloc(RUN_PAGES * SNAP_PAGE);
	uint64_t i = 0, k;
	int r = 0;

	if (!buf)
		return snap__fail(err, ENOMEM, "image: out of memory");
	while (!r && i < n) {
		if (snap_id_is_zero(&e[i].page)) {
			i++;
			continue;
		}
		for (k = 0; !r && k < RUN_PAGES && i + k < n && e[i + k].gpn == e[i].gpn + k &&
			    !snap_id_is_zero(&e[i + k].page); k++)
			r = snap_page_read(s, &e[i + k].page, buf + k * SNAP_PAGE, err);
		if (!r)
			r = write_run(fd, buf, k, e[i].gpn, err);
		i += k;
	}
	free(buf);
	return r;
}

static int write_tail(int fd, uint64_t mem_bytes, const void *tail, size_t len,
		      struct snap_err *err)
{
	ssize_t n = len ? pwrite(fd, tail, len, (off_t)mem_bytes) : 0;

	if (n < 0)
		return snap__fail(err, errno, "image: write: %s", strerror(errno));
	if ((size_t)n != len)
		return snap__fail(err, ENOSPC, "image: write: %s", strerror(ENOSPC));
	return 0;
}

int snap__image_write(struct snap_store *s, const char *name,
		      const struct snap_layer_entry *e, uint64_t n, uint64_t mem_bytes,
		      const void *tail, size_t tail_len, struct snap_err *err)
{
	char tmp[128];
	int fd, r = 0;

	snprintf(tmp, sizeof(tmp), ".%s.%d.%u.tmp", name, (int)getpid(), snap__seq());
	fd = openat(s->images, tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return snap__fail(err, errno, "image %s: %s", name, strerror(errno));
	if (ftruncate(fd, (off_t)mem_bytes) < 0)
		r = snap__fail(err, errno, "image %s: truncate: %s", name, strerror(errno));
	if (!r)
		r = write_pages(s, fd, e, n, err);
	if (!r)
		r = write_tail(fd, mem_bytes, tail, tail_len, err);
	/* Data before the name: after a crash the name never points at a partial file. */
	if (!r && fdatasync(fd) < 0)
		r = snap__fail(err, errno, "image %s: fdatasync: %s", name, strerror(errno));
	close(fd);
	if (!r && renameat(s->images, tmp, s->images, name) < 0)
		r = snap__fail(err, errno, "image %s: rename: %s", name, strerror(errno));
	if (r)
		unlinkat(s->images, tmp, 0);
	return r;
}

static int assemble(struct snap_store *s, const struct snap_id *top, const char *name,
		    struct snap_err *err)
{
	struct flat f = { 0 };
	int r;

	r = flatten(s, top, &f, err);
	if (!r)
		r = snap__image_write(s, name, f.e, f.n, f.mem_bytes, NULL, 0, err);
	free(f.e);
	return r;
}

int snap__image_open_file(struct snap_store *s, const char *name, int *fd, uint64_t *size)
{
	struct stat st;

	*fd = openat(s->images, name, O_RDONLY | O_CLOEXEC);
	if (*fd < 0)
		return -errno;
	if (fstat(*fd, &st) < 0) {
		close(*fd);
		*fd = -1;
		return -EIO;
	}
	*size = (uint64_t)st.st_size;
	return 0;
}

static int open_cached(struct snap_store *s, const char *name, struct snap_image *img)
{
	return snap__image_open_file(s, name, &img->fd, &img->size);
}

int snap_image_open(struct snap_store *s, const struct snap_id *top, struct snap_image *img,
		    struct snap_err *err)
{
	char hex[65], name[80];
	int r;

	snap_id_hex(top, hex);
	snprintf(name, sizeof(name), "%s.img", hex);
	memset(img, 0, sizeof(*img));
	img->id = *top;
	img->top_fd = -1;
	if (!open_cached(s, name, img))
		return 0;
	r = snap__lock(s, 0);
	if (r)
		return snap__fail(err, -r, "image %s: store lock: %s", hex, strerror(-r));
	r = assemble(s, top, name, err);
	snap__unlock(s);
	if (r)
		return r;
	img->built = 1;
	if (open_cached(s, name, img))
		return snap__fail(err, errno, "image %s: %s", name, strerror(errno));
	return 0;
}

void snap_image_close(struct snap_image *img)
{
	if (img->fd >= 0)
		close(img->fd);
	if (img->top_fd >= 0)
		close(img->top_fd);
	free(img->runs);
	img->fd = img->top_fd = -1;
	img->runs = NULL;
	img->nruns = 0;
}

/*
 * MAP_FIXED replaces the pages under an existing memory slot in one step; KVM drops
 * its translations of the old pages through its MMU notifier.
 */
/* Where a piece of the image goes: memory offset off is at base. */
struct place {
	uint8_t *base;
	uint64_t off;
};

static int map_piece(int fd, uint64_t file_off, uint64_t off, uint64_t len, void *arg)
{
	struct place *at = arg;

	if (mmap(at->base + (off - at->off), len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE, fd, (off_t)file_off) == MAP_FAILED)
		return -errno;
	return 0;
}

int snap_image_map(const struct snap_image *img, void *addr, uint64_t len, uint64_t off,
		   struct snap_err *err)
{
	struct place at = { addr, off };
	int r;

	if ((uintptr_t)addr % SNAP_PAGE || len % SNAP_PAGE || off % SNAP_PAGE ||
	    off > img->size || len > img->size - off)
		return snap__fail(err, EINVAL, "image map: range not page aligned or too long");
	/* A split image: the parent's image under all of it, then each top-layer run. */
	r = map_piece(img->fd, off, off, len, &at);
	if (!r && img->top_fd >= 0)
		r = snap__image_runs(img, off, len, map_piece, &at);
	if (r)
		return snap__fail(err, -r, "image map: %s", strerror(-r));
	return 0;
}

static int read_piece(int fd, uint64_t file_off, uint64_t off, uint64_t len, void *arg)
{
	struct place *at = arg;

	return snap__pread_all(fd, at->base + (off - at->off), len, file_off);
}

int snap_image_read(const struct snap_image *img, void *buf, uint64_t len, uint64_t off)
{
	struct place at = { buf, off };

	if (off > img->size || len > img->size - off)
		return -EINVAL;
	return snap__image_pieces(img, off, len, read_piece, &at);
}
