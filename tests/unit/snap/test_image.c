/*
 * Restore images as the VMM uses them: an image mapped over a VM's memory slot equals
 * the snapshot byte for byte; the pages the guest then writes are found in pagemap
 * and become the next layer; a recorded working set is prefetched by every method,
 * lands in the page cache and the page tables, and stays shared (no private copies);
 * with the written pages copied ahead exactly those become private, and a dense
 * unwritten 2 MiB region comes in as one huge folio mapped by one PMD.
 */
#include "check.h"
#include "snap/snap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define MEM	(32ULL << 20)
#define NPAGES	(MEM / SNAP_PAGE)

static char root[] = "/tmp/stoke-snapimage-XXXXXX";
static unsigned rng = 99;

static unsigned next(void)
{
	rng = rng * 1103515245 + 12345;
	return rng >> 8;
}

static int bit(const uint64_t *bm, uint64_t g)
{
	return (int)(bm[g / 64] >> (g % 64) & 1);
}

static uint64_t popcount(const uint64_t *bm)
{
	uint64_t n = 0;

	for (uint64_t w = 0; w < NPAGES / 64; w++)
		n += (uint64_t)__builtin_popcountll(bm[w]);
	return n;
}

/* The VM's memory slot: a fixed anonymous region that images are mapped into. */
static uint8_t *slot_create(void)
{
	uint8_t *m = mmap(NULL, MEM, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	memset(m, 0xee, MEM);	/* whatever was there before the restore */
	return m;
}

static struct snap_id build(struct snap_store *s, const uint8_t *mem,
			    const struct snap_id *parent, const uint64_t *dirty)
{
	struct snap_layer_src src = { .mem = mem, .mem_bytes = MEM, .parent = parent,
				      .dirty = dirty };
	struct snap_layer_info info;
	struct snap_err err;

	CHECK(snap_layer_build(s, &src, &info, &err) == 0);
	return info.id;
}

/* Pages of the image file in the page cache. */
static uint64_t cached_pages(const struct snap_image *img, const struct snap_ws *ws)
{
	unsigned char *vec = malloc(NPAGES);
	void *m = mmap(NULL, MEM, PROT_READ, MAP_SHARED, img->fd, 0);
	uint64_t n = 0;

	mincore(m, MEM, vec);
	for (uint32_t i = 0; i < ws->nranges; i++)
		for (uint64_t k = 0; k < ws->r[i].count; k++)
			n += vec[ws->r[i].gpn + k] & 1;
	munmap(m, MEM);
	free(vec);
	return n;
}

static void evict(const struct snap_image *img)
{
	fdatasync(img->fd);
	posix_fadvise(img->fd, 0, 0, POSIX_FADV_DONTNEED);
}

static uint8_t *orig;
static struct snap_id id_base;

/* Map, write, find the written pages in pagemap, build the next layer from them. */
static void test_map_and_diff(struct snap_store *s)
{
	uint64_t *dirty = calloc(NPAGES / 64, 8);
	uint8_t *slot = slot_create(), *want = malloc(MEM);
	struct snap_image img, img2;
	struct snap_id id_next;
	struct snap_err err;
	int exact = 1;

	CHECK(snap_image_open(s, &id_base, &img, &err) == 0);
	CHECK(snap_image_map(&img, slot, MEM, 0, &err) == 0);
	CHECK(!memcmp(slot, orig, MEM));
	CHECK(snap_image_map(&img, slot + 1, SNAP_PAGE, 0, &err) == -EINVAL);
	/* A fresh mapping has no private pages, even after reading all of it. */
	CHECK(snap_dirty_from_pagemap(-1, slot, MEM, dirty) == 0 && popcount(dirty) == 0);
	memcpy(want, orig, MEM);
	for (int i = 0; i < 75; i++) {
		uint64_t g = next() % NPAGES;

		slot[g * SNAP_PAGE + 100] ^= 1;
		want[g * SNAP_PAGE + 100] ^= 1;
	}
	CHECK(snap_dirty_from_pagemap(-1, slot, MEM, dirty) == 0);
	/* Every changed page is found; a page flipped twice is dirty yet unchanged. */
	for (uint64_t g = 0; g < NPAGES; g++)
		exact &= bit(dirty, g) >= !!memcmp(want + g * SNAP_PAGE, orig + g * SNAP_PAGE,
						   SNAP_PAGE);
	CHECK(exact && popcount(dirty) <= 75 && popcount(dirty) >= 70);
	id_next = build(s, slot, &id_base, dirty);
	CHECK(snap_image_open(s, &id_next, &img2, &err) == 0 && img2.built);
	CHECK(snap_image_map(&img2, slot, MEM, 0, &err) == 0);
	CHECK(!memcmp(slot, want, MEM));
	snap_image_close(&img2);
	CHECK(snap_image_open(s, &id_base, &img2, &err) == 0 && !img2.built);
	snap_image_close(&img2);
	snap_image_close(&img);
	munmap(slot, MEM);
	free(want);
	free(dirty);
}

/* Touches a scattered set of pages the way a first request would. */
static void touch(const uint8_t *slot, uint64_t *touched, int record)
{
	volatile uint8_t sink = 0;
	unsigned saved = rng;

	rng = 4242;
	for (int i = 0; i < 300; i++) {
		uint64_t g = next() % NPAGES;

		sink ^= slot[g * SNAP_PAGE];
		if (record)
			touched[g / 64] |= 1ULL << (g % 64);
	}
	rng = saved;
	(void)sink;
}

static void test_ws_file(const struct snap_ws *ws)
{
	char path[300], cmd[400];
	struct snap_ws back;
	struct snap_err err;
	int same = 1;

	snprintf(path, sizeof(path), "%s/base.ws", root);
	CHECK(snap_ws_write(path, ws, &err) == 0);
	CHECK(snap_ws_read(path, &back, &err) == 0);
	CHECK(back.pages == ws->pages && back.nranges == ws->nranges);
	for (uint32_t i = 0; same && i < ws->nranges; i++)
		same = back.r[i].gpn == ws->r[i].gpn && back.r[i].count == ws->r[i].count;
	CHECK(same && !memcmp(&back.image, &ws->image, sizeof(ws->image)));
	CHECK(back.nwritten == ws->nwritten);
	for (uint32_t i = 0; same && i < ws->nwritten; i++)
		same = back.w[i].gpn == ws->w[i].gpn && back.w[i].count == ws->w[i].count;
	CHECK(same);
	snap_ws_release(&back);
	snprintf(cmd, sizeof(cmd), "printf 'X' | dd of=%s bs=1 seek=70 conv=notrunc "
		 "status=none", path);
	CHECK(system(cmd) == 0);
	CHECK(snap_ws_read(path, &back, &err) == -EBADMSG);
	CHECK(truncate(path, 90) == 0 && snap_ws_read(path, &back, &err) == -ENODATA);
}

/* Every page the touch loop read is in the recorded working set. */
static int covers(const struct snap_ws *ws, const uint64_t *touched)
{
	for (uint64_t g = 0; g < NPAGES; g++) {
		int in = 0;

		if (!bit(touched, g))
			continue;
		for (uint32_t j = 0; j < ws->nranges && !in; j++)
			in = g >= ws->r[j].gpn && g < ws->r[j].gpn + ws->r[j].count;
		if (!in)
			return 0;
	}
	return 1;
}

/* From an evicted cache: afterwards cached, mapped, identical and not copied. */
static void prefetch_with(const struct snap_image *img, const struct snap_ws *ws, int fill)
{
	static const char *names[] = { "none", "readahead", "fadvise", "pread", "madvise",
				       "map_shared" };
	uint64_t *dirty = calloc(NPAGES / 64, 8), cached, present;
	uint8_t *slot = slot_create();
	struct snap_ws mapped;
	struct snap_err err;

	evict(img);
	CHECK(cached_pages(img, ws) < ws->pages / 10);
	CHECK(snap_image_map(img, slot, MEM, 0, &err) == 0);
	CHECK(snap_ws_prefetch(img, ws, slot, fill, SNAP_PF_MAP, &err) == 0);
	cached = cached_pages(img, ws);
	snap_ws_from_pagemap(-1, slot, MEM, &img->id, &mapped);
	present = mapped.pages;
	snap_ws_release(&mapped);
	snap_dirty_from_pagemap(-1, slot, MEM, dirty);
	if (cached != ws->pages || present < ws->pages || popcount(dirty))
		fprintf(stderr, "prefetch %s: %llu/%llu cached, %llu mapped, %llu private\n",
			names[fill], (unsigned long long)cached, (unsigned long long)ws->pages,
			(unsigned long long)present, (unsigned long long)popcount(dirty));
	CHECK(cached == ws->pages && present >= ws->pages && popcount(dirty) == 0);
	CHECK(!memcmp(slot, orig, MEM));
	munmap(slot, MEM);
	free(dirty);
}

/* The plan takes dense regions without written pages, inside the image, and no more. */
static void test_huge_plan(void)
{
	struct snap_range r[] = { { 512, 100 }, { 1024, 10 }, { 1100, 90 }, { 1536, 30 },
				  { 2040, 16 }, { 8150, 200 } };
	struct snap_range w[] = { { 1090, 1 } };
	struct snap_ws ws = { .nranges = 6, .r = r, .nwritten = 1, .w = w };
	struct snap_huge_plan plan;

	/* Regions: 1 dense; 2 dense but written; 3 sparse (38); 15 sparse; 16 past 32 MiB. */
	snap_ws_huge_plan(&ws, MEM, &plan);
	CHECK(plan.n == 1 && plan.region[0] == 1);
	r[3].count = 64;
	snap_ws_huge_plan(&ws, MEM, &plan);
	CHECK(plan.n == 2 && plan.region[0] == 1 && plan.region[1] == 3);
	snap_ws_huge_plan(&ws, 16ULL << 30, &plan);
	CHECK(plan.n == 3 && plan.region[2] == 16);
}

static int thp_on(void)
{
	char buf[128] = "";
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");

	if (f) {
		if (!fgets(buf, sizeof(buf), f))
			buf[0] = 0;
		fclose(f);
	}
	return buf[0] && !strstr(buf, "[never]");
}

/* KiB of [addr, addr + len) mapped by PMDs from files (smaps FilePmdMapped). */
static long file_pmd_kb(const void *addr)
{
	char line[256];
	unsigned long a, b;
	long kb = -1;
	int in = 0;
	FILE *f = fopen("/proc/self/smaps", "r");

	while (f && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' '))
			in = (uintptr_t)addr >= a && (uintptr_t)addr < b;
		else if (in && sscanf(line, "FilePmdMapped: %ld kB", &kb) == 1)
			break;
	}
	if (f)
		fclose(f);
	return kb;
}

