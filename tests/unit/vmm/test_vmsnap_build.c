/*
 * vmsnap_build and vmsnap_ws_commit (src/vmm/vmsnap_build.c): the daemon-side parsers
 * of what a jailed VMM wrote. A whole dump becomes a snapshot whose state and image
 * match it; damaged dumps and working-set records are refused, never trusted.
 */
#include "check.h"
#include "vmm/vmsnap.h"
#include "snap/snap.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define MEM	(4u << 20)
#define PG	4096u

static char dir[64], dump[128], store[128], out[128];

static const char vcpu[] = "vcpu state";
static const char vmm[] = "vmm state, a little longer";

static void fill_hdr(struct vmsnap_dump_hdr *h)
{
	memset(h, 0, sizeof(*h));
	memcpy(h->magic, VMSNAP_DUMP_MAGIC, 8);
	h->version = VMSNAP_DUMP_VERSION;
	h->mem_bytes = MEM;
	h->vcpu_off = PG;
	h->vcpu_len = sizeof(vcpu);
	h->vmm_off = 2 * PG;
	h->vmm_len = sizeof(vmm);
	h->bitmap_off = 3 * PG;
	h->bitmap_len = MEM / PG / 8;
	h->mem_off = 4 * PG;
}

/* A dump with pages 1, 2 and 700 dirty (page 2 dirty but zero). */
static void write_dump(const struct vmsnap_dump_hdr *h, off_t truncate_to)
{
	uint64_t bm[MEM / PG / 64] = { 0 };
	uint8_t page[PG];
	int fd = open(dump, O_RDWR | O_CREAT | O_TRUNC, 0600);

	bm[0] = 0x6;
	bm[700 / 64] |= 1ULL << (700 % 64);
	CHECK(ftruncate(fd, (off_t)(4 * PG + MEM)) == 0);
	CHECK(pwrite(fd, h, sizeof(*h), 0) == sizeof(*h));
	CHECK(pwrite(fd, vcpu, sizeof(vcpu), PG) == sizeof(vcpu));
	CHECK(pwrite(fd, vmm, sizeof(vmm), 2 * PG) == sizeof(vmm));
	CHECK(pwrite(fd, bm, sizeof(bm), 3 * PG) == sizeof(bm));
	memset(page, 0xab, sizeof(page));
	CHECK(pwrite(fd, page, PG, 4 * PG + PG) == PG);
	memset(page, 0x5c, sizeof(page));
	CHECK(pwrite(fd, page, PG, 4 * PG + 700 * PG) == PG);
	if (truncate_to)
		CHECK(ftruncate(fd, truncate_to) == 0);
	close(fd);
}

static void test_whole_dump(void)
{
	struct vmsnap_dump_hdr h;
	struct snap_file f;
	char why[256] = "";
	struct snap_store *s;
	struct snap_image img;
	uint8_t *m;

	fill_hdr(&h);
	write_dump(&h, 0);
	CHECK(vmsnap_build(dump, store, out, why, sizeof(why)) == 0);
	CHECK(snap_file_read(out, &f, NULL) == 0);
	CHECK(f.st.vcpu_len == sizeof(vcpu) && !memcmp(f.st.vcpu, vcpu, sizeof(vcpu)));
	CHECK(f.st.vmm_len == sizeof(vmm) && !memcmp(f.st.vmm, vmm, sizeof(vmm)));
	CHECK(f.st.mem_bytes == MEM && f.st.nlayers == 1);
	CHECK(snap_store_open(store, NULL, &s, NULL) == 0);
	CHECK(snap_image_open(s, &f.st.layers[0], &img, NULL) == 0);
	m = mmap(NULL, MEM, PROT_READ, MAP_PRIVATE, img.fd, 0);
	CHECK(m != MAP_FAILED);
	CHECK(m[0] == 0 && m[PG] == 0xab && m[2 * PG] == 0 && m[700 * PG + 17] == 0x5c);
	CHECK(m[699 * PG] == 0 && m[MEM - 1] == 0);
	munmap(m, MEM);
	snap_image_close(&img);
	snap_store_close(s);
	snap_file_release(&f);
}

static int build_fails(const struct vmsnap_dump_hdr *h, off_t truncate_to)
{
	char why[256] = "";
	int r;

	write_dump(h, truncate_to);
	unlink(out);
	r = vmsnap_build(dump, store, out, why, sizeof(why));
	CHECK(why[0] != '\0');
	CHECK(access(out, F_OK) != 0);
	return r;
}

