/*
 * Snapshot storage benchmark: layer build time (dirty bitmap vs full comparison),
 * bytes stored and dedup across two functions on one runtime, image assembly, and
 * restore map+touch of a working set from a warm or evicted page cache, with each
 * prefetch method. Host side only: no VM runs here, so guest shadow faults (about
 * 25 us per first-touched page on this machine) come on top of these numbers.
 *
 * bench_snapshot [-m MiB] [-n runs] [-d dir] [-o out.json] [-i memory-image]
 *
 * -i adds a section on a real guest memory image (a sparse file of guest memory, such
 * as the python3 snapshot written by shared/probes/kvm/snapshot): its allocated extents
 * are the dirty bitmap.
 */
#include "snap/snap.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LIBDIR		"/usr/lib/x86_64-linux-gnu"
#define MAX_RUNS	10000

struct opts {
	uint64_t mem;
	int runs;
	const char *dir;
	const char *out;
	const char *image;
};

static struct opts o = { 128ULL << 20, 200, NULL, "bench/results/snapshot.json", NULL };
static uint64_t npages;
static unsigned rng = 2026;
static FILE *json;
static int json_first = 1;

static unsigned next(void)
{
	rng = rng * 1103515245 + 12345;
	return rng >> 8;
}

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double pct(double *v, int n, double p)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	return v[(int)(p / 100.0 * (n - 1) + 0.5)];
}

static void die(const char *what, const struct snap_err *err)
{
	fprintf(stderr, "bench_snapshot: %s: %s\n", what, err ? err->msg : strerror(errno));
	exit(1);
}

static void json_num(const char *key, double v)
{
	fprintf(json, "%s\n  \"%s\": %.4g", json_first ? "{" : ",", key, v);
	json_first = 0;
}

static void json_dist(const char *key, double *v, int n)
{
	double p50 = pct(v, n, 50), p99 = pct(v, n, 99);

	fprintf(json, "%s\n  \"%s\": {\"p50\": %.4g, \"p99\": %.4g, \"runs\": %d}",
		json_first ? "{" : ",", key, p50, p99, n);
	json_first = 0;
}

static uint8_t *libs;		/* pages of the machine's shared libraries */
static uint64_t nlibs;

/*
 * Reads the machine's shared libraries page by page: real code and data compress and
 * repeat the way a runtime's memory does, unlike random bytes.
 */
static void load_libs(uint64_t want)
{
	DIR *dir = opendir(LIBDIR);
	struct dirent *d;
	char path[512];

	libs = calloc(want, SNAP_PAGE);
	while (dir && nlibs < want && (d = readdir(dir))) {
		ssize_t n = 1;
		int fd;

		if (!strstr(d->d_name, ".so"))
			continue;
		snprintf(path, sizeof(path), "%s/%s", LIBDIR, d->d_name);
		fd = open(path, O_RDONLY);
		while (fd >= 0 && nlibs < want && n > 0) {
			n = read(fd, libs + nlibs * SNAP_PAGE, SNAP_PAGE);
			nlibs += n > 0;
		}
		if (fd >= 0)
			close(fd);
	}
	if (dir)
		closedir(dir);
}

/* A heap-like page: small records with pointers and counters, tagged. */
static void heap_page(uint8_t *p, unsigned tag)
{
	uint64_t *w = (uint64_t *)p;

	for (unsigned i = 0; i < SNAP_PAGE / 8; i++)
		w[i] = i % 4 == 0 ? 0x7f0000400000ULL + (next() % 65536) * 16 :
		       i % 4 == 1 ? tag + i : i % 4 == 2 ? next() % 100 : 0;
}

struct world {
	struct snap_store *s;
	uint8_t *base, *rt;
	struct snap_id id_base, id_rt;
	uint64_t *dirty;
	unsigned tag;
};

static void set_bit(uint64_t *bm, uint64_t g)
{
	bm[g / 64] |= 1ULL << (g % 64);
}

static uint64_t nonzero_pages(const uint8_t *mem)
{
	static const uint8_t zero[SNAP_PAGE];
	uint64_t n = 0;

	for (uint64_t g = 0; g < npages; g++)
		n += !!memcmp(mem + g * SNAP_PAGE, zero, SNAP_PAGE);
	return n;
}

