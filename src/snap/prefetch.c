/*
 * Working-set prefetch: bring a restore's pages into the page cache and the mapping
 * before the guest runs, so that its first request neither waits for the disk page by
 * page nor takes more guest page faults than it must (docs/snapshots.md, "Working set
 * record" and "Where an evicted image's restore loses the library's 24x").
 */
#include "snap_int.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/*
 * Ranges closer than this are read as one: fewer, larger requests. Every page between
 * them is read too, and an evicted restore is bound by the bytes it reads (a Python
 * hello's working set: 410 pages exact, 583 merged across gaps under 4, 814 under 8;
 * 4 measured 0.2-0.3 ms faster than 1, 2 or 8, and 16 1.4 ms slower than 8).
 */
#define MERGE_GAP	4
#define HUGE_PAGES	(SNAP_HUGE / SNAP_PAGE)

struct pf {
	const struct snap_image *img;
	uint8_t *mem;
	enum snap_fill fill;
	uint8_t *scratch;
	struct snap_huge_plan plan;
};

/* Brings the file's part of memory [mem_off, mem_off + len) in, from off in fd. */
static int fill_piece(int fd, uint64_t off, uint64_t mem_off, uint64_t len, void *arg)
{
	struct pf *pf = arg;
	void *p;

	switch (pf->fill) {
	case SNAP_FILL_READAHEAD:
		return readahead(fd, (off64_t)off, len) < 0 ? -errno : 0;
	case SNAP_FILL_FADVISE:
		return -posix_fadvise(fd, (off_t)off, (off_t)len, POSIX_FADV_WILLNEED);
	case SNAP_FILL_MAP_SHARED:
		p = mmap(NULL, len, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, (off_t)off);
		if (p == MAP_FAILED)
			return -errno;
		munmap(p, len);
		return 0;
	case SNAP_FILL_PREAD:
		for (uint64_t done = 0; done < len; done += 256 * SNAP_PAGE) {
			uint64_t k = len - done < 256 * SNAP_PAGE ? len - done : 256 * SNAP_PAGE;

			if (pread(fd, pf->scratch, k, (off_t)(off + done)) < 0)
				return -errno;
		}
		return 0;
	default:
		return -EINVAL;
	}
}

static int fill_run(struct pf *pf, uint64_t off, uint64_t len)
{
	if (pf->fill == SNAP_FILL_NONE)
		return 0;
	if (pf->fill == SNAP_FILL_MADVISE)
		return madvise(pf->mem + off, len, MADV_WILLNEED) < 0 ? -errno : 0;
	/* A split image: each piece from the file that holds it. */
	return snap__image_pieces(pf->img, off, len, fill_piece, pf);
}

static int in_plan(const struct snap_huge_plan *plan, uint64_t region)
{
	for (uint32_t i = 0; i < plan->n; i++)
		if (plan->region[i] == region)
			return 1;
	return 0;
}

/* Whether any page of [a, b) lies in one of the plan's huge regions. */
static int has_huge(const struct snap_huge_plan *plan, uint64_t a, uint64_t b)
{
	for (uint32_t i = 0; i < plan->n; i++)
		if (plan->region[i] * HUGE_PAGES < b && (plan->region[i] + 1) * HUGE_PAGES > a)
			return 1;
	return 0;
}

struct cursor {
	const struct snap_range *rg;
	uint32_t n, i;
	uint64_t pos;
};

/* The next stretch [*a, *b) of the ranges that lies outside the plan's huge regions. */
static int next_piece(struct cursor *c, const struct snap_huge_plan *plan, uint64_t *a,
		      uint64_t *b)
{
	while (c->i < c->n) {
		uint64_t s = c->rg[c->i].gpn, e = s + c->rg[c->i].count, stop;

		s = s > c->pos ? s : c->pos;
		if (s >= e) {
			c->i++;
			continue;
		}
		if (in_plan(plan, s / HUGE_PAGES)) {
			c->pos = (s / HUGE_PAGES + 1) * HUGE_PAGES;
			continue;
		}
		for (stop = (s / HUGE_PAGES + 1) * HUGE_PAGES; stop < e; stop += HUGE_PAGES)
			if (in_plan(plan, stop / HUGE_PAGES))
				break;
		*a = s;
		*b = c->pos = stop < e ? stop : e;
		return 1;
	}
	return 0;
}

/*
 * Calls fn on each run of ranges, merged across gaps shorter than merge pages, leaving
 * out the plan's huge regions (they are read and mapped whole) and stopping at the end
 * of the image.
 */
