/*
 * Working sets and the page-table views they come from. A working set file is a
 * header, the sorted page ranges, and a SHA-256 of everything before it.
 */
#include "snap_int.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define WS_MAGIC	"STOKWSET"
#define WS_VERSION	2u	/* 2 added the written ranges; 1 is still read */
#define WS_HDR		64
#define PM_PRESENT	(1ULL << 63)
#define PM_SWAPPED	(1ULL << 62)
#define PM_FILE		(1ULL << 61)	/* file page or shared anonymous */
#define PM_CHUNK	4096		/* entries read per pread */
/* Ranges closer than this are read as one: a few extra pages cost less than a seek. */
#define MERGE_GAP	8

/* Calls fn for each page of [addr, addr + len) with its pagemap entry. */
static int pagemap_scan(int fd, const void *addr, uint64_t len,
			void (*fn)(uint64_t page, uint64_t ent, void *arg), void *arg)
{
	uint64_t ent[PM_CHUNK], first = (uintptr_t)addr / SNAP_PAGE, n = len / SNAP_PAGE;
	int own = fd < 0, r = 0;

	if (own)
		fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	for (uint64_t i = 0; i < n; i += PM_CHUNK) {
		uint64_t k = n - i < PM_CHUNK ? n - i : PM_CHUNK;

		r = snap__pread_all(fd, ent, k * 8, (first + i) * 8);
		if (r)
			break;
		for (uint64_t j = 0; j < k; j++)
			fn(i + j, ent[j], arg);
	}
	if (own)
		close(fd);
	return r;
}

static void set_bit(uint64_t *bm, uint64_t i)
{
	bm[i / 64] |= 1ULL << (i % 64);
}

static void on_dirty(uint64_t page, uint64_t ent, void *arg)
{
	/* A private copy is an anonymous page: present and not a file page. */
	if ((ent & PM_PRESENT) && !(ent & PM_FILE))
		set_bit(arg, page);
	else if (ent & PM_SWAPPED)
		set_bit(arg, page);
}

int snap_dirty_from_pagemap(int pagemap_fd, const void *addr, uint64_t len,
			    uint64_t *bitmap)
{
	memset(bitmap, 0, (len / SNAP_PAGE + 63) / 64 * 8);
	return pagemap_scan(pagemap_fd, addr, len, on_dirty, bitmap);
}

/* Touched (first half of arg) and written (second half) bitmaps of one scan. */
static void on_touched(uint64_t page, uint64_t ent, void *arg)
{
	uint64_t **bm = arg;

	if (ent & (PM_PRESENT | PM_SWAPPED))
		set_bit(bm[0], page);
	on_dirty(page, ent, bm[1]);
}

static int bit(const uint64_t *bm, uint64_t i)
{
	return (int)(bm[i / 64] >> (i % 64) & 1);
}

/* Sorted runs of set bits; *pages gets their total. */
static int ranges_of(const uint64_t *bitmap, uint64_t npages, struct snap_range **out,
		     uint32_t *n, uint64_t *pages)
{
	uint64_t g = 0, cap = 0, start;
	void *r;

	while (g < npages) {
		if (!bit(bitmap, g)) {
			g++;
			continue;
		}
		for (start = g; g < npages && bit(bitmap, g); g++)
			;
		if (*n == cap) {
			r = realloc(*out, (cap = cap ? cap * 2 : 64) * sizeof(**out));
			if (!r)
				return -ENOMEM;
			*out = r;
		}
		(*out)[(*n)++] = (struct snap_range){ start, g - start };
		if (pages)
			*pages += g - start;
	}
	return 0;
}

int snap_ws_from_pagemap(int pagemap_fd, const void *addr, uint64_t len,
			 const struct snap_id *image, struct snap_ws *ws)
{
	uint64_t n = len / SNAP_PAGE, words = (n + 63) / 64;
	uint64_t *bm[2] = { calloc(words, 8), calloc(words, 8) };
	int r = bm[0] && bm[1] ? 0 : -ENOMEM;

	r = r ? r : pagemap_scan(pagemap_fd, addr, len, on_touched, bm);
	r = r ? r : snap_ws_from_bitmap(bm[0], n, image, ws);
	if (!r && (r = ranges_of(bm[1], n, &ws->w, &ws->nwritten, NULL)))
		snap_ws_release(ws);
	free(bm[0]);
	free(bm[1]);
	return r;
}

