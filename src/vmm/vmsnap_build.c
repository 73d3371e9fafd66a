/*
 * Daemon side of snapshots (vmsnap.h): turns a VMM's dump into a layer, a restore
 * image and a snapshot file, and a recorded working set into the store's .ws file.
 * Runs outside the VM's jail, in the daemon or as `stoke-vmm --build-snapshot`.
 */
#include "vmsnap.h"
#include "snap/snap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u

struct dump {
	int fd;
	struct vmsnap_dump_hdr h;
	void *vcpu, *vmm, *bitmap;
	uint8_t *mem;
};

static int read_at(int fd, void **out, uint64_t len, uint64_t off)
{
	void *p = malloc(len ? len : 1);

	if (!p)
		return -ENOMEM;
	if (pread(fd, p, len, (off_t)off) != (ssize_t)len) {
		free(p);
		return -ENODATA;
	}
	*out = p;
	return 0;
}

static int span_ok(uint64_t off, uint64_t len, uint64_t end)
{
	return off <= end && len <= end - off;
}

static int check_hdr(const struct vmsnap_dump_hdr *h, uint64_t size)
{
	uint64_t bits = h->mem_bytes / PAGE;

	if (memcmp(h->magic, VMSNAP_DUMP_MAGIC, sizeof(h->magic)))
		return -ENOEXEC;
	if (h->version != VMSNAP_DUMP_VERSION)
		return -EPROTONOSUPPORT;
	if (h->flags & ~VMSNAP_DUMP_PARENT)
		return -EINVAL;
	if (!h->mem_bytes || h->mem_bytes % PAGE || h->mem_off % PAGE ||
	    h->bitmap_len != (bits + 63) / 64 * 8 || h->vcpu_len > (1 << 20) ||
	    h->vmm_len > (64 << 20) || !span_ok(h->vcpu_off, h->vcpu_len, size) ||
	    !span_ok(h->vmm_off, h->vmm_len, size) ||
	    !span_ok(h->bitmap_off, h->bitmap_len, size) ||
	    !span_ok(h->mem_off, h->mem_bytes, size))
		return -EINVAL;
	return 0;
}

static int dump_open(struct dump *d, const char *path)
{
	struct stat st;
	int r;

	memset(d, 0, sizeof(*d));
	d->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (d->fd < 0)
		return -errno;
	if (fstat(d->fd, &st) < 0)
		return -errno;
	if (pread(d->fd, &d->h, sizeof(d->h), 0) != (ssize_t)sizeof(d->h))
		return -ENODATA;
	r = check_hdr(&d->h, (uint64_t)st.st_size);
	r = r ? r : read_at(d->fd, &d->vcpu, d->h.vcpu_len, d->h.vcpu_off);
	r = r ? r : read_at(d->fd, &d->vmm, d->h.vmm_len, d->h.vmm_off);
	r = r ? r : read_at(d->fd, &d->bitmap, d->h.bitmap_len, d->h.bitmap_off);
	if (r)
		return r;
	d->mem = mmap(NULL, d->h.mem_bytes, PROT_READ, MAP_PRIVATE, d->fd, (off_t)d->h.mem_off);
	if (d->mem == MAP_FAILED) {
		d->mem = NULL;
		return -errno;
	}
	return 0;
}

static void dump_close(struct dump *d)
{
	if (d->mem)
		munmap(d->mem, d->h.mem_bytes);
	free(d->vcpu);
	free(d->vmm);
	free(d->bitmap);
	if (d->fd >= 0)
		close(d->fd);
}

static double now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/*
 * The dump's pages as a layer: a base layer, or (a restored VM) a layer on the chain it
 * was restored from, holding only the pages that differ from it. Only the dump's
 * dirty pages are looked at; each is compared with the parent (its restore image).
 */
