/*
 * Layers: the pages of a memory image that differ from its parent, as a manifest
 * layers/<id> whose id is the SHA-256 of its bytes. Pages are stored (and made durable)
 * before the manifest that references them appears, so a crash leaves at worst
 * unreferenced pages, which gc removes.
 */
#include "snap_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define LAYER_MAGIC	"STOKLAYR"
#define LAYER_VERSION	1u
#define LAYER_HDR	64
#define ENTRY_SIZE	40
#define LF_PARENT	1u

struct build {
	struct snap_store *s;
	const struct snap_layer_src *src;
	const uint8_t *pmem;		/* parent contents, or NULL for zero memory */
	struct snap_layer_entry *e;
	uint64_t n, cap;
	struct snap_layer_info *info;
};

static int add_entry(struct build *b, uint64_t gpn, const struct snap_id *id)
{
	if (b->n == b->cap) {
		uint64_t cap = b->cap ? b->cap * 2 : 256;
		void *e = realloc(b->e, cap * sizeof(*b->e));

		if (!e)
			return -ENOMEM;
		b->e = e;
		b->cap = cap;
	}
	b->e[b->n].gpn = gpn;
	b->e[b->n++].page = *id;
	return 0;
}

static int build_page(struct build *b, uint64_t gpn)
{
	const uint8_t *p = b->src->mem + gpn * SNAP_PAGE;
	static const struct snap_id zero;
	struct snap_id id;
	int added, r;

	b->info->compared++;
	if (b->pmem ? !memcmp(p, b->pmem + gpn * SNAP_PAGE, SNAP_PAGE) : snap__page_is_zero(p))
		return 0;
	if (snap__page_is_zero(p)) {
		b->info->pages_zero++;
		return add_entry(b, gpn, &zero);
	}
	snap__sha256(p, SNAP_PAGE, &id);
	r = snap__page_put(b->s, p, &id, &added, &b->info->bytes_new);
	if (r)
		return r;
	if (added)
		b->info->pages_new++;
	else
		b->info->pages_dup++;
	return add_entry(b, gpn, &id);
}

static int build_pages(struct build *b)
{
	uint64_t npages = b->src->mem_bytes / SNAP_PAGE;
	const uint64_t *dirty = b->src->dirty;
	int r;

	for (uint64_t w = 0; w < (npages + 63) / 64; w++) {
		uint64_t bits = dirty ? dirty[w] : ~0ULL;

		/* With a bitmap, only its set bits are visited: no scan of clean memory. */
		while (bits) {
			uint64_t gpn = w * 64 + (uint64_t)__builtin_ctzll(bits);

			bits &= bits - 1;
			if (gpn >= npages)
				break;
			r = build_page(b, gpn);
			if (r)
				return r;
		}
	}
	return 0;
}

static uint8_t *encode(const struct build *b, const struct snap_id *parent, size_t *len)
{
	uint8_t *buf, *p;

	*len = LAYER_HDR + b->n * ENTRY_SIZE;
	buf = calloc(1, *len);
	if (!buf)
		return NULL;
	memcpy(buf, LAYER_MAGIC, 8);
	snap__put32(buf + 8, LAYER_VERSION);
	snap__put32(buf + 12, parent ? LF_PARENT : 0);
	if (parent)
		memcpy(buf + 16, parent->b, 32);
	snap__put64(buf + 48, b->src->mem_bytes);
	snap__put64(buf + 56, b->n);
	p = buf + LAYER_HDR;
	for (uint64_t i = 0; i < b->n; i++, p += ENTRY_SIZE) {
		snap__put64(p, b->e[i].gpn);
		memcpy(p + 8, b->e[i].page.b, 32);
	}
	return buf;
}

/* An equal manifest already stored (a damaged one is rewritten, not trusted). */
static int same_file(int dirfd, const char *name, const uint8_t *buf, size_t len)
{
	uint8_t *have;
	size_t n;
	int same;

	if (snap__read_file(dirfd, name, &have, &n))
		return 0;
	same = n == len && !memcmp(have, buf, len);
	free(have);
	return same;
}