static struct snap_layer_info build(struct world *w, const uint8_t *mem,
				    const struct snap_id *parent, const uint64_t *dirty,
				    double *ms)
{
	struct snap_layer_src src = { .mem = mem, .mem_bytes = o.mem, .parent = parent,
				      .dirty = dirty };
	struct snap_layer_info info;
	struct snap_err err;
	double t = now_ms();

	if (snap_layer_build(w->s, &src, &info, &err))
		die("layer build", &err);
	if (ms)
		*ms = now_ms() - t;
	return info;
}

/* Base: 4 MiB of libraries; runtime: 13 MiB more and 2 MiB of heap (17.7 MiB in all). */
static void make_world(struct world *w)
{
	struct snap_layer_info info;
	struct snap_image img;
	struct snap_err err;
	double ms;

	w->base = calloc(1, o.mem);
	memcpy(w->base + 512 * SNAP_PAGE, libs, 1024 * SNAP_PAGE);
	info = build(w, w->base, NULL, NULL, &ms);
	w->id_base = info.id;
	printf("%-44s %9.1f ms  %6llu pages, %6.1f MiB written\n", "base layer (full scan)",
	       ms, (unsigned long long)info.pages, (double)info.bytes_new / 1048576);
	json_num("base_layer_build_ms", ms);
	w->rt = malloc(o.mem);
	memcpy(w->rt, w->base, o.mem);
	w->dirty = calloc(npages / 64, 8);
	memcpy(w->rt + 1536 * SNAP_PAGE, libs + 1024 * SNAP_PAGE, 3400 * SNAP_PAGE);
	for (uint64_t g = 1536; g < 1536 + 3400; g++)
		set_bit(w->dirty, g);
	for (uint64_t g = npages - 1024; g < npages - 512; g++) {
		heap_page(w->rt + g * SNAP_PAGE, (unsigned)g);
		set_bit(w->dirty, g);
	}
	if (snap_image_open(w->s, &w->id_base, &img, &err))
		die("base image", &err);
	snap_image_close(&img);
	info = build(w, w->rt, &w->id_base, w->dirty, &ms);
	w->id_rt = info.id;
	printf("%-44s %9.1f ms  %6llu pages, %6.1f MiB written\n", "runtime layer (bitmap)",
	       ms, (unsigned long long)info.pages, (double)info.bytes_new / 1048576);
	json_num("runtime_layer_build_ms", ms);
	json_num("runtime_nonzero_pages", (double)nonzero_pages(w->rt));
	if (snap_image_open(w->s, &w->id_rt, &img, &err))
		die("runtime image", &err);
	snap_image_close(&img);
}

/* A function's memory: the runtime with n pages rewritten (heap-like), bitmap set. */
static uint8_t *make_fn(struct world *w, uint64_t n, unsigned tag, uint64_t *dirty)
{
	uint8_t *m = malloc(o.mem);
	unsigned saved = rng;

	memcpy(m, w->rt, o.mem);
	memset(dirty, 0, npages / 8);
	rng = tag;
	for (uint64_t i = 0; i < n; i++) {
		uint64_t g = 512 + next() % (npages - 512);

		heap_page(m + g * SNAP_PAGE, tag * 131 + (unsigned)i);
		set_bit(dirty, g);
	}
	rng = saved;
	return m;
}

#define REPS	5

static void bench_fn_layers(struct world *w)
{
	static const uint64_t sizes[] = { 75, 1000, 10000 };
	uint64_t *dirty = calloc(npages / 64, 8);
	double t[REPS], bytes = 0;
	char key[80], label[80];

	for (int k = 0; k < 4; k++) {
		uint64_t n = sizes[k < 3 ? k : 1];
		int full = k == 3;

		for (int r = 0; r < REPS; r++) {
			uint8_t *m = make_fn(w, n, ++w->tag, dirty);
			struct snap_layer_info info = build(w, m, &w->id_rt, full ? NULL : dirty,
							    &t[r]);

			bytes = (double)info.bytes_new / (double)(info.pages_new ? info.pages_new : 1);
			free(m);
		}
		snprintf(label, sizeof(label), "function layer, %llu dirty pages (%s)",
			 (unsigned long long)n, full ? "full compare" : "bitmap");
		printf("%-44s %9.1f ms  median of %d; %.0f bytes per stored page\n", label,
		       pct(t, REPS, 50), REPS, bytes);
		snprintf(key, sizeof(key), "layer_build_ms_%llu_dirty%s", (unsigned long long)n,
			 full ? "_full_compare" : "");
		json_num(key, pct(t, REPS, 50));
	}
	json_num("stored_bytes_per_page", bytes);
	free(dirty);
}