int snap_ws_from_bitmap(const uint64_t *bitmap, uint64_t npages,
			const struct snap_id *image, struct snap_ws *ws)
{
	int r;

	memset(ws, 0, sizeof(*ws));
	ws->image = *image;
	r = ranges_of(bitmap, npages, &ws->r, &ws->nranges, &ws->pages);
	if (r)
		snap_ws_release(ws);
	return r;
}

void snap_ws_release(struct snap_ws *ws)
{
	free(ws->r);
	free(ws->w);
	ws->r = ws->w = NULL;
	ws->nranges = ws->nwritten = 0;
	ws->pages = 0;
}

static uint8_t *put_ranges(uint8_t *p, const struct snap_range *r, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++, p += 16) {
		snap__put64(p, r[i].gpn);
		snap__put64(p + 8, r[i].count);
	}
	return p;
}

int snap_ws_write(const char *path, const struct snap_ws *ws, struct snap_err *err)
{
	size_t len = WS_HDR + ((size_t)ws->nranges + ws->nwritten) * 16 + 32;
	uint8_t *buf = calloc(1, len), *p;
	struct snap_id h;
	int r;

	if (!buf)
		return snap__fail(err, ENOMEM, "working set %s: out of memory", path);
	memcpy(buf, WS_MAGIC, 8);
	snap__put32(buf + 8, WS_VERSION);
	snap__put32(buf + 12, ws->nranges);
	memcpy(buf + 16, ws->image.b, 32);
	snap__put64(buf + 48, ws->pages);
	snap__put32(buf + 56, ws->nwritten);
	p = put_ranges(buf + WS_HDR, ws->r, ws->nranges);
	p = put_ranges(p, ws->w, ws->nwritten);
	snap__sha256(buf, len - 32, &h);
	memcpy(p, h.b, 32);
	r = snap__atomic_write_path(path, buf, len);
	free(buf);
	if (r)
		return snap__fail(err, -r, "working set %s: %s", path, strerror(-r));
	return 0;
}

/* Decodes n sorted, disjoint ranges at p; returns their page total, or 0 if malformed. */
static uint64_t get_ranges(const uint8_t *p, uint32_t n, struct snap_range **out)
{
	uint64_t pages = 0, end = 0;

	*out = malloc((n + 1) * sizeof(**out));
	if (!*out)
		return 0;
	for (uint32_t i = 0; i < n; i++, p += 16) {
		(*out)[i].gpn = snap__get64(p);
		(*out)[i].count = snap__get64(p + 8);
		if ((*out)[i].gpn < end || !(*out)[i].count || (*out)[i].count > UINT32_MAX)
			return 0;
		end = (*out)[i].gpn + (*out)[i].count;
		pages += (*out)[i].count;
	}
	return pages;
}

static int ws_decode(const uint8_t *buf, size_t len, struct snap_ws *ws, const char *path,
		     struct snap_err *err)
{
	uint32_t version;
	uint64_t pages;
	struct snap_id h;

	if (len < WS_HDR + 32)
		return snap__fail(err, ENODATA, "working set %s: truncated", path);
	if (memcmp(buf, WS_MAGIC, 8))
		return snap__fail(err, ENOEXEC, "working set %s: bad magic", path);
	version = snap__get32(buf + 8);
	if (version != WS_VERSION && version != 1)
		return snap__fail(err, EPROTONOSUPPORT, "working set %s: version %u", path,
				  version);
	ws->nranges = snap__get32(buf + 12);
	ws->nwritten = version == 1 ? 0 : snap__get32(buf + 56);
	if (len != WS_HDR + ((uint64_t)ws->nranges + ws->nwritten) * 16 + 32)
		return snap__fail(err, ENODATA, "working set %s: length does not match", path);
	snap__sha256(buf, len - 32, &h);
	if (memcmp(h.b, buf + len - 32, 32))
		return snap__fail(err, EBADMSG, "working set %s: checksum mismatch", path);
	memcpy(ws->image.b, buf + 16, 32);
	pages = get_ranges(buf + WS_HDR, ws->nranges, &ws->r);
	if (!ws->r)
		return snap__fail(err, ENOMEM, "working set %s: out of memory", path);
	if ((!pages && ws->nranges) ||
	    (!get_ranges(buf + WS_HDR + ws->nranges * 16ULL, ws->nwritten, &ws->w) &&
	     ws->nwritten))
		return snap__fail(err, EINVAL, "working set %s: ranges unsorted", path);
	if (!ws->w)
		return snap__fail(err, ENOMEM, "working set %s: out of memory", path);
	ws->pages = pages;
	return pages == snap__get64(buf + 48) ? 0 :
		snap__fail(err, EINVAL, "working set %s: page count mismatch", path);
}

