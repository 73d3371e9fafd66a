/*
 * Split restore images: the parent chain's image (shared by every layer on that
 * parent, so by every function of a runtime) plus a file of the top layer's own pages,
 * packed run after run, mapped over it run by run. Two functions of one runtime then
 * map the same runtime pages from the page cache. Layout: docs/snapshots.md.
 */
#include "snap_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#define TOP_MAGIC	"STOKTOPL"
#define TOP_VERSION	1u
#define TOP_HDR		96	/* after the runs: magic .. pages, then the SHA-256 */
#define TOP_TAIL	(TOP_HDR + 32)
/* Far more runs than a layer of a 64 GiB guest could have: a sanity bound. */
#define TOP_MAX_RUNS	(1u << 22)

static void top_name(const struct snap_id *top, char name[80])
{
	char hex[65];

	snap_id_hex(top, hex);
	snprintf(name, 80, "%s.top", hex);
}

/*
 * The runs of contiguous entries (zero entries included: they read as holes), each
 * packed after the one before in the file.
 */
static struct snap_image_run *runs_of(const struct snap_layer_entry *e, uint64_t ne,
				      uint32_t *n)
{
	struct snap_image_run *r = malloc((ne ? ne : 1) * sizeof(*r));
	uint32_t k = 0;

	if (!r)
		return NULL;
	for (uint64_t i = 0; i < ne; i++) {
		if (k && r[k - 1].gpn + r[k - 1].count == e[i].gpn)
			r[k - 1].count++;
		else
			r[k++] = (struct snap_image_run){ e[i].gpn, 1, i };
	}
	*n = k;
	return r;
}

/* The parent's page at gpn in its flattened entries (zero id: a hole). */
static struct snap_id parent_page(const struct snap_layer_entry *pe, uint64_t pn,
				  uint64_t gpn)
{
	uint64_t lo = 0, hi = pn;
	struct snap_id zero = { { 0 } };

	while (lo < hi) {
		uint64_t mid = lo + (hi - lo) / 2;

		if (pe[mid].gpn < gpn)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < pn && pe[lo].gpn == gpn ? pe[lo].page : zero;
}

/*
 * The layer's entries with the gaps of at most gap pages between them filled with the
 * parent's pages: fewer runs (each one an mmap and two memory areas per restore) for a
 * few of the parent's pages held twice.
 */
static int fill_gaps(struct snap_store *s, const struct snap_layer *l, uint64_t gap,
		     struct snap_layer_entry **out, uint64_t *nout, struct snap_err *err)
{
	struct snap_layer_entry *pe = NULL, *e;
	uint64_t pn = 0, k = 0, extra = 0;
	int r;

	for (uint64_t i = 1; i < l->n; i++)
		if (l->e[i].gpn - l->e[i - 1].gpn - 1 <= gap)
			extra += l->e[i].gpn - l->e[i - 1].gpn - 1;
	if (!(e = malloc((l->n + extra + 1) * sizeof(*e))))
		return snap__fail(err, ENOMEM, "image: out of memory");
	if (extra && (r = snap__flatten(s, &l->parent, &pe, &pn, err))) {
		free(e);
		return r;
	}
	for (uint64_t i = 0; i < l->n; i++) {
		if (i && l->e[i].gpn - l->e[i - 1].gpn - 1 <= gap)
			for (uint64_t g = l->e[i - 1].gpn + 1; g < l->e[i].gpn; g++)
				e[k++] = (struct snap_layer_entry){ g, parent_page(pe, pn, g) };
		e[k++] = l->e[i];
	}
	free(pe);
	*out = e;
	*nout = k;
	return 0;
}

/* The tail after mem_bytes: runs, header, SHA-256 of both. */
static uint8_t *encode_tail(const struct snap_layer *l, const struct snap_image_run *runs,
			    uint32_t n, uint64_t pages, size_t *len)
{
	size_t rl = (size_t)n * 16;
	uint8_t *t = calloc(1, rl + TOP_TAIL), *h;
	struct snap_id sum;

	if (!t)
		return NULL;
	h = t + rl;
	for (uint32_t i = 0; i < n; i++) {
		snap__put64(t + 16 * i, runs[i].gpn);
		snap__put64(t + 16 * i + 8, runs[i].count);
	}
	memcpy(h, TOP_MAGIC, 8);
	snap__put32(h + 8, TOP_VERSION);
	snap__put32(h + 12, n);
	snap__put64(h + 16, l->mem_bytes);
	memcpy(h + 24, l->id.b, 32);
	memcpy(h + 56, l->parent.b, 32);
	snap__put64(h + 88, pages);
	snap__sha256(t, rl + TOP_HDR, &sum);
	memcpy(h + TOP_HDR, sum.b, 32);
	*len = rl + TOP_TAIL;
	return t;
}

static int assemble_top(struct snap_store *s, const struct snap_id *chain, const char *name,
			struct snap_err *err)
{
	struct snap_layer_entry *e = NULL;
	struct snap_image_run *runs = NULL;
	struct snap_layer l;
	uint8_t *tail = NULL;
	size_t len = 0;
	uint64_t ne = 0;
	uint32_t n = 0;
	int r;

	r = snap_layer_read(s, &chain[0], &l, err);
	if (r)
		return r;
	if (!l.has_parent || memcmp(&l.parent, &chain[1], sizeof(l.parent)))
		r = snap__fail(err, EINVAL, "image %s: the layer's parent is not the chain's",
			       name);
	if (!r)
		r = fill_gaps(s, &l, SNAP_SPLIT_GAP, &e, &ne, err);
	if (!r && (!(runs = runs_of(e, ne, &n)) ||
		   !(tail = encode_tail(&l, runs, n, ne, &len))))
		r = snap__fail(err, ENOMEM, "image %s: out of memory", name);
	/* Packed: entry i is the file's page i. */
	for (uint64_t i = 0; !r && i < ne; i++)
		e[i].gpn = i;
	if (!r)
		r = snap__image_write(s, name, e, ne, ne * SNAP_PAGE, tail, len, err);
	free(tail);
	free(runs);
	free(e);
	snap_layer_release(&l);
	return r;
}

/* Sorted, disjoint, inside memory, separated (else they would be one), pages in all. */
static int check_runs(const struct snap_image_run *r, uint32_t n, uint64_t npages,
		      uint64_t pages)
{
	uint64_t end = 0, sum = 0;

	for (uint32_t i = 0; i < n; i++) {
		if (!r[i].count || r[i].gpn < end || (i && r[i].gpn == end) ||
		    r[i].gpn >= npages || r[i].count > npages - r[i].gpn)
			return -EINVAL;
		end = r[i].gpn + r[i].count;
		sum += r[i].count;
	}
	return sum == pages ? 0 : -EINVAL;
}

/* The runs of the tail t (n of them), with the file page each starts at. */
static int decode_runs(const uint8_t *t, uint32_t n, struct snap_image *img)
{
	uint64_t at = 0;

	img->runs = malloc((n ? n : 1) * sizeof(*img->runs));
	if (!img->runs)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++) {
		img->runs[i] = (struct snap_image_run){ snap__get64(t + 16 * i),
							snap__get64(t + 16 * i + 8), at };
		at += img->runs[i].count;
	}
	return 0;
}