static int build_layer(struct snap_store *s, const struct dump *d, const struct snap_id *parent,
		       const uint8_t *parent_mem, struct snap_layer_info *info,
		       struct snap_err *e)
{
	struct snap_layer_src src = {
		.mem = d->mem,
		.mem_bytes = d->h.mem_bytes,
		.dirty = d->bitmap,
		.parent = parent,
		.parent_mem = parent_mem,
	};

	return snap_layer_build(s, &src, info, e);
}

/* Assembles the restore image now, off the restore path. */
static int build_image(struct snap_store *s, const struct snap_id *top,
		       struct vmsnap_build_info *info, struct snap_err *e)
{
	struct snap_id chain[SNAP_MAX_CHAIN];
	struct snap_image img;
	double t0 = now_ms();
	int n = snap_layer_chain(s, top, chain, e), r = n < 0 ? n : 0;

	/* The form restores map: a function's own pages beside its runtime's image. */
	if (!r)
		r = snap_image_open_chain(s, chain, (uint32_t)n, &img, e);
	if (!r) {
		info->image_built = img.built;
		snap_image_close(&img);
	}
	info->image_ms = now_ms() - t0;
	return r;
}

static int write_snapshot(struct snap_store *s, const struct dump *d,
			  const struct snap_id *top, const char *out, struct snap_err *e)
{
	struct snap_id chain[SNAP_MAX_CHAIN];
	struct snap_state st = { 0 };
	int n = snap_layer_chain(s, top, chain, e);

	if (n < 0)
		return n;
	st.vcpu = d->vcpu;
	st.vcpu_len = d->h.vcpu_len;
	st.vmm = d->vmm;
	st.vmm_len = d->h.vmm_len;
	st.mem_bytes = d->h.mem_bytes;
	st.layers = chain;
	st.nlayers = (uint32_t)n;
	return snap_file_write(out, &st, e);
}

/*
 * The dump's layer: on base (whose memory is base_mem) when given, else on the parent
 * the dump names, else a base layer.
 */
static int build_from(struct snap_store *s, const struct dump *d, const struct snap_id *base,
		      const uint8_t *base_mem, const char *out, struct vmsnap_build_info *info,
		      struct snap_err *e)
{
	struct snap_id parent;
	double t0 = now_ms();
	int r;

	if (d->h.flags & VMSNAP_DUMP_PARENT)
		memcpy(parent.b, d->h.parent, sizeof(parent.b));
	else if (base)
		parent = *base;
	r = build_layer(s, d, (base || (d->h.flags & VMSNAP_DUMP_PARENT)) ? &parent : NULL,
			base ? base_mem : NULL, &info->layer[0], e);
	info->layer_ms += now_ms() - t0;
	if (r)
		return r;
	info->nlayers++;
	r = build_image(s, &info->layer[0].id, info, e);
	return r ? r : write_snapshot(s, d, &info->layer[0].id, out, e);
}

int vmsnap_build_info(const char *dump, const char *store_dir, const char *out,
		      struct vmsnap_build_info *info, char *why, size_t len)
{
	struct snap_err e = { 0 };
	struct snap_store *s = NULL;
	struct dump d;
	int r;

	memset(info, 0, sizeof(*info));
	r = dump_open(&d, dump);
	if (r) {
		snprintf(why, len, "%s: %s", dump, strerror(-r));
		goto out;
	}
	r = snap_store_open(store_dir, NULL, &s, &e);
	r = r ? r : build_from(s, &d, NULL, NULL, out, info, &e);
	if (r)
		snprintf(why, len, "%s", e.msg[0] ? e.msg : strerror(-r));
out:
	if (s)
		snap_store_close(s);
	dump_close(&d);
	return r;
}

int vmsnap_build(const char *dump, const char *store_dir, const char *out, char *why,
		 size_t len)
{
	struct vmsnap_build_info info;

	return vmsnap_build_info(dump, store_dir, out, &info, why, len);
}

