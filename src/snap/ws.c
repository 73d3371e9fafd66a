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