static int for_runs(const struct snap_range *rg, uint32_t n, struct pf *pf, uint64_t merge,
		    int (*fn)(uint64_t off, uint64_t len, struct pf *pf))
{
	uint64_t limit = pf->img->size / SNAP_PAGE, a, b, na = 0, nb = 0;
	struct cursor c = { rg, n, 0, 0 };
	int more, r;

	if (!next_piece(&c, &pf->plan, &a, &b))
		return 0;
	do {
		more = next_piece(&c, &pf->plan, &na, &nb);
		if (more && na < b + merge && !has_huge(&pf->plan, b, na)) {
			b = nb;
			continue;
		}
		if (a >= limit)
			return 0;
		r = fn(a * SNAP_PAGE, ((b < limit ? b : limit) - a) * SNAP_PAGE, pf);
		if (r)
			return r;
		a = na;
		b = nb;
	} while (more);
	return 0;
}

static int pf_fill(uint64_t off, uint64_t len, struct pf *pf)
{
	return fill_run(pf, off, len);
}

static int pf_map(uint64_t off, uint64_t len, struct pf *pf)
{
	/* Maps the file pages read-only: a later guest write still copies only its page. */
	return madvise(pf->mem + off, len, MADV_POPULATE_READ) < 0 ? -errno : 0;
}

static int pf_write(uint64_t off, uint64_t len, struct pf *pf)
{
	/* The private copy the guest's first write would make, made now. */
	return madvise(pf->mem + off, len, MADV_POPULATE_WRITE) < 0 ? -errno : 0;
}

/* How many pages of the sorted ranges lie in [first, end). */
static uint64_t pages_in(const struct snap_range *rg, uint32_t n, uint64_t first,
			 uint64_t end)
{
	uint64_t k = 0;

	for (uint32_t i = 0; i < n && rg[i].gpn < end; i++) {
		uint64_t a = rg[i].gpn > first ? rg[i].gpn : first;
		uint64_t b = rg[i].gpn + rg[i].count < end ? rg[i].gpn + rg[i].count : end;

		k += b > a ? b - a : 0;
	}
	return k;
}

void snap_ws_huge_plan(const struct snap_ws *ws, uint64_t size, struct snap_huge_plan *plan)
{
	uint64_t reg, last = UINT64_MAX, first, end;

	plan->n = 0;
	for (uint32_t i = 0; i < ws->nranges && plan->n < SNAP_HUGE_MAX; i++) {
		if (!ws->r[i].count)
			continue;
		for (reg = ws->r[i].gpn / HUGE_PAGES;
		     reg <= (ws->r[i].gpn + ws->r[i].count - 1) / HUGE_PAGES &&
		     plan->n < SNAP_HUGE_MAX; reg++) {
			first = reg * HUGE_PAGES;
			end = first + HUGE_PAGES;
			if (reg == last || end * SNAP_PAGE > size)
				continue;
			last = reg;
			if (pages_in(ws->r, ws->nranges, first, end) >= SNAP_HUGE_MIN_PAGES &&
			    !pages_in(ws->w, ws->nwritten, first, end))
				plan->region[plan->n++] = reg;
		}
	}
}

struct huge_job {
	int fd;
	uint64_t off;
	pthread_t t;
	int started;
};

/*
 * A fault on a MADV_HUGEPAGE file mapping reads the whole aligned 2 MiB as one folio
 * (MADV_RANDOM: that one only, not the next as well); readahead(2) and fadvise would
 * read small folios, which no process can then map with one PMD.
 */
static void *huge_read(void *arg)
{
	struct huge_job *j = arg;
	uint8_t *raw, *p;

	raw = mmap(NULL, 2 * SNAP_HUGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		   -1, 0);
	if (raw == MAP_FAILED)
		return NULL;
	p = (uint8_t *)(((uintptr_t)raw + SNAP_HUGE - 1) & ~(uintptr_t)(SNAP_HUGE - 1));
	if (mmap(p, SNAP_HUGE, PROT_READ, MAP_SHARED | MAP_FIXED, j->fd, (off_t)j->off) !=
	    MAP_FAILED && !madvise(p, SNAP_HUGE, MADV_HUGEPAGE) &&
	    !madvise(p, SNAP_HUGE, MADV_RANDOM))
		madvise(p, SNAP_PAGE, MADV_POPULATE_READ);
	munmap(raw, 2 * SNAP_HUGE);
	return NULL;
}

/*
 * The file a 2 MiB region comes from whole: fd, or -1 when a split image's top layer
 * has pages in it. A huge folio and the one PMD that maps it need the whole region
 * from one file at an offset aligned as the region is (the top-layer file packs its
 * runs, so only the parent's image qualifies).
 */
static int region_fd(const struct snap_image *img, uint64_t region)
{
	uint64_t a = region * HUGE_PAGES, b = a + HUGE_PAGES;

	for (uint32_t i = 0; i < img->nruns && img->runs[i].gpn < b; i++)
		if (img->runs[i].gpn + img->runs[i].count > a)
			return -1;
	return img->fd;
}