int vmsnap_build_runtime(const char *base_dump, const char *dump, const char *store_dir,
			 const char *out, struct vmsnap_build_info *info, char *why,
			 size_t len)
{
	struct snap_err e = { 0 };
	struct snap_store *s = NULL;
	struct dump b, d;
	const char *bad = base_dump;
	double t0;
	int r;

	memset(info, 0, sizeof(*info));
	memset(&d, 0, sizeof(d));
	d.fd = -1;
	r = dump_open(&b, base_dump);
	if (!r && (bad = dump, r = dump_open(&d, dump)) == 0 &&
	    ((b.h.flags | d.h.flags) & VMSNAP_DUMP_PARENT || b.h.mem_bytes != d.h.mem_bytes))
		r = -EINVAL;
	if (r) {
		snprintf(why, len, "%s: %s", bad, strerror(-r));
		goto out;
	}
	r = snap_store_open(store_dir, NULL, &s, &e);
	t0 = now_ms();
	r = r ? r : build_layer(s, &b, NULL, NULL, &info->layer[1], &e);
	info->layer_ms = now_ms() - t0;
	/* The base dump is the base layer's memory: no base image is assembled. */
	r = r ? r : build_from(s, &d, &info->layer[1].id, b.mem, out, info, &e);
	if (!r)
		info->nlayers = 2;
	if (r)
		snprintf(why, len, "%s", e.msg[0] ? e.msg : strerror(-r));
out:
	if (s)
		snap_store_close(s);
	dump_close(&b);
	dump_close(&d);
	return r;
}

static int read_raw_ws(const char *raw, struct snap_ws *ws)
{
	struct vmsnap_ws_hdr h;
	int fd = open(raw, O_RDONLY | O_CLOEXEC), r = 0;
	size_t n, nw;

	if (fd < 0)
		return -errno;
	memset(ws, 0, sizeof(*ws));
	if (pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) ||
	    memcmp(h.magic, "STOKWSRW", 8) || h.nranges > (1u << 24) ||
	    h.nwritten > (1u << 24))
		r = -EINVAL;
	n = r ? 0 : h.nranges * sizeof(ws->r[0]);
	nw = r ? 0 : h.nwritten * sizeof(ws->w[0]);
	if (!r && (!(ws->r = malloc(n ? n : 1)) || !(ws->w = malloc(nw ? nw : 1))))
		r = -ENOMEM;
	if (!r && (pread(fd, ws->r, n, sizeof(h)) != (ssize_t)n ||
		   pread(fd, ws->w, nw, (off_t)(sizeof(h) + n)) != (ssize_t)nw))
		r = -ENODATA;
	close(fd);
	if (r) {
		snap_ws_release(ws);
		return r;
	}
	memcpy(ws->image.b, h.image, sizeof(h.image));
	ws->pages = h.pages;
	ws->nranges = (uint32_t)h.nranges;
	ws->nwritten = (uint32_t)h.nwritten;
	return 0;
}

static void ws_file(const struct snap_id *image, const char *store_dir, char *out,
		    size_t len)
{
	char hex[65];

	snap_id_hex(image, hex);
	snprintf(out, len, "%s/images/%s.ws", store_dir, hex);
}

int vmsnap_ws_commit(const char *raw, const char *store_dir, char *why, size_t len)
{
	struct snap_err e = { 0 };
	struct snap_ws ws;
	char path[4096];
	int r;

	r = read_raw_ws(raw, &ws);
	if (r) {
		snprintf(why, len, "%s: %s", raw, strerror(-r));
		return r;
	}
	ws_file(&ws.image, store_dir, path, sizeof(path));
	r = snap_ws_write(path, &ws, &e);
	if (r)
		snprintf(why, len, "%s", e.msg);
	free(ws.r);
	return r;
}

int vmsnap_ws_path(const char *snap_file, const char *store_dir, char *out, size_t len)
{
	struct snap_file f;
	int r = snap_file_read(snap_file, &f, NULL);

	if (r)
		return r;
	ws_file(&f.st.layers[0], store_dir, out, len);
	snap_file_release(&f);
	return 0;
}
