/*
 * Page store and layers: base -> runtime -> two functions; layers hold exactly the
 * changed pages (from a dirty bitmap or by full comparison); restored memory equals
 * the original byte for byte; the runtime's pages are stored once; gc never deletes
 * a referenced page, even when it or a layer build dies midway.
 */
#include "check.h"
#include "snap/snap_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MEM	(16ULL << 20)
#define NPAGES	(MEM / SNAP_PAGE)

static char root[] = "/tmp/stoke-snapstore-XXXXXX";
static unsigned rng = 12345;

static unsigned next(void)
{
	rng = rng * 1103515245 + 12345;
	return rng >> 8;
}

/* Text-like bytes (compressible) or random ones, tagged so pages differ. */
static void fill_page(uint8_t *p, unsigned tag)
{
	int text = next() % 2;

	for (unsigned i = 0; i < SNAP_PAGE; i++)
		p[i] = text ? (uint8_t)("abcdefgh ijkl"[(i + tag) % 13]) : (uint8_t)next();
	memcpy(p, &tag, sizeof(tag));
}

static void set_bit(uint64_t *bm, uint64_t g)
{
	bm[g / 64] |= 1ULL << (g % 64);
}

/* Changes n random pages of mem (a tenth to zero); returns the pages really changed. */
static uint64_t mutate(uint8_t *mem, const uint8_t *parent, uint64_t n, unsigned tag,
		       uint64_t *dirty)
{
	uint64_t changed = 0;

	for (uint64_t i = 0; i < n; i++) {
		uint64_t g = 512 + next() % (NPAGES - 512);	/* above the "kernel" */
		uint8_t *p = mem + g * SNAP_PAGE;

		if (next() % 10 == 0)
			memset(p, 0, SNAP_PAGE);
		else
			fill_page(p, tag + (unsigned)i);
		set_bit(dirty, g);
	}
	/* Written but unchanged: must not become entries. */
	for (uint64_t i = 0; i < 20; i++)
		set_bit(dirty, next() % 512);
	for (uint64_t g = 0; g < NPAGES; g++)
		changed += !!memcmp(mem + g * SNAP_PAGE, parent + g * SNAP_PAGE, SNAP_PAGE);
	return changed;
}

/* Entries of root/sub, dot names aside. */
static uint64_t count_files(const char *sub)
{
	char path[300];
	struct dirent *d;
	uint64_t n = 0;
	DIR *dir;

	snprintf(path, sizeof(path), "%s/%s", root, sub);
	dir = opendir(path);
	while (dir && (d = readdir(dir)))
		n += d->d_name[0] != '.';
	if (dir)
		closedir(dir);
	return n;
}

static uint64_t count_pages(void)
{
	char sub[16];
	uint64_t n = 0;

	for (int i = 0; i < 256; i++) {
		snprintf(sub, sizeof(sub), "pages/%02x", i);
		n += count_files(sub);
	}
	return n;
}

/* Every page every given layer references can be read back and verified. */
static int all_readable(struct snap_store *s, const struct snap_id *ids, int n)
{
	uint8_t page[SNAP_PAGE];
	struct snap_err err;
	int bad = 0;

	for (int i = 0; i < n; i++) {
		struct snap_layer l;

		if (snap_layer_read(s, &ids[i], &l, &err)) {
			bad++;
			continue;
		}
		for (uint64_t k = 0; k < l.n; k++)
			bad += snap_page_read(s, &l.e[k].page, page, &err) != 0;
		snap_layer_release(&l);
	}
	return bad == 0;
}

static int image_equals(struct snap_store *s, const struct snap_id *id, const uint8_t *mem)
{
	struct snap_image img;
	struct snap_err err;
	uint8_t *map;
	int same;

	if (snap_image_open(s, id, &img, &err))
		return 0;
	map = mmap(NULL, MEM, PROT_READ, MAP_PRIVATE, img.fd, 0);
	same = img.size == MEM && map != MAP_FAILED && !memcmp(map, mem, MEM);
	munmap(map, MEM);
	snap_image_close(&img);
	return same;
}

static struct snap_id build(struct snap_store *s, const uint8_t *mem,
			    const struct snap_id *parent, const uint64_t *dirty,
			    struct snap_layer_info *info)
{
	struct snap_layer_src src = { .mem = mem, .mem_bytes = MEM, .parent = parent,
				      .dirty = dirty };
	struct snap_err err = { 0 };
	int r = snap_layer_build(s, &src, info, &err);

	if (r)
		fprintf(stderr, "layer build: %s\n", err.msg);
	CHECK(r == 0);
	return info->id;
}