/* Leaves out the regions with top-layer pages of a split image. */
static void plan_one_file(struct snap_huge_plan *plan, const struct snap_image *img)
{
	uint32_t k = 0;

	if (img->top_fd < 0)
		return;
	for (uint32_t i = 0; i < plan->n; i++)
		if (region_fd(img, plan->region[i]) >= 0)
			plan->region[k++] = plan->region[i];
	plan->n = k;
}

/* One thread per region: each fault waits for its own read, so they go in parallel. */
static void huge_start(const struct pf *pf, struct huge_job *jobs)
{
	for (uint32_t i = 0; i < pf->plan.n; i++) {
		jobs[i] = (struct huge_job){ .fd = region_fd(pf->img, pf->plan.region[i]),
					     .off = pf->plan.region[i] * SNAP_HUGE };
		jobs[i].started = !pthread_create(&jobs[i].t, NULL, huge_read, &jobs[i]);
		if (!jobs[i].started)
			huge_read(&jobs[i]);
	}
}

static void huge_wait(const struct pf *pf, struct huge_job *jobs)
{
	for (uint32_t i = 0; i < pf->plan.n; i++)
		if (jobs[i].started)
			pthread_join(jobs[i].t, NULL);
}

/*
 * The guest mapping's huge regions: a fault there maps the cached 2 MiB folio with one
 * PMD (KVM then maps it with one 2 MiB entry where the guest's page is 2 MiB too), or
 * reads it so if it is not cached. Advice only: without THP it changes nothing.
 */
static void huge_advise(const struct pf *pf)
{
	for (uint32_t i = 0; i < pf->plan.n; i++) {
		uint8_t *p = pf->mem + pf->plan.region[i] * SNAP_HUGE;

		madvise(p, SNAP_HUGE, MADV_HUGEPAGE);
		madvise(p, SNAP_HUGE, MADV_RANDOM);
	}
}

/* The written pages' reads, issued beside the others. */
struct written_job {
	struct pf *pf;
	const struct snap_ws *ws;
	int r;
};

static void *fill_written(void *arg)
{
	struct written_job *j = arg;

	j->r = for_runs(j->ws->w, j->ws->nwritten, j->pf, MERGE_GAP, pf_fill);
	return NULL;
}

static int fill(struct pf *pf, const struct snap_ws *ws, unsigned flags)
{
	struct huge_job jobs[SNAP_HUGE_MAX];
	struct written_job wj = { pf, ws, 0 };
	pthread_t t;
	int r = 0, threaded = 0;

	if (pf->fill == SNAP_FILL_NONE)
		return 0;
	huge_start(pf, jobs);
	/*
	 * The written pages on a thread of their own (a restore copies them first), the
	 * rest here: issuing a few hundred reads takes 1-2 ms of system calls, and the
	 * device can work on both lists at once. (pread shares one scratch buffer.)
	 */
	if ((flags & SNAP_PF_WRITTEN) && pf->fill != SNAP_FILL_PREAD)
		threaded = !pthread_create(&t, NULL, fill_written, &wj);
	if ((flags & SNAP_PF_WRITTEN) && !threaded)
		r = for_runs(ws->w, ws->nwritten, pf, MERGE_GAP, pf_fill);
	if (!r)
		r = for_runs(ws->r, ws->nranges, pf, MERGE_GAP, pf_fill);
	if (threaded) {
		pthread_join(t, NULL);
		r = r ? r : wj.r;
	}
	huge_wait(pf, jobs);
	return r;
}

int snap_ws_prefetch(const struct snap_image *img, const struct snap_ws *ws, uint8_t *mem,
		     enum snap_fill how, unsigned flags, struct snap_err *err)
{
	struct pf pf = { img, mem, how, NULL, { 0 } };
	int r;

	if (memcmp(&ws->image, &img->id, sizeof(img->id)))
		return snap__fail(err, ESTALE, "prefetch: working set recorded on another image");
	if ((flags & SNAP_PF_HUGE) && (!mem || (uintptr_t)mem % SNAP_HUGE == 0)) {
		snap_ws_huge_plan(ws, img->size, &pf.plan);
		plan_one_file(&pf.plan, img);
	}
	if (how == SNAP_FILL_PREAD && !(pf.scratch = malloc(256 * SNAP_PAGE)))
		return snap__fail(err, ENOMEM, "prefetch: out of memory");
	r = fill(&pf, ws, flags);
	free(pf.scratch);
	if (r)
		return snap__fail(err, -r, "prefetch: %s", strerror(-r));
	if (!mem)
		return 0;
	huge_advise(&pf);
	/* Exact ranges: merging would copy unwritten pages between them too. */
	if (flags & SNAP_PF_WRITTEN)
		r = for_runs(ws->w, ws->nwritten, &pf, 0, pf_write);
	if (!r && (flags & SNAP_PF_MAP))
		r = for_runs(ws->r, ws->nranges, &pf, MERGE_GAP, pf_map);
	if (r)
		return snap__fail(err, -r, "prefetch: populate: %s", strerror(-r));
	return 0;
}
