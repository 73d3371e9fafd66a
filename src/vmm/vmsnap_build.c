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

/* Base layer from the dirty pages, its image assembled now (off the restore path). */
static int build_layer(struct snap_store *s, const struct dump *d, struct snap_id *id,
		       struct snap_err *e)
{
	struct snap_layer_src src = {
		.mem = d->mem,
		.mem_bytes = d->h.mem_bytes,
		.dirty = d->bitmap,
	};
	struct snap_layer_info info;
	struct snap_image img;
	int r;

	r = snap_layer_build(s, &src, &info, e);
	if (r)
		return r;
	*id = info.id;
	r = snap_image_open(s, id, &img, e);
	if (!r)
		snap_image_close(&img);
	return r;
}

int vmsnap_build(const char *dump, const char *store_dir, const char *out, char *why,
		 size_t len)
{
	struct snap_err e = { 0 };
	struct snap_store *s = NULL;
	struct snap_state st = { 0 };
	struct snap_id top;
	struct dump d;
	int r;

	r = dump_open(&d, dump);
	if (r) {
		snprintf(why, len, "%s: %s", dump, strerror(-r));
		goto out;
	}
	r = snap_store_open(store_dir, NULL, &s, &e);
	r = r ? r : build_layer(s, &d, &top, &e);
	if (!r) {
		st.vcpu = d.vcpu;
		st.vcpu_len = d.h.vcpu_len;
		st.vmm = d.vmm;
		st.vmm_len = d.h.vmm_len;
		st.mem_bytes = d.h.mem_bytes;
		st.layers = &top;
		st.nlayers = 1;
		r = snap_file_write(out, &st, &e);
	}
	if (r)
		snprintf(why, len, "%s", e.msg[0] ? e.msg : strerror(-r));
out:
	if (s)
		snap_store_close(s);
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