/* Two functions on one runtime, 300 pages of their own and 75 identical ones. */
static void bench_dedup(struct world *w)
{
	uint64_t *da = calloc(npages / 64, 8), *db = calloc(npages / 64, 8);
	uint8_t *fa = make_fn(w, 375, 900001, da), *fb = make_fn(w, 75, 900001, db);
	struct snap_layer_info ia, ib;
	double logical, stored, ratio;
	uint64_t rt_pages;
	unsigned saved = rng;

	rt_pages = nonzero_pages(w->rt);
	rng = 777;
	for (int i = 0; i < 300; i++) {
		uint64_t g = 512 + next() % (npages - 512);

		heap_page(fb + g * SNAP_PAGE, 555000 + (unsigned)i);
		set_bit(db, g);
	}
	rng = saved;
	ia = build(w, fa, &w->id_rt, da, NULL);
	ib = build(w, fb, &w->id_rt, db, NULL);
	logical = (double)(nonzero_pages(fa) + nonzero_pages(fb));
	/* The store holds the runtime chain once plus what each function added. */
	stored = (double)rt_pages + (double)(ia.pages_new + ib.pages_new);
	ratio = logical / stored;
	printf("%-44s %9.2f x  %.0f pages in two snapshots, %.0f stored; layers %llu + %llu "
	       "pages (%.0f + %.0f KiB new)\n", "dedup, two functions on one runtime", ratio,
	       logical, stored, (unsigned long long)ia.pages, (unsigned long long)ib.pages,
	       (double)ia.bytes_new / 1024, (double)ib.bytes_new / 1024);
	json_num("dedup_ratio_two_functions", ratio);
	json_num("function_layer_pages", (double)ia.pages);
	json_num("function_layer_bytes_stored", (double)ia.bytes_new);
	json_num("second_function_layer_bytes_stored", (double)ib.bytes_new);
	free(fa);
	free(fb);
	free(da);
	free(db);
}

static struct snap_id bench_assembly(struct world *w, uint8_t **fn_mem)
{
	uint64_t *dirty = calloc(npages / 64, 8);
	struct snap_layer_info info;
	struct snap_image img;
	struct snap_err err;
	char hex[65], name[4200];
	double t[REPS];
	struct stat st;

	*fn_mem = make_fn(w, 300, 424242, dirty);
	info = build(w, *fn_mem, &w->id_rt, dirty, NULL);
	snap_id_hex(&info.id, hex);
	snprintf(name, sizeof(name), "%s/images/%s.img", o.dir, hex);
	for (int r = 0; r < REPS; r++) {
		double t0;

		unlink(name);	/* absent the first time */
		t0 = now_ms();
		if (snap_image_open(w->s, &info.id, &img, &err))
			die("image", &err);
		t[r] = now_ms() - t0;
		fstat(img.fd, &st);
		snap_image_close(&img);
	}
	printf("%-44s %9.1f ms  median of %d; %llu MiB file, %.1f MiB allocated\n",
	       "image assembly (3 layers)", pct(t, REPS, 50), REPS,
	       (unsigned long long)(o.mem >> 20), (double)st.st_blocks * 512 / 1048576);
	json_num("image_assembly_ms", pct(t, REPS, 50));
	json_num("image_allocated_mib", (double)st.st_blocks * 512 / 1048576);
	free(dirty);
	return info.id;
}

/* About 310 pages in clusters over the non-zero memory, as python3's first request. */
static void make_ws(const uint8_t *mem, const struct snap_id *image, struct snap_ws *ws,
		    uint64_t *writes, int *nwrites)
{
	uint64_t *bm = calloc(npages / 64, 8), n = 0;
	static const uint8_t zero[SNAP_PAGE];

	*nwrites = 0;
	while (n < 310) {
		uint64_t g = 512 + next() % (npages - 512), len = 1 + next() % 8;

		if (!memcmp(mem + g * SNAP_PAGE, zero, SNAP_PAGE))
			continue;
		for (uint64_t k = 0; k < len && g + k < npages && n < 310; k++, n++) {
			set_bit(bm, g + k);
			if (*nwrites < 75 && next() % 4 == 0)
				writes[(*nwrites)++] = g + k;
		}
	}
	snap_ws_from_bitmap(bm, npages, image, ws);
	free(bm);
}