int snap_ws_read(const char *path, struct snap_ws *ws, struct snap_err *err)
{
	uint8_t *buf;
	size_t len;
	int r;

	memset(ws, 0, sizeof(*ws));
	r = snap__read_file(AT_FDCWD, path, &buf, &len);
	if (r)
		return snap__fail(err, -r, "working set %s: %s", path, strerror(-r));
	r = ws_decode(buf, len, ws, path, err);
	free(buf);
	if (r)
		snap_ws_release(ws);
	return r;
}

static int fill_run(const struct snap_image *img, uint8_t *mem, uint64_t off, uint64_t len,
		    enum snap_fill fill, uint8_t *scratch)
{
	void *p;

	switch (fill) {
	case SNAP_FILL_NONE:
		return 0;
	case SNAP_FILL_READAHEAD:
		return readahead(img->fd, (off64_t)off, len) < 0 ? -errno : 0;
	case SNAP_FILL_FADVISE:
		return -posix_fadvise(img->fd, (off_t)off, (off_t)len, POSIX_FADV_WILLNEED);
	case SNAP_FILL_MADVISE:
		return madvise(mem + off, len, MADV_WILLNEED) < 0 ? -errno : 0;
	case SNAP_FILL_MAP_SHARED:
		p = mmap(NULL, len, PROT_READ, MAP_SHARED | MAP_POPULATE, img->fd, (off_t)off);
		if (p == MAP_FAILED)
			return -errno;
		munmap(p, len);
		return 0;
	case SNAP_FILL_PREAD:
		for (uint64_t done = 0; done < len; done += 256 * SNAP_PAGE) {
			uint64_t k = len - done < 256 * SNAP_PAGE ? len - done : 256 * SNAP_PAGE;

			if (pread(img->fd, scratch, k, (off_t)(off + done)) < 0)
				return -errno;
		}
		return 0;
	}
	return -EINVAL;
}

/* Calls fn on each run of the working set, ranges merged across small gaps. */
static int for_runs(const struct snap_ws *ws, uint64_t limit,
		    int (*fn)(uint64_t off, uint64_t len, void *arg), void *arg)
{
	uint32_t i = 0;
	int r;

	while (i < ws->nranges) {
		uint64_t start = ws->r[i].gpn, end = start + ws->r[i].count;

		while (++i < ws->nranges && ws->r[i].gpn < end + MERGE_GAP)
			end = ws->r[i].gpn + ws->r[i].count;
		if (end > limit)
			end = limit;
		if (start >= end)
			break;
		r = fn(start * SNAP_PAGE, (end - start) * SNAP_PAGE, arg);
		if (r)
			return r;
	}
	return 0;
}

struct pf {
	const struct snap_image *img;
	uint8_t *mem;
	enum snap_fill fill;
	uint8_t *scratch;
};

static int pf_fill(uint64_t off, uint64_t len, void *arg)
{
	struct pf *pf = arg;

	return fill_run(pf->img, pf->mem, off, len, pf->fill, pf->scratch);
}

static int pf_map(uint64_t off, uint64_t len, void *arg)
{
	struct pf *pf = arg;

	/* Maps the file pages read-only: a later guest write still copies only its page. */
	return madvise(pf->mem + off, len, MADV_POPULATE_READ) < 0 ? -errno : 0;
}

int snap_ws_prefetch(const struct snap_image *img, const struct snap_ws *ws, uint8_t *mem,
		     enum snap_fill fill, unsigned flags, struct snap_err *err)
{
	struct pf pf = { img, mem, fill, NULL };
	uint64_t limit = img->size / SNAP_PAGE;
	int r;

	if (memcmp(&ws->image, &img->id, sizeof(img->id)))
		return snap__fail(err, ESTALE, "prefetch: working set recorded on another image");
	if (fill == SNAP_FILL_PREAD && !(pf.scratch = malloc(256 * SNAP_PAGE)))
		return snap__fail(err, ENOMEM, "prefetch: out of memory");
	r = for_runs(ws, limit, pf_fill, &pf);
	free(pf.scratch);
	if (r)
		return snap__fail(err, -r, "prefetch: %s", strerror(-r));
	if ((flags & SNAP_PF_MAP) && mem)
		r = for_runs(ws, limit, pf_map, &pf);
	if (r)
		return snap__fail(err, -r, "prefetch: populate: %s", strerror(-r));
	return 0;
}