static int write_manifest(struct build *b, struct snap_err *err)
{
	char hex[65];
	uint8_t *buf;
	size_t len;
	int r;

	buf = encode(b, b->src->parent, &len);
	if (!buf)
		return snap__fail(err, ENOMEM, "layer: out of memory");
	snap__sha256(buf, len, &b->info->id);
	snap_id_hex(&b->info->id, hex);
	b->info->existed = same_file(b->s->layers, hex, buf, len);
	r = b->info->existed ? 0 : snap__atomic_write(b->s->layers, hex, buf, len);
	free(buf);
	if (r)
		return snap__fail(err, -r, "layer %s: writing manifest: %s", hex, strerror(-r));
	return 0;
}

/* Maps the parent's restore image read-only (shared: it costs no memory). */
static int map_parent(struct build *b, void **map, struct snap_err *err)
{
	struct snap_image img;
	int r;

	r = snap_image_open(b->s, b->src->parent, &img, err);
	if (r)
		return r;
	if (img.size != b->src->mem_bytes) {
		snap_image_close(&img);
		return snap__fail(err, EINVAL, "layer: parent has %llu bytes of memory, not %llu",
				  (unsigned long long)img.size,
				  (unsigned long long)b->src->mem_bytes);
	}
	*map = mmap(NULL, img.size, PROT_READ, MAP_SHARED, img.fd, 0);
	snap_image_close(&img);
	if (*map == MAP_FAILED)
		return snap__fail(err, errno, "layer: mapping parent image: %s", strerror(errno));
	b->pmem = *map;
	return 0;
}

/* The parent must exist now (gc keeps its pages) and have the same memory size. */
static int check_parent(struct build *b, struct snap_err *err)
{
	struct snap_layer l;
	int r;

	r = snap_layer_read(b->s, b->src->parent, &l, err);
	if (r)
		return r;
	snap_layer_release(&l);
	if (l.mem_bytes != b->src->mem_bytes)
		return snap__fail(err, EINVAL, "layer: parent has %llu bytes of memory, not %llu",
				  (unsigned long long)l.mem_bytes,
				  (unsigned long long)b->src->mem_bytes);
	return 0;
}

static int build_locked(struct build *b, struct snap_err *err)
{
	void *map = NULL;
	int r = 0;

	b->pmem = b->src->parent_mem;
	if (b->src->parent)
		r = check_parent(b, err);
	if (!r && b->src->parent && !b->pmem)
		r = map_parent(b, &map, err);
	if (!r) {
		r = build_pages(b);
		if (r)
			snap__fail(err, -r, "layer: storing pages: %s", strerror(-r));
	}
	if (map)
		munmap(map, b->src->mem_bytes);
	if (r)
		return r;
	if (snap__hook)
		snap__hook(SNAP__STEP_PAGES_WRITTEN, b->n);
	/* Pages must be durable before a manifest can name them. */
	if (syncfs(b->s->pages) < 0)
		return snap__fail(err, errno, "layer: syncfs: %s", strerror(errno));
	return write_manifest(b, err);
}

int snap_layer_build(struct snap_store *s, const struct snap_layer_src *src,
		     struct snap_layer_info *info, struct snap_err *err)
{
	struct build b = { .s = s, .src = src, .info = info };
	int r;

	memset(info, 0, sizeof(*info));
	if (!src->mem_bytes || src->mem_bytes % SNAP_PAGE)
		return snap__fail(err, EINVAL, "layer: memory size is not whole pages");
	r = snap__lock(s, 0);
	if (r)
		return snap__fail(err, -r, "layer: store lock: %s", strerror(-r));
	r = build_locked(&b, err);
	snap__unlock(s);
	info->pages = b.n;
	free(b.e);
	return r;
}

int snap__layer_decode(const uint8_t *buf, size_t len, const struct snap_id *id,
		       struct snap_layer *l, struct snap_err *err)
{
	struct snap_id h;
	const uint8_t *p;
	char hex[65];