static uint8_t *base, *rt, *fa, *fb;
static struct snap_id id_base, id_rt, id_fa, id_fb;

/* Non-zero page entries of a chain's layers; adds their ids to set if given. */
static uint64_t chain_pages(struct snap_store *s, const struct snap_id *top,
			    struct snap__idset *set)
{
	struct snap_id ids[SNAP_MAX_CHAIN];
	struct snap_err err;
	uint64_t n = 0;
	int len = snap_layer_chain(s, top, ids, &err);

	for (int i = 0; i < len; i++) {
		struct snap_layer l;

		if (snap_layer_read(s, &ids[i], &l, &err))
			continue;
		for (uint64_t k = 0; k < l.n; k++) {
			n += !snap_id_is_zero(&l.e[k].page);
			if (set)
				snap__idset_add(set, &l.e[k].page);
		}
		snap_layer_release(&l);
	}
	return n;
}

static uint64_t distinct_pages_of(struct snap_store *s, const struct snap_id *tops, int n)
{
	struct snap__idset set = { 0 };
	uint64_t count;

	for (int i = 0; i < n; i++)
		chain_pages(s, &tops[i], &set);
	count = set.n;
	snap__idset_free(&set);
	return count;
}

static uint64_t distinct_pages(struct snap_store *s)
{
	struct snap_id tops[] = { id_fa, id_fb };

	return distinct_pages_of(s, tops, 2);
}

static uint8_t *dup_mem(const uint8_t *from)
{
	uint8_t *m = malloc(MEM);

	memcpy(m, from, MEM);
	return m;
}

static void test_layers(struct snap_store *s)
{
	uint64_t *dirty = calloc(NPAGES / 64, 8), changed, nonzero = 0;
	struct snap_layer_info info, again;

	base = calloc(1, MEM);
	for (uint64_t g = 0; g < NPAGES; g++)
		if (next() % 4 == 0)
			fill_page(base + g * SNAP_PAGE, (unsigned)g);
	for (uint64_t g = 0; g < NPAGES; g++)
		nonzero += !snap__page_is_zero(base + g * SNAP_PAGE);
	id_base = build(s, base, NULL, NULL, &info);
	CHECK(info.pages == nonzero && info.pages_zero == 0);
	CHECK(image_equals(s, &id_base, base));

	rt = dup_mem(base);
	changed = mutate(rt, base, 600, 1u << 20, dirty);
	id_rt = build(s, rt, &id_base, dirty, &info);
	CHECK(info.pages == changed);
	CHECK(info.compared < 700);	/* only the dirty pages were looked at */
	CHECK(image_equals(s, &id_rt, rt));
	/* The full comparison finds the same pages, hence the same manifest and id. */
	build(s, rt, &id_base, NULL, &again);
	CHECK(!memcmp(&again.id, &id_rt, sizeof(id_rt)) && again.pages_new == 0);
	CHECK(again.compared == NPAGES);
	free(dirty);
}

/* Two functions on one runtime: 100 pages of their own, 50 they share. */
static void test_dedup(struct snap_store *s)
{
	uint64_t *da = calloc(NPAGES / 64, 8), *db = calloc(NPAGES / 64, 8);
	uint64_t before = count_pages(), logical = 0, stored;
	struct snap_layer_info ia, ib;
	struct snap_layer l;
	struct snap_err err;
	unsigned saved;

	fa = dup_mem(rt);
	fb = dup_mem(rt);
	saved = rng;
	mutate(fa, rt, 50, 2u << 20, da);
	rng = saved;
	mutate(fb, rt, 50, 2u << 20, db);	/* the same 50 pages, same contents */
	mutate(fa, rt, 100, 3u << 20, da);
	mutate(fb, rt, 100, 4u << 20, db);
	id_fa = build(s, fa, &id_rt, da, &ia);
	id_fb = build(s, fb, &id_rt, db, &ib);
	CHECK(ib.pages_dup >= 40);	/* the shared pages (minus zeroed ones) */
	CHECK(image_equals(s, &id_fa, fa));
	CHECK(image_equals(s, &id_fb, fb));
	stored = count_pages();
	/* Logical: the pages of both chains, as two self-contained snapshots would hold. */
	logical = chain_pages(s, &id_fa, NULL) + chain_pages(s, &id_fb, NULL);
	CHECK(snap_layer_read(s, &id_rt, &l, &err) == 0);
	printf("dedup: two function chains reference %llu pages, %llu stored (ratio %.2f); "
	       "function layers %llu + %llu pages, %llu + %llu new\n",
	       (unsigned long long)logical, (unsigned long long)stored,
	       (double)logical / (double)stored, (unsigned long long)ia.pages,
	       (unsigned long long)ib.pages, (unsigned long long)ia.pages_new,
	       (unsigned long long)ib.pages_new);
	CHECK(stored - before == ia.pages_new + ib.pages_new);
	/* Each distinct page once: the store holds exactly the union of the chains. */
	CHECK(stored == distinct_pages(s));
	CHECK((double)logical / (double)stored > 1.8);
	snap_layer_release(&l);
	free(da);
	free(db);
}