static void test_damaged_dumps(void)
{
	struct vmsnap_dump_hdr h;

	fill_hdr(&h);
	h.magic[0] = 'X';
	CHECK(build_fails(&h, 0) == -ENOEXEC);
	fill_hdr(&h);
	h.version = VMSNAP_DUMP_VERSION + 1;
	CHECK(build_fails(&h, 0) == -EPROTONOSUPPORT);
	fill_hdr(&h);
	h.flags = 2;				/* a flag this build does not know */
	CHECK(build_fails(&h, 0) == -EINVAL);
	fill_hdr(&h);
	h.flags = VMSNAP_DUMP_PARENT;		/* a parent the store does not hold */
	memset(h.parent, 0x77, sizeof(h.parent));
	CHECK(build_fails(&h, 0) == -ENOENT);
	fill_hdr(&h);
	h.vmm_len = UINT64_MAX - PG;		/* would wrap an unchecked offset + length */
	CHECK(build_fails(&h, 0) == -EINVAL);
	fill_hdr(&h);
	h.bitmap_len = 8;			/* shorter than the memory needs */
	CHECK(build_fails(&h, 0) == -EINVAL);
	fill_hdr(&h);
	h.mem_bytes = MEM + 1;
	CHECK(build_fails(&h, 0) == -EINVAL);
	fill_hdr(&h);
	CHECK(build_fails(&h, 4 * PG + MEM / 2) == -EINVAL);	/* memory cut short */
	CHECK(build_fails(&h, 20) == -ENODATA);			/* header cut short */
}

/* A dump at path whose dirty pages are gpn[i], each filled with val[i] (0: zero). */
static void write_layer_dump(const char *path, const struct vmsnap_dump_hdr *h,
			     const uint64_t *gpn, const uint8_t *val, int n)
{
	uint64_t bm[MEM / PG / 64] = { 0 };
	uint8_t page[PG];
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);

	CHECK(ftruncate(fd, (off_t)(4 * PG + MEM)) == 0);
	for (int i = 0; i < n; i++) {
		bm[gpn[i] / 64] |= 1ULL << (gpn[i] % 64);
		memset(page, val[i], sizeof(page));
		CHECK(pwrite(fd, page, PG, (off_t)(4 * PG + gpn[i] * PG)) == PG);
	}
	CHECK(pwrite(fd, h, sizeof(*h), 0) == sizeof(*h));
	CHECK(pwrite(fd, vcpu, sizeof(vcpu), PG) == sizeof(vcpu));
	CHECK(pwrite(fd, vmm, sizeof(vmm), 2 * PG) == sizeof(vmm));
	CHECK(pwrite(fd, bm, sizeof(bm), 3 * PG) == sizeof(bm));
	close(fd);
}

/* The gpns of a layer's entries, and whether each is the zero page. */
static int layer_gpns(struct snap_store *s, const struct snap_id *id, uint64_t *gpn,
		      int *zero, int max)
{
	struct snap_layer l;
	int n;

	CHECK(snap_layer_read(s, id, &l, NULL) == 0);
	for (n = 0; n < (int)l.n && n < max; n++) {
		gpn[n] = l.e[n].gpn;
		zero[n] = snap_id_is_zero(&l.e[n].page);
	}
	snap_layer_release(&l);
	return n;
}

/*
 * base (loaded program) -> runtime (booted dump: every touched page in its bitmap) ->
 * function (a restored VM's dump: only the pages written since). Each layer holds
 * exactly the pages that differ from its parent; the function's image is the whole
 * memory byte for byte.
 */