	snap_id_hex(id, hex);
	memset(l, 0, sizeof(*l));
	snap__sha256(buf, len, &h);
	if (memcmp(&h, id, sizeof(h)))
		return snap__fail(err, EBADMSG, "layer %s: manifest does not match its id", hex);
	if (len < LAYER_HDR || memcmp(buf, LAYER_MAGIC, 8))
		return snap__fail(err, EINVAL, "layer %s: not a layer manifest", hex);
	if (snap__get32(buf + 8) != LAYER_VERSION)
		return snap__fail(err, EPROTONOSUPPORT, "layer %s: manifest version %u", hex,
				  snap__get32(buf + 8));
	l->id = *id;
	l->has_parent = snap__get32(buf + 12) & LF_PARENT;
	memcpy(l->parent.b, buf + 16, 32);
	l->mem_bytes = snap__get64(buf + 48);
	l->n = snap__get64(buf + 56);
	if (l->n != (len - LAYER_HDR) / ENTRY_SIZE || (len - LAYER_HDR) % ENTRY_SIZE)
		return snap__fail(err, EINVAL, "layer %s: bad entry count", hex);
	l->e = malloc((l->n ? l->n : 1) * sizeof(*l->e));
	if (!l->e)
		return snap__fail(err, ENOMEM, "layer %s: out of memory", hex);
	p = buf + LAYER_HDR;
	for (uint64_t i = 0; i < l->n; i++, p += ENTRY_SIZE) {
		l->e[i].gpn = snap__get64(p);
		memcpy(l->e[i].page.b, p + 8, 32);
		if (l->e[i].gpn >= l->mem_bytes / SNAP_PAGE ||
		    (i && l->e[i].gpn <= l->e[i - 1].gpn)) {
			snap_layer_release(l);
			return snap__fail(err, EINVAL, "layer %s: entries out of order", hex);
		}
	}
	return 0;
}

int snap_layer_read(struct snap_store *s, const struct snap_id *id, struct snap_layer *l,
		    struct snap_err *err)
{
	uint8_t *buf;
	char hex[65];
	size_t len;
	int r;

	memset(l, 0, sizeof(*l));
	snap_id_hex(id, hex);
	r = snap__read_file(s->layers, hex, &buf, &len);
	if (r)
		return snap__fail(err, -r, "layer %s: %s", hex, strerror(-r));
	r = snap__layer_decode(buf, len, id, l, err);
	free(buf);
	return r;
}

void snap_layer_release(struct snap_layer *l)
{
	free(l->e);
	l->e = NULL;
	l->n = 0;
}

int snap_layer_chain(struct snap_store *s, const struct snap_id *id,
		     struct snap_id ids[SNAP_MAX_CHAIN], struct snap_err *err)
{
	struct snap_layer l;
	int n = 0, r;

	ids[0] = *id;
	for (;;) {
		r = snap_layer_read(s, &ids[n], &l, err);
		if (r)
			return r;
		snap_layer_release(&l);
		n++;
		if (!l.has_parent)
			return n;
		if (n == SNAP_MAX_CHAIN)
			return snap__fail(err, ELOOP, "layer chain deeper than %d", SNAP_MAX_CHAIN);
		ids[n] = l.parent;
	}
}

/* Whether any manifest names id as its parent (only the header is read). */
static int has_child(struct snap_store *s, const struct snap_id *id)
{
	uint8_t hdr[LAYER_HDR];
	int dfd, fd, found = 0;
	struct dirent *d;
	DIR *dir;

	dfd = dup(s->layers);
	dir = dfd < 0 ? NULL : fdopendir(dfd);
	if (!dir)
		return -errno;
	rewinddir(dir);
	while (!found && (d = readdir(dir))) {
		if (d->d_name[0] == '.')
			continue;
		fd = openat(s->layers, d->d_name, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		if (!snap__pread_all(fd, hdr, sizeof(hdr), 0) &&
		    (snap__get32(hdr + 12) & LF_PARENT) && !memcmp(hdr + 16, id->b, 32))
			found = 1;
		close(fd);
	}
	closedir(dir);
	return found;
}

int snap_layer_delete(struct snap_store *s, const struct snap_id *id, struct snap_err *err)
{
	char hex[65];
	int r;

	snap_id_hex(id, hex);
	/* Exclusive: no layer may be built on this one while it goes. */
	r = snap__lock(s, 1);
	if (r)
		return snap__fail(err, -r, "layer %s: store lock: %s", hex, strerror(-r));
	r = has_child(s, id);
	if (r > 0)
		r = snap__fail(err, EBUSY, "layer %s: another layer is built on it", hex);
	else if (r < 0)
		r = snap__fail(err, -r, "layer %s: listing layers: %s", hex, strerror(-r));
	else if (unlinkat(s->layers, hex, 0) < 0)
		r = snap__fail(err, errno, "layer %s: %s", hex, strerror(errno));
	else if (fsync(s->layers) < 0)
		r = snap__fail(err, errno, "layer %s: fsync: %s", hex, strerror(errno));
	snap__unlock(s);
	return r;
}