struct variant {
	const char *name;
	int evict;
	int prefetch;
	enum snap_fill fill;
	unsigned flags;
};

static const struct variant variants[] = {
	{ "warm_lazy", 0, 0, SNAP_FILL_NONE, 0 },
	{ "warm_prefetch", 0, 1, SNAP_FILL_DEFAULT, SNAP_PF_DEFAULT },
	{ "evicted_lazy", 1, 0, SNAP_FILL_NONE, 0 },
	{ "evicted_readahead", 1, 1, SNAP_FILL_READAHEAD, 0 },
	{ "evicted_readahead_populate", 1, 1, SNAP_FILL_READAHEAD, SNAP_PF_MAP },
	{ "evicted_fadvise_populate", 1, 1, SNAP_FILL_FADVISE, SNAP_PF_MAP },
	{ "evicted_pread_populate", 1, 1, SNAP_FILL_PREAD, SNAP_PF_MAP },
	{ "evicted_madvise_populate", 1, 1, SNAP_FILL_MADVISE, SNAP_PF_MAP },
	{ "evicted_map_shared_populate", 1, 1, SNAP_FILL_MAP_SHARED, SNAP_PF_MAP },
	{ "evicted_populate_only", 1, 1, SNAP_FILL_NONE, SNAP_PF_MAP },
};

struct restore {
	struct snap_image img;
	struct snap_ws ws;
	uint64_t writes[75];
	int nwrites;
	uint8_t *slot;
};