static void test_layer_chain(void)
{
	static const uint64_t base_g[] = { 1, 2, 700 }, rt_g[] = { 1, 2, 3, 700 },
		fn_g[] = { 1, 3, 5 };
	static const uint8_t base_v[] = { 0x11, 0x22, 0x70 }, rt_v[] = { 0x11, 0x22, 0x33, 0x71 },
		fn_v[] = { 0x11, 0, 0x55 };
	char base[160], rt[160], rt_snap[160], fn_snap[160], why[256] = "";
	struct vmsnap_build_info info;
	struct vmsnap_dump_hdr h;
	struct snap_store *s;
	struct snap_image img;
	struct snap_file f;
	uint64_t gpn[8];
	int zero[8];
	uint8_t *m;

	snprintf(base, sizeof(base), "%s/base.dump", dir);
	snprintf(rt, sizeof(rt), "%s/rt.dump", dir);
	snprintf(rt_snap, sizeof(rt_snap), "%s/rt.snap", dir);
	snprintf(fn_snap, sizeof(fn_snap), "%s/fn.snap", dir);
	fill_hdr(&h);
	write_layer_dump(base, &h, base_g, base_v, 3);
	write_layer_dump(rt, &h, rt_g, rt_v, 4);
	CHECK(vmsnap_build_runtime(base, rt, store, rt_snap, &info, why, sizeof(why)) == 0);
	CHECK(info.nlayers == 2 && info.layer[1].pages == 3 && info.layer[0].pages == 2);
	CHECK(snap_store_open(store, NULL, &s, NULL) == 0);
	CHECK(layer_gpns(s, &info.layer[0].id, gpn, zero, 8) == 2);
	CHECK(gpn[0] == 3 && gpn[1] == 700);	/* 1 and 2 equal the base: not stored */

	/* The function dump names the runtime layer as the chain it was restored from. */
	h.flags = VMSNAP_DUMP_PARENT;
	memcpy(h.parent, info.layer[0].id.b, sizeof(h.parent));
	write_layer_dump(dump, &h, fn_g, fn_v, 3);
	CHECK(vmsnap_build_info(dump, store, fn_snap, &info, why, sizeof(why)) == 0);
	CHECK(info.nlayers == 1 && !info.layer[0].existed && info.image_built);
	CHECK(layer_gpns(s, &info.layer[0].id, gpn, zero, 8) == 2);
	CHECK(gpn[0] == 3 && zero[0] && gpn[1] == 5 && !zero[1]);
	CHECK(snap_file_read(fn_snap, &f, NULL) == 0);
	CHECK(f.st.nlayers == 3 && !memcmp(&f.st.layers[0], &info.layer[0].id, 32));
	/* Built split (the runtime's image and the function's own pages): found cached. */
	CHECK(snap_image_open_chain(s, f.st.layers, 3, &img, NULL) == 0 && !img.built);
	/* Pages 3 and 5, and the runtime's page 4 between them: one run (SNAP_SPLIT_GAP). */
	CHECK(img.top_fd >= 0 && img.nruns == 1 && img.runs[0].gpn == 3 && img.runs[0].count == 3);
	m = mmap(NULL, MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(m != MAP_FAILED && snap_image_map(&img, m, MEM, 0, NULL) == 0);
	CHECK(m[0] == 0 && m[PG] == 0x11 && m[2 * PG + 9] == 0x22 && m[3 * PG] == 0);
	CHECK(m[4 * PG] == 0 && m[5 * PG + 4095] == 0x55 && m[700 * PG] == 0x71);
	munmap(m, MEM);
	snap_image_close(&img);
	snap_file_release(&f);

	/* The same dump again: the same layer, found in the store (a cache hit). */
	CHECK(vmsnap_build_info(dump, store, fn_snap, &info, why, sizeof(why)) == 0);
	CHECK(info.layer[0].existed && !info.image_built);
	snap_store_close(s);
}

static void test_ws_records(void)
{
	char raw[160], why[256] = "";
	int fd;

	snprintf(raw, sizeof(raw), "%s/ws.raw", dir);
	fd = open(raw, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	CHECK(write(fd, "not a working set at all, not even close to one......", 53) == 53);
	close(fd);
	CHECK(vmsnap_ws_commit(raw, store, why, sizeof(why)) == -EINVAL);
	CHECK(vmsnap_ws_commit("/nonexistent/ws.raw", store, why, sizeof(why)) == -ENOENT);
}

int main(void)
{
	snprintf(dir, sizeof(dir), "/tmp/test-vmsnap-XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	snprintf(dump, sizeof(dump), "%s/vm.dump", dir);
	snprintf(store, sizeof(store), "%s/store", dir);
	snprintf(out, sizeof(out), "%s/vm.snap", dir);
	test_whole_dump();
	test_damaged_dumps();
	test_layer_chain();
	test_ws_records();
	if (fork() == 0) {
		execlp("rm", "rm", "-rf", dir, (char *)NULL);
		_exit(127);
	}
	wait(NULL);
	return check_done();
}