/* Maps an image over fresh anonymous memory; NULL if that fails. */
static uint8_t *mapped(const struct snap_image *img)
{
	struct snap_err err;
	uint8_t *mem = mmap(NULL, MEM, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (mem == MAP_FAILED)
		return NULL;
	if (snap_image_map(img, mem, MEM, 0, &err)) {
		munmap(mem, MEM);
		return NULL;
	}
	return mem;
}

/* No private (anonymous) page in mem after reading all of it: every page is shared. */
static int all_shared(const uint8_t *mem)
{
	uint64_t *bm = calloc(NPAGES / 64, 8), any = 0, sum = 0;

	for (uint64_t g = 0; g < NPAGES; g++)
		sum += mem[g * SNAP_PAGE];
	snap_dirty_from_pagemap(-1, mem, MEM, bm);
	for (uint64_t i = 0; i < NPAGES / 64; i++)
		any |= bm[i];
	free(bm);
	return !any && sum != 1;	/* sum only keeps the reads */
}

static int same_file(int a, const char *name)
{
	char path[400];
	struct stat x, y;

	snprintf(path, sizeof(path), "%s/images/%s", root, name);
	return !fstat(a, &x) && !stat(path, &y) && x.st_ino == y.st_ino;
}

/* Changes the byte at off from the end of the function's top-layer file. */
static void damage_top(const struct snap_id *id, off_t from_end, int truncate_it)
{
	char hex[65], path[400];
	struct stat st;
	uint8_t b;
	int fd;

	snap_id_hex(id, hex);
	snprintf(path, sizeof(path), "%s/images/%s.top", root, hex);
	fd = open(path, O_RDWR);
	CHECK(fd >= 0 && !fstat(fd, &st));
	if (truncate_it) {
		CHECK(ftruncate(fd, st.st_size - from_end) == 0);
	} else {
		CHECK(pread(fd, &b, 1, st.st_size - from_end) == 1);
		b ^= 0x10;
		CHECK(pwrite(fd, &b, 1, st.st_size - from_end) == 1);
	}
	close(fd);
}

/* Opens fa's split image again and checks it restores fa; returns img.damaged. */
static int reopen_fa(struct snap_store *s)
{
	struct snap_id chain[] = { id_fa, id_rt, id_base };
	struct snap_image img;
	struct snap_err err;
	uint8_t *mem;
	int damaged;

	if (snap_image_open_chain(s, chain, 3, &img, &err))
		return 1;
	mem = mapped(&img);
	CHECK(mem && !memcmp(mem, fa, MEM));
	if (mem)
		munmap(mem, MEM);
	damaged = img.built ? img.damaged : 1;
	snap_image_close(&img);
	return damaged;
}

/*
 * Split images: a function maps its runtime's image, the same file for both functions,
 * and its own pages from a file holding only them; the result equals its memory, no
 * page is private, and a damaged or missing top-layer file is assembled again.
 */
static void test_split(struct snap_store *s)
{
	struct snap_id ca[] = { id_fa, id_rt, id_base }, cb[] = { id_fb, id_rt, id_base };
	struct snap_image a, b, flat;
	struct snap_err err;
	struct snap_layer l;
	char hex[65], name[400];
	uint64_t in_runs = 0, nonzero = 0, gaps = 0;
	struct stat st;
	uint8_t *mem, *buf = malloc(MEM);

	CHECK(snap_image_open_chain(s, ca, 3, &a, &err) == 0 && a.built && !a.damaged);
	CHECK(snap_image_open_chain(s, cb, 3, &b, &err) == 0);
	CHECK(a.top_fd >= 0 && !memcmp(&a.parent, &id_rt, sizeof(id_rt)));
	snap_id_hex(&id_rt, hex);
	snprintf(name, sizeof(name), "%s.img", hex);
	CHECK(same_file(a.fd, name) && same_file(b.fd, name));
	mem = mapped(&a);
	CHECK(mem && !memcmp(mem, fa, MEM) && all_shared(mem));
	if (mem)
		munmap(mem, MEM);
	mem = mapped(&b);
	CHECK(mem && !memcmp(mem, fb, MEM));
	if (mem)
		munmap(mem, MEM);
	CHECK(snap_image_read(&a, buf, MEM, 0) == 0 && !memcmp(buf, fa, MEM));
	CHECK(snap_image_read(&a, buf, 3 * SNAP_PAGE, MEM - 3 * SNAP_PAGE) == 0);

	/*
	 * The top file holds the function layer's pages, and of the runtime's only those
	 * in gaps of at most SNAP_SPLIT_GAP pages between them (they read as the runtime's:
	 * the memory compared above).
	 */
	CHECK(snap_layer_read(s, &id_fa, &l, &err) == 0);
	for (uint32_t i = 0; i < a.nruns; i++) {
		in_runs += a.runs[i].count;
		CHECK(!i || a.runs[i].gpn - a.runs[i - 1].gpn - a.runs[i - 1].count >
			    SNAP_SPLIT_GAP);
	}
	for (uint64_t k = 0; k < l.n; k++) {
		nonzero += !snap_id_is_zero(&l.e[k].page);
		gaps += k && l.e[k].gpn - l.e[k - 1].gpn - 1 <= SNAP_SPLIT_GAP ?
			l.e[k].gpn - l.e[k - 1].gpn - 1 : 0;
	}
	CHECK(in_runs == l.n + gaps && !fstat(a.top_fd, &st));
	CHECK((uint64_t)st.st_blocks * 512 <= (nonzero + gaps + 2) * SNAP_PAGE);
	snap_layer_release(&l);
	snap_image_close(&a);
	snap_image_close(&b);

	/* Cached: found without assembling; a two-layer chain is one flat image. */
	CHECK(snap_image_find(s, &id_fa, &a) == 0 && a.top_fd >= 0 && a.nruns > 0);
	snap_image_close(&a);
	CHECK(snap_image_open_chain(s, ca + 1, 2, &flat, &err) == 0 && flat.top_fd < 0);
	snap_image_close(&flat);

	/* Derived data: damaged, truncated or missing, it is assembled again. */
	damage_top(&id_fa, 136, 0);	/* in the run list */
	CHECK(reopen_fa(s) == -EBADMSG);
	damage_top(&id_fa, 1, 1);
	CHECK(reopen_fa(s) == -ENOEXEC);	/* its trailer is no longer at the end */
	snap_id_hex(&id_fa, hex);
	snprintf(name, sizeof(name), "%s/images/%s.top", root, hex);
	CHECK(unlink(name) == 0 && reopen_fa(s) == 0);
	CHECK(reopen_fa(s) == 1);	/* cached this time: not built */
	free(buf);
}

/* A page file left empty (power loss before writeback) is replaced by the next put. */
static void test_empty_page(struct snap_store *s)
{
	struct snap_layer_info info;
	uint8_t page[SNAP_PAGE];
	struct snap_err err;
	struct snap_layer l;
	char rel[68], path[400];
	uint64_t k;

	CHECK(snap_layer_read(s, &id_rt, &l, &err) == 0);
	for (k = l.n / 2; snap_id_is_zero(&l.e[k].page); k++)
		;
	snap__page_path(&l.e[k].page, rel);
	snprintf(path, sizeof(path), "%s/pages/%s", root, rel);
	CHECK(truncate(path, 0) == 0);
	CHECK(snap_page_read(s, &l.e[k].page, page, &err) == -EBADMSG);
	build(s, rt, &id_base, NULL, &info);
	CHECK(info.pages_new == 1);
	CHECK(snap_page_read(s, &l.e[k].page, page, &err) == 0);
	snap_layer_release(&l);
}

static uint64_t abort_after;

static void crash_hook(enum snap__step step, uint64_t n)
{
	if (step == SNAP__STEP_PAGES_WRITTEN || n >= abort_after)
		abort();
}

/* Runs fn in a child that is expected to die by SIGABRT in the hook. */
static int crashes(void (*fn)(struct snap_store *))
{
	int status;
	pid_t pid = fork();

	if (pid == 0) {
		struct snap_store *s;
		struct snap_err err;

		signal(SIGABRT, SIG_DFL);
		if (snap_store_open(root, NULL, &s, &err))
			_exit(1);
		snap__hook = crash_hook;
		fn(s);
		_exit(0);
	}
	waitpid(pid, &status, 0);
	return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

static void build_fc(struct snap_store *s)
{
	uint64_t *d = calloc(NPAGES / 64, 8);
	uint8_t *fc = dup_mem(rt);
	struct snap_layer_info info;
	struct snap_layer_src src = { .mem = fc, .mem_bytes = MEM, .parent = &id_rt,
				      .dirty = d };

	mutate(fc, rt, 300, 5u << 20, d);
	snap_layer_build(s, &src, &info, NULL);
}

static void run_gc(struct snap_store *s)
{
	snap_store_gc(s, NULL, NULL);
}

static void test_gc(struct snap_store *s)
{
	struct snap_id live[] = { id_base, id_rt, id_fa };
	uint64_t before = count_pages(), after_crash;
	struct snap_gc_stats st;
	struct snap_err err;
	char path[400];

	/* A layer build dies after storing its pages, before its manifest. */
	CHECK(crashes(build_fc));
	CHECK(count_pages() > before);
	CHECK(snap_store_gc(s, &st, &err) == 0);
	CHECK(st.deleted > 0 && count_pages() == before);
	CHECK(st.tmp_removed == 0);

	CHECK(snap_layer_delete(s, &id_rt, &err) == -EBUSY);
	CHECK(snap_layer_delete(s, &id_fb, &err) == 0);
	/* gc dies after three deletions: what it deleted was unreferenced. */
	abort_after = 3;
	CHECK(crashes(run_gc));
	after_crash = count_pages();
	CHECK(after_crash == before - 3);
	CHECK(all_readable(s, live, 3));
	CHECK(snap_store_gc(s, &st, &err) == 0);
	CHECK(st.layers == 3 && st.kept == count_pages());
	CHECK(st.images_removed == 2);	/* fb's flat image (image_equals) and top file */
	CHECK(count_pages() == distinct_pages_of(s, live, 3));
	CHECK(all_readable(s, live, 3));
	CHECK(image_equals(s, &id_fa, fa));

	/* An unreadable manifest stops gc before it deletes anything. */
	snprintf(path, sizeof(path), "%s/layers/%064x", root, 0);
	FILE *f = fopen(path, "w");
	fputs("junk", f);
	fclose(f);
	CHECK(snap_layer_delete(s, &id_fa, &err) == 0);
	before = count_pages();
	CHECK(snap_store_gc(s, &st, &err) < 0 && count_pages() == before);
	CHECK(strstr(err.msg, "layer") != NULL);
	unlink(path);
	CHECK(snap_store_gc(s, &st, &err) == 0 && st.deleted > 0);
	CHECK(all_readable(s, live, 2));
}

static uint64_t count_layers(void)
{
	return count_files("layers");
}

/* gc with roots: the layers no root reaches go, and only their pages. */
static void test_gc_roots(struct snap_store *s)
{
	struct snap_id live[] = { id_base, id_rt, id_fa }, missing, junk;
	struct snap_layer_info info;
	struct snap_gc_stats st;
	struct snap_err err;
	char path[400];
	FILE *f;

	id_fa = build(s, fa, &id_rt, NULL, &info);
	id_fb = build(s, fb, &id_rt, NULL, &info);
	live[2] = id_fa;
	CHECK(count_layers() == 4);
	memset(&missing, 0x42, sizeof(missing));
	CHECK(snap_store_gc_roots(s, (struct snap_id[]){ id_fa, missing }, 2, &st, &err) == 0);
	CHECK(st.layers_removed == 1 && st.layers == 3 && count_layers() == 3);
	CHECK(st.deleted > 0 && st.bytes_freed >= st.deleted * 512);
	CHECK(count_pages() == distinct_pages_of(s, live, 3));
	CHECK(all_readable(s, live, 3) && image_equals(s, &id_fa, fa));

	/* A manifest that does not verify stops gc before any layer or page goes. */
	memset(&junk, 0x24, sizeof(junk));
	snap_id_hex(&junk, path + 300);
	snprintf(path, 300, "%s/layers/%s", root, path + 300);
	f = fopen(path, "w");
	fputs("junk", f);
	fclose(f);
	CHECK(snap_store_gc_roots(s, NULL, 0, &st, &err) < 0);
	CHECK(count_layers() == 4 && all_readable(s, live, 3));
	unlink(path);

	/* No roots: everything goes. */
	CHECK(snap_store_gc_roots(s, NULL, 0, &st, &err) == 0);
	CHECK(st.layers_removed == 3 && count_layers() == 0 && count_pages() == 0);
}

int main(void)
{
	struct snap_store *s;
	struct snap_err err;
	char cmd[300];

	if (!mkdtemp(root) || snap_store_open(root, NULL, &s, &err))
		return 1;
	test_layers(s);
	test_dedup(s);
	test_split(s);
	test_empty_page(s);
	test_gc(s);
	test_gc_roots(s);
	snap_store_close(s);
	free(base);
	free(rt);
	free(fa);
	free(fb);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
	if (system(cmd))
		return 1;
	return check_done();
}