/* One restore: map the image over the slot, prefetch, touch the working set. */
static double restore_once(struct restore *rs, const struct variant *v)
{
	volatile uint8_t sink = 0;
	struct snap_err err;
	double t0;

	/* Drop the previous restore's mapping (and its private pages) first. */
	mmap(rs->slot, o.mem, PROT_READ | PROT_WRITE,
	     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
	if (v->evict)
		posix_fadvise(rs->img.fd, 0, 0, POSIX_FADV_DONTNEED);
	t0 = now_ms();
	if (snap_image_map(&rs->img, rs->slot, o.mem, 0, &err))
		die("map", &err);
	if (v->prefetch && snap_ws_prefetch(&rs->img, &rs->ws, rs->slot, v->fill, v->flags,
					    &err))
		die("prefetch", &err);
	for (uint32_t i = 0; i < rs->ws.nranges; i++)
		for (uint64_t k = 0; k < rs->ws.r[i].count; k++)
			sink ^= rs->slot[(rs->ws.r[i].gpn + k) * SNAP_PAGE];
	for (int i = 0; i < rs->nwrites; i++)
		rs->slot[rs->writes[i] * SNAP_PAGE + 8] ^= 1;
	(void)sink;
	return now_ms() - t0;
}

static void bench_pagemap(struct restore *rs)
{
	uint64_t *bm = calloc(npages / 64, 8);
	double t[REPS * 4], d[REPS * 4];
	struct snap_ws ws;

	for (int r = 0; r < REPS * 4; r++) {
		double t0 = now_ms();

		snap_dirty_from_pagemap(-1, rs->slot, o.mem, bm);
		t[r] = now_ms() - t0;
		t0 = now_ms();
		snap_ws_from_pagemap(-1, rs->slot, o.mem, &rs->img.id, &ws);
		d[r] = now_ms() - t0;
		snap_ws_release(&ws);
	}
	printf("%-44s %9.2f ms  dirty bitmap; %.2f ms working set\n",
	       "pagemap scan of guest memory", pct(t, REPS * 4, 50), pct(d, REPS * 4, 50));
	json_num("pagemap_dirty_scan_ms", pct(t, REPS * 4, 50));
	json_num("pagemap_ws_record_ms", pct(d, REPS * 4, 50));
	free(bm);
}

#define NVARIANTS	(sizeof(variants) / sizeof(variants[0]))

/*
 * Variants take turns run by run, so that load from other work on the machine falls on
 * all of them alike rather than on whichever ran at a busy moment.
 */
static void run_variants(struct restore *rs, double *t)
{
	for (size_t v = 0; v < NVARIANTS; v++)
		for (int r = 0; r < 3; r++)
			restore_once(rs, &variants[v]);
	for (int r = 0; r < o.runs; r++)
		for (size_t v = 0; v < NVARIANTS; v++)
			t[v * (size_t)o.runs + (size_t)r] = restore_once(rs, &variants[v]);
}

static void report_variants(double *t)
{
	double lazy = 0, best = 1e9;
	const char *best_name = "";
	char key[96];

	printf("%-36s %10s %10s\n", "variant", "p50 ms", "p99 ms");
	for (size_t v = 0; v < NVARIANTS; v++) {
		double *tv = t + v * (size_t)o.runs, p50;

		snprintf(key, sizeof(key), "restore_ms_%s", variants[v].name);
		json_dist(key, tv, o.runs);
		p50 = pct(tv, o.runs, 50);
		printf("%-36s %10.3f %10.3f\n", variants[v].name, p50, pct(tv, o.runs, 99));
		if (!strcmp(variants[v].name, "evicted_lazy"))
			lazy = p50;
		else if (variants[v].evict && p50 < best) {
			best = p50;
			best_name = variants[v].name;
		}
	}
	printf("evicted: fastest prefetch %s, %.1fx faster than lazy faults\n", best_name,
	       lazy / best);
	json_num("evicted_prefetch_speedup", lazy / best);
	fprintf(json, ",\n  \"evicted_fastest_prefetch\": \"%s\"", best_name);
}

static void bench_restore(struct world *w, const struct snap_id *fn, const uint8_t *mem)
{
	double *t = malloc(sizeof(double) * (size_t)o.runs * NVARIANTS);
	struct snap_err err;
	struct restore rs;

	if (snap_image_open(w->s, fn, &rs.img, &err))
		die("image", &err);
	make_ws(mem, fn, &rs.ws, rs.writes, &rs.nwrites);
	rs.slot = mmap(NULL, o.mem, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	printf("\nrestore: map %llu MiB image + touch %llu pages (%u ranges), write %d; "
	       "%d runs each, variants interleaved\n", (unsigned long long)(o.mem >> 20),
	       (unsigned long long)rs.ws.pages, rs.ws.nranges, rs.nwrites, o.runs);
	run_variants(&rs, t);
	report_variants(t);
	bench_pagemap(&rs);
	snap_ws_release(&rs.ws);
	snap_image_close(&rs.img);
	munmap(rs.slot, o.mem);
	free(t);
}

static struct snap_id last_real;

/* The allocated extents of a sparse file, as a page bitmap. */
static uint64_t *extents(int fd, uint64_t size)
{
	uint64_t *bm = calloc((size / SNAP_PAGE + 63) / 64, 8);
	off_t data = 0, hole;

	while ((data = lseek(fd, data, SEEK_DATA)) >= 0 && (uint64_t)data < size) {
		hole = lseek(fd, data, SEEK_HOLE);
		for (uint64_t g = (uint64_t)data / SNAP_PAGE; g * SNAP_PAGE < (uint64_t)hole; g++)
			set_bit(bm, g);
		data = hole;
	}
	return bm;
}

static void real_layer(struct snap_store *s, const uint8_t *mem, uint64_t size,
		       const uint64_t *bm, const char *what)
{
	struct snap_layer_src src = { .mem = mem, .mem_bytes = size, .dirty = bm };
	struct snap_layer_info info;
	struct snap_err err;
	char key[96];
	double t = now_ms();

	if (snap_layer_build(s, &src, &info, &err))
		die("real image layer", &err);
	t = now_ms() - t;
	if (info.pages_new)
		printf("%-44s %9.1f ms  %llu pages, %.2f MiB stored (%.2fx smaller)\n", what, t,
		       (unsigned long long)info.pages, (double)info.bytes_new / 1048576,
		       (double)info.pages_new * SNAP_PAGE / (double)info.bytes_new);
	else
		printf("%-44s %9.1f ms  %llu pages, all already stored\n", what, t,
		       (unsigned long long)info.pages);
	last_real = info.id;
	snprintf(key, sizeof(key), "real_%s_ms", bm ? "layer_extents" : "layer_full_scan");
	json_num(key, t);
	if (bm) {
		json_num("real_layer_pages", (double)info.pages);
		json_num("real_layer_bytes_stored", (double)info.bytes_new);
	}
}

/* A real guest memory image as a base layer: size, compression, build and assembly. */
static void bench_real(void)
{
	struct snap_store *s;
	struct snap_image img;
	struct snap_err err;
	struct stat st, ist;
	char dir[4200];
	uint64_t *bm;
	uint8_t *mem;
	int fd = open(o.image, O_RDONLY);
	double t;

	if (fd < 0 || fstat(fd, &st) || st.st_size % SNAP_PAGE)
		die(o.image, NULL);
	mem = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	bm = extents(fd, (uint64_t)st.st_size);
	snprintf(dir, sizeof(dir), "%s/real", o.dir);
	if (snap_store_open(dir, NULL, &s, &err))
		die("store", &err);
	printf("\nreal image %s: %lld MiB, %.1f MiB allocated\n", o.image,
	       (long long)(st.st_size >> 20), (double)st.st_blocks * 512 / 1048576);
	real_layer(s, mem, (uint64_t)st.st_size, bm, "base layer from extents");
	real_layer(s, mem, (uint64_t)st.st_size, NULL, "the same, full scan");
	t = now_ms();
	if (snap_image_open(s, &last_real, &img, &err))
		die("real image assembly", &err);
	t = now_ms() - t;
	fstat(img.fd, &ist);
	printf("%-44s %9.1f ms  %.1f MiB allocated\n", "image assembly", t,
	       (double)ist.st_blocks * 512 / 1048576);
	json_num("real_image_assembly_ms", t);
	snap_image_close(&img);
	snap_store_close(s);
	munmap(mem, (size_t)st.st_size);
	free(bm);
	close(fd);
}

static void parse(int argc, char **argv)
{
	int c;

	while ((c = getopt(argc, argv, "m:n:d:o:i:")) != -1) {
		if (c == 'm')
			o.mem = strtoull(optarg, NULL, 10) << 20;
		else if (c == 'n')
			o.runs = atoi(optarg);
		else if (c == 'd')
			o.dir = optarg;
		else if (c == 'o')
			o.out = optarg;
		else if (c == 'i')
			o.image = optarg;
		else
			exit(2);
	}
	if (o.mem < (64ULL << 20) || o.mem > (1ULL << 32) || o.runs < 1 || o.runs > MAX_RUNS) {
		fprintf(stderr, "usage: bench_snapshot [-m 64..4096 MiB] [-n runs] [-d dir] "
			"[-o out.json] [-i image]\n");
		exit(2);
	}
}

int main(int argc, char **argv)
{
	static char tmpl[] = "/var/tmp/stoke-bench-snap-XXXXXX";
	struct world w = { 0 };
	struct snap_err err;
	struct snap_id fn;
	uint8_t *fn_mem;
	char cmd[600];

	parse(argc, argv);
	npages = o.mem / SNAP_PAGE;
	if (!o.dir && !(o.dir = mkdtemp(tmpl)))
		die("mkdtemp", NULL);
	json = fopen(o.out, "w");
	if (!json)
		die(o.out, NULL);
	load_libs(1024 + 3400);
	if (nlibs < 1024 + 3400)
		fprintf(stderr, "bench_snapshot: only %llu library pages found\n",
			(unsigned long long)nlibs);
	if (snap_store_open(o.dir, NULL, &w.s, &err))
		die("store", &err);
	printf("snapshot storage, %llu MiB guest memory, store in %s\n\n",
	       (unsigned long long)(o.mem >> 20), o.dir);
	json_num("mem_mib", (double)(o.mem >> 20));
	make_world(&w);
	bench_fn_layers(&w);
	bench_dedup(&w);
	fn = bench_assembly(&w, &fn_mem);
	bench_restore(&w, &fn, fn_mem);
	if (o.image)
		bench_real();
	fprintf(json, "\n}\n");
	fclose(json);
	snap_store_close(w.s);
	free(fn_mem);
	free(w.base);
	free(w.rt);
	free(w.dirty);
	free(libs);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", o.dir);
	if (system(cmd))
		return 1;
	printf("\nwritten %s\n", o.out);
	return 0;
}