/* Reads and checks the tail of a top-layer file of size bytes into img. */
static int read_tail(int fd, uint64_t size, const struct snap_id *top, struct snap_image *img)
{
	uint8_t h[TOP_TAIL], *t;
	uint64_t mem, rl, pages;
	struct snap_id sum;
	uint32_t n;
	int r;

	if (size < TOP_TAIL || snap__pread_all(fd, h, TOP_TAIL, size - TOP_TAIL))
		return -ENODATA;
	if (memcmp(h, TOP_MAGIC, 8))
		return -ENOEXEC;
	if (snap__get32(h + 8) != TOP_VERSION)
		return -EPROTONOSUPPORT;
	n = snap__get32(h + 12);
	mem = snap__get64(h + 16);
	pages = snap__get64(h + 88);
	rl = (uint64_t)n * 16;
	if (n > TOP_MAX_RUNS || mem % SNAP_PAGE || pages > mem / SNAP_PAGE ||
	    size != pages * SNAP_PAGE + rl + TOP_TAIL)
		return -ENODATA;
	if (memcmp(h + 24, top->b, 32))
		return -ESTALE;
	if (!(t = malloc(rl + TOP_HDR)))
		return -ENOMEM;
	r = snap__pread_all(fd, t, rl + TOP_HDR, pages * SNAP_PAGE);
	if (!r) {
		snap__sha256(t, rl + TOP_HDR, &sum);
		r = memcmp(sum.b, h + TOP_HDR, 32) ? -EBADMSG : 0;
	}
	if (!r)
		r = decode_runs(t, n, img);
	if (!r && !(r = check_runs(img->runs, n, mem / SNAP_PAGE, pages))) {
		img->nruns = n;
		img->size = mem;
		memcpy(img->parent.b, h + 56, 32);
	}
	free(t);
	return r;
}

/* Opens and checks top's cached file: -ENOENT when there is none. */
static int open_top(struct snap_store *s, const struct snap_id *top, struct snap_image *img)
{
	char name[80];
	uint64_t size;
	int r;

	memset(img, 0, sizeof(*img));
	img->fd = -1;
	img->id = *top;
	top_name(top, name);
	r = snap__image_open_file(s, name, &img->top_fd, &size);
	if (r)
		return img->top_fd = -1, r;
	r = read_tail(img->top_fd, size, top, img);
	if (r)
		snap_image_close(img);
	return r;
}