/*
 * Written pages copied ahead and a dense region read whole: from an evicted cache the
 * mapping equals the image, exactly the written pages are private, and (where THP is
 * on) the dense region is mapped by one PMD, still a file page (shared).
 */
static void test_prefetch_written_huge(const struct snap_image *img, const struct snap_ws *rec)
{
	/* What was recorded (pages 5-6 and 40 written), plus a dense read-only region. */
	struct snap_range r[] = { { 5, 2 }, { 40, 1 }, { 3 * 512 + 7, 200 } };
	struct snap_ws dense = { .image = rec->image, .pages = 203, .nranges = 3, .r = r,
				 .nwritten = rec->nwritten, .w = rec->w }, *ws = &dense;
	uint64_t *dirty = calloc(NPAGES / 64, 8), want = 0;
	uint8_t *raw = mmap(NULL, MEM + SNAP_HUGE, PROT_NONE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	uint8_t *slot = (uint8_t *)(((uintptr_t)raw + SNAP_HUGE - 1) & ~(SNAP_HUGE - 1));
	struct snap_huge_plan plan;
	struct snap_err err;
	int same = 1;

	snap_ws_huge_plan(ws, MEM, &plan);
	CHECK(plan.n == 1 && plan.region[0] == 3);
	evict(img);
	CHECK(snap_image_map(img, slot, MEM, 0, &err) == 0);
	/* As the VMM does it: the fill first (a thread there), then the mapping. */
	CHECK(snap_ws_prefetch(img, ws, NULL, SNAP_FILL_READAHEAD,
			       SNAP_PF_WRITTEN | SNAP_PF_HUGE, &err) == 0);
	CHECK(snap_ws_prefetch(img, ws, slot, SNAP_FILL_NONE,
			       SNAP_PF_MAP | SNAP_PF_WRITTEN | SNAP_PF_HUGE, &err) == 0);
	snap_dirty_from_pagemap(-1, slot, MEM, dirty);
	for (uint32_t i = 0; i < ws->nwritten; i++) {
		want += ws->w[i].count;
		for (uint64_t k = 0; k < ws->w[i].count; k++)
			same &= bit(dirty, ws->w[i].gpn + k);
	}
	CHECK(same && popcount(dirty) == want);
	/* A read in the region maps it: one PMD when its folio is huge. */
	for (uint32_t i = 0; i < plan.n; i++) {
		uint64_t at = plan.region[i] * SNAP_HUGE + 100;

		same &= slot[at] == orig[at];
	}
	CHECK(same && !memcmp(slot, orig, MEM));
	if (thp_on())
		CHECK(file_pmd_kb(slot + plan.region[0] * SNAP_HUGE) >= 2048);
	else
		fprintf(stderr, "transparent huge pages off: huge folios not checked\n");
	memset(dirty, 0, NPAGES / 8);
	snap_dirty_from_pagemap(-1, slot, MEM, dirty);
	CHECK(popcount(dirty) == want);
	munmap(raw, MEM + SNAP_HUGE);
	free(dirty);
}

static void test_prefetch(struct snap_store *s)
{
	uint64_t *touched = calloc(NPAGES / 64, 8);
	uint8_t *slot = slot_create();
	struct snap_ws ws, exact, other;
	struct snap_image img;
	struct snap_err err;

	CHECK(snap_image_open(s, &id_base, &img, &err) == 0);
	CHECK(snap_image_map(&img, slot, MEM, 0, &err) == 0);
	touch(slot, touched, 1);
	/* Written pages (private copies) are recorded apart: pages 5, 6 and 40. */
	slot[5 * SNAP_PAGE] ^= 1;
	slot[6 * SNAP_PAGE + 9] ^= 1;
	slot[40 * SNAP_PAGE] ^= 1;
	CHECK(snap_ws_from_pagemap(-1, slot, MEM, &img.id, &ws) == 0);
	CHECK(ws.nwritten == 2 && ws.w[0].gpn == 5 && ws.w[0].count == 2 &&
	      ws.w[1].gpn == 40 && ws.w[1].count == 1);
	/* Fault-around may add neighbours; every touched page must be in. */
	snap_ws_from_bitmap(touched, NPAGES, &img.id, &exact);
	CHECK(ws.pages >= exact.pages && exact.pages > 250);
	CHECK(covers(&ws, touched));
	snap_ws_release(&exact);
	test_ws_file(&ws);
	munmap(slot, MEM);
	for (int fill = SNAP_FILL_READAHEAD; fill <= SNAP_FILL_MAP_SHARED; fill++)
		prefetch_with(&img, &ws, fill);
	test_prefetch_written_huge(&img, &ws);
	other = ws;
	other.image.b[0] ^= 1;
	CHECK(snap_ws_prefetch(&img, &other, NULL, SNAP_FILL_PREAD, 0, &err) == -ESTALE);
	snap_ws_release(&ws);
	snap_image_close(&img);
	free(touched);
}

int main(void)
{
	struct snap_store *s;
	struct snap_err err;
	char cmd[300];

	if (!mkdtemp(root) || snap_store_open(root, NULL, &s, &err))
		return 1;
	orig = calloc(1, MEM);
	for (uint64_t g = 0; g < NPAGES; g++)
		if (next() % 3)
			for (unsigned i = 0; i < SNAP_PAGE; i += 4)
				memcpy(orig + g * SNAP_PAGE + i, &(unsigned){ next() }, 4);
	id_base = build(s, orig, NULL, NULL);
	test_map_and_diff(s);
	test_huge_plan();
	test_prefetch(s);
	snap_store_close(s);
	free(orig);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
	if (system(cmd))
		return 1;
	return check_done();
}