/* The parent's image under the top layer: its size must be the guest's memory. */
static int attach_parent(struct snap_store *s, struct snap_image *img, int assemble,
			 struct snap_err *err)
{
	struct snap_image p;
	char name[80], hex[65];
	int r;

	snap_id_hex(&img->parent, hex);
	snprintf(name, sizeof(name), "%s.img", hex);
	memset(&p, 0, sizeof(p));
	p.top_fd = -1;
	if (assemble)
		r = snap_image_open(s, &img->parent, &p, err);
	else
		r = snap__image_open_file(s, name, &p.fd, &p.size);
	if (r)
		return r;
	if (p.size != img->size) {
		snap_image_close(&p);
		return snap__fail(err, EINVAL, "image %s: %llu bytes, the layer on it %llu",
				  name, (unsigned long long)p.size,
				  (unsigned long long)img->size);
	}
	img->fd = p.fd;
	img->built |= p.built;
	return 0;
}

int snap_image_open_chain(struct snap_store *s, const struct snap_id *chain, uint32_t n,
			  struct snap_image *img, struct snap_err *err)
{
	char name[80];
	int r, damaged = 0;

	if (n < 3)
		return snap_image_open(s, &chain[0], img, err);
	r = open_top(s, &chain[0], img);
	if (!r && memcmp(&img->parent, &chain[1], sizeof(img->parent))) {
		snap_image_close(img);
		r = -ESTALE;
	}
	if (r) {
		/* Derived data: a missing or damaged file is assembled again. */
		damaged = r == -ENOENT ? 0 : r;
		top_name(&chain[0], name);
		r = snap__lock(s, 0);
		if (r)
			return snap__fail(err, -r, "image %s: store lock: %s", name,
					  strerror(-r));
		r = assemble_top(s, chain, name, err);
		snap__unlock(s);
		if (!r && (r = open_top(s, &chain[0], img)))
			return snap__fail(err, -r, "image %s: %s", name, strerror(-r));
		if (r)
			return r;
		img->built = 1;
	}
	img->damaged = damaged;
	r = attach_parent(s, img, 1, err);
	if (r)
		snap_image_close(img);
	return r;
}

int snap_image_find(struct snap_store *s, const struct snap_id *top, struct snap_image *img)
{
	char name[80], hex[65];
	int r = open_top(s, top, img);

	if (!r && (r = attach_parent(s, img, 0, NULL)))
		snap_image_close(img);
	if (r != -ENOENT)
		return r;
	memset(img, 0, sizeof(*img));
	img->id = *top;
	img->top_fd = -1;
	snap_id_hex(top, hex);
	snprintf(name, sizeof(name), "%s.img", hex);
	return snap__image_open_file(s, name, &img->fd, &img->size);
}

/* The index of the first run that ends after page gpn (nruns if none). */
static uint32_t run_after(const struct snap_image *img, uint64_t gpn)
{
	uint32_t lo = 0, hi = img->nruns;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (img->runs[mid].gpn + img->runs[mid].count <= gpn)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

int snap__image_runs(const struct snap_image *img, uint64_t off, uint64_t len,
		     snap__piece_fn fn, void *arg)
{
	uint64_t end = off + len;
	int r;

	for (uint32_t i = run_after(img, off / SNAP_PAGE); i < img->nruns; i++) {
		const struct snap_image_run *run = &img->runs[i];
		uint64_t a = run->gpn * SNAP_PAGE, b = a + run->count * SNAP_PAGE;
		uint64_t base = run->file_page * SNAP_PAGE;

		if (a >= end)
			break;
		a = a > off ? a : off;
		b = b < end ? b : end;
		r = fn(img->top_fd, base + a - run->gpn * SNAP_PAGE, a, b - a, arg);
		if (r)
			return r;
	}
	return 0;
}

/* Calls fn for the parent's part [at, a) of a split image (nothing if empty). */
static int parent_piece(const struct snap_image *img, uint64_t at, uint64_t a,
			snap__piece_fn fn, void *arg)
{
	return a > at ? fn(img->fd, at, at, a - at, arg) : 0;
}

int snap__image_pieces(const struct snap_image *img, uint64_t off, uint64_t len,
		       snap__piece_fn fn, void *arg)
{
	uint64_t end = off + len, at = off;
	int r;

	for (uint32_t i = run_after(img, off / SNAP_PAGE); at < end && i < img->nruns; i++) {
		const struct snap_image_run *run = &img->runs[i];
		uint64_t a = run->gpn * SNAP_PAGE, b = a + run->count * SNAP_PAGE;
		uint64_t base = run->file_page * SNAP_PAGE;

		a = a > at ? a : at;
		b = b < end ? b : end;
		if (a >= end)
			break;
		if ((r = parent_piece(img, at, a, fn, arg)))
			return r;
		r = fn(img->top_fd, base + a - run->gpn * SNAP_PAGE, a, b - a, arg);
		if (r)
			return r;
		at = b;
	}
	return parent_piece(img, at, end, fn, arg);
}
