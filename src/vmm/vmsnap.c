/* Taking and restoring process-VM snapshots inside stoke-vmm: see vmsnap.h. */
#include "vmsnap.h"
#include "vm.h"
#include "clock.h"
#include "guest/layout.h"
#include "snap/snap.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#define VCPU_VERSION	1u
#define VMM_VERSION	1u
#define NR_MSRS		12
#define PATH_MAX_SNAP	4096

/*
 * The MSRs the guest kernel programs (syscall entry) or the program can change, as
 * KVM names them; FS/GS base travel in the segment registers too.
 */
static const uint32_t msr_list[NR_MSRS] = {
	0xc0000081, 0xc0000082, 0xc0000083, 0xc0000084,	/* STAR LSTAR CSTAR FMASK */
	0xc0000100, 0xc0000101, 0xc0000102, 0xc0000103,	/* FS GS KERNEL_GS TSC_AUX */
	0x277, 0x174, 0x175, 0x176,			/* PAT, SYSENTER */
};

struct vcpu_blob {
	uint32_t version;
	uint32_t nmsrs;
	struct kvm_regs regs;		/* stopped in the pending read: rax = its number */
	struct kvm_sregs sregs;
	struct kvm_fpu fpu;
	struct kvm_msr_entry msrs[NR_MSRS];
};

/* struct vm as the snapshot keeps it; page_used and the descriptors follow it. */
struct vmm_blob {
	uint32_t version;
	uint32_t nfds;
	uint64_t mem_size, brk_start, brk_cur, mmap_top, stack_lo;
	uint64_t fs_base, tid_address, rlimit_stack, sigmask, nr_syscalls;
	uint8_t sigactions[64][32];
	uint8_t altstack[24];
	char cwd[256];
	char exe_path[256];
	uint32_t umask;
	int32_t has_vdso;
	struct chan_track out;
};

struct fd_blob {
	int32_t fd;
	int32_t kind;
	int32_t cloexec;
	int32_t flags;
	int64_t offset;		/* host file offset, restored with lseek */
	char path[PATH_MAX_SNAP];
};

struct populate;
static void populate_free(struct populate *p);

struct vmsnap_state {
	int dump_fd;
	int state_fd;		/* --state-dump: the whole VM, when the daemon asks */
	int base_fd;		/* --snapshot-base-dump, until the program is loaded */
	int pagemap_fd;
	int ws_fd;
	int dumped;
	int ws_done;
	int responded;		/* a response frame went out since the restore */
	uint64_t *zeroed;	/* a layer dump is due: pages gmem_zero gave back */
	int tracking;		/* vm_track_pages: the guest's accessed bits name its pages */
	struct vcpu_blob vcpu;
	struct snap_id image;
	uint32_t touch_n;	/* ranges at GL_TOUCH for vm_touch, 0 for none */
	struct populate *pending;	/* the restore's mapping, for vmsnap_populate */
	pthread_t populate;	/* runs it beside the starting guest */
	int populating;
};

static int say(char *why, size_t len, int r, const char *fmt, const char *arg)
{
	snprintf(why, len, fmt, arg, strerror(-r));
	return r;
}

int vmsnap_open(struct vm *vm, char *why, size_t len)
{
	const struct vm_config *cfg = vm->cfg;
	struct vmsnap_state *s;

	if (!cfg->snap_dump && !cfg->snap_restore && !cfg->snap_base_dump && !cfg->state_dump)
		return 0;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->dump_fd = s->base_fd = s->ws_fd = s->state_fd = -1;
	vm->snap = s;
	s->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	if (s->pagemap_fd < 0)
		return say(why, len, -errno, "%s: %s", "/proc/self/pagemap");
	/*
	 * A restored VM's pagemap shows just the pages it wrote since the restore: its
	 * dump is a layer on the restored chain (vmsnap_build reads the parent from it).
	 */
	if (cfg->snap_dump) {
		s->dump_fd = open(cfg->snap_dump, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (s->dump_fd < 0)
			return say(why, len, -errno, "%s: %s", cfg->snap_dump);
	}
	if (cfg->state_dump) {
		s->state_fd = open(cfg->state_dump, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (s->state_fd < 0)
			return say(why, len, -errno, "%s: %s", cfg->state_dump);
	}
	/*
	 * A dump that becomes a layer on a parent must say which pages went back to
	 * zero: pagemap shows a page given back with MADV_DONTNEED (booted) or mapped
	 * fresh (restored) as absent, like one never touched.
	 */
	if (cfg->snap_dump && (cfg->snap_restore || cfg->snap_base_dump)) {
		s->zeroed = calloc((vm->mem_size / VM_PAGE + 63) / 64, 8);
		if (!s->zeroed)
			return -ENOMEM;
	}
	if (cfg->snap_base_dump && !cfg->snap_restore) {
		s->base_fd = open(cfg->snap_base_dump, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC,
				  0600);
		if (s->base_fd < 0)
			return say(why, len, -errno, "%s: %s", cfg->snap_base_dump);
	}
	if (cfg->snap_restore && cfg->snap_ws_out) {
		s->ws_fd = open(cfg->snap_ws_out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (s->ws_fd < 0)
			return say(why, len, -errno, "%s: %s", cfg->snap_ws_out);
	}
	return 0;
}

void vmsnap_close(struct vm *vm)
{
	struct vmsnap_state *s = vm->snap;

	if (!s)
		return;
	vmsnap_settle(vm);
	if (s->pending)
		populate_free(s->pending);
	if (s->dump_fd >= 0)
		close(s->dump_fd);
	if (s->base_fd >= 0)
		close(s->base_fd);
	free(s->zeroed);
	if (s->ws_fd >= 0)
		close(s->ws_fd);
	if (s->state_fd >= 0)
		close(s->state_fd);
	if (s->pagemap_fd >= 0)
		close(s->pagemap_fd);
	free(s);
	vm->snap = NULL;
}

/* ---- taking the dump ---- */

static int get_vcpu(struct vm *vm, struct vcpu_blob *b)
{
	struct { struct kvm_msrs h; struct kvm_msr_entry e[1]; } q;
	int i;

	memset(b, 0, sizeof(*b));
	b->version = VCPU_VERSION;
	/* The synced copies are current: we are inside the exit of the read. */
	b->regs = vm->run->s.regs.regs;
	b->sregs = vm->run->s.regs.sregs;
	b->sregs.fs.base = vm->fs_base;
	if (ioctl(vm->vcpu_fd, KVM_GET_FPU, &b->fpu) < 0)
		return -errno;
	for (i = 0; i < NR_MSRS; i++) {
		memset(&q, 0, sizeof(q));
		q.h.nmsrs = 1;
		q.e[0].index = msr_list[i];
		/* Not every host knows every MSR: keep the ones it returns. */
		if (ioctl(vm->vcpu_fd, KVM_GET_MSRS, &q) == 1)
			b->msrs[b->nmsrs++] = q.e[0];
	}
	return 0;
}

static void fill_vmm(struct vm *vm, struct vmm_blob *b)
{
	memset(b, 0, sizeof(*b));
	b->version = VMM_VERSION;
	b->mem_size = vm->mem_size;
	b->brk_start = vm->brk_start;
	b->brk_cur = vm->brk_cur;
	b->mmap_top = vm->mmap_top;
	b->stack_lo = vm->stack_lo;
	b->fs_base = vm->fs_base;
	b->tid_address = vm->tid_address;
	b->rlimit_stack = vm->rlimit_stack;
	b->sigmask = vm->sigmask;
	b->nr_syscalls = vm->nr_syscalls;
	memcpy(b->sigactions, vm->sigactions, sizeof(b->sigactions));
	memcpy(b->altstack, vm->altstack, sizeof(b->altstack));
	memcpy(b->cwd, vm->cwd, sizeof(b->cwd));
	memcpy(b->exe_path, vm->exe_path, sizeof(b->exe_path));
	b->umask = vm->umask;
	b->has_vdso = vm->has_vdso;
	b->out = vm->out;
}

static int fill_fd(struct vm *vm, int i, struct fd_blob *f)
{
	const struct vfd *v = &vm->fds[i];

	memset(f, 0, sizeof(*f));
	f->fd = i;
	f->kind = v->kind;
	f->cloexec = v->cloexec;
	f->flags = v->flags;
	if (v->kind != VFD_HOST)
		return 0;
	/* A host file is re-opened by its guest path; one without a path cannot be. */
	if (!v->path || strlen(v->path) >= sizeof(f->path))
		return -ENOTSUP;
	strcpy(f->path, v->path);
	f->offset = lseek(v->host, 0, SEEK_CUR);
	if (f->offset < 0)
		f->offset = 0;
	return 0;
}

/* The VMM blob: struct vmm_blob, page_used, then one fd_blob per open descriptor. */
static void *vmm_blob(struct vm *vm, size_t *len, int *err)
{
	uint64_t npages = vm->mem_size / VM_PAGE;
	size_t n = 0, off;
	uint8_t *buf;
	int i;

	for (i = 0; i < VM_NR_FDS; i++)
		n += vm->fds[i].kind != VFD_FREE;
	*len = sizeof(struct vmm_blob) + npages + n * sizeof(struct fd_blob);
	buf = calloc(1, *len);
	if (!buf) {
		*err = -ENOMEM;
		return NULL;
	}
	fill_vmm(vm, (struct vmm_blob *)buf);
	((struct vmm_blob *)buf)->nfds = (uint32_t)n;
	memcpy(buf + sizeof(struct vmm_blob), vm->page_used, npages);
	off = sizeof(struct vmm_blob) + npages;
	for (i = 0; i < VM_NR_FDS && !*err; i++) {
		if (vm->fds[i].kind == VFD_FREE)
			continue;
		*err = fill_fd(vm, i, (struct fd_blob *)(buf + off));
		off += sizeof(struct fd_blob);
	}
	if (*err) {
		free(buf);
		return NULL;
	}
	return buf;
}

static int pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;
	ssize_t n;

	while (len) {
		n = pwrite(fd, p, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		p += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

#define ALIGN_UP(x) (((x) + VM_PAGE - 1) & ~(uint64_t)(VM_PAGE - 1))

/* Writes the dirty pages, in runs, at mem_off + their guest address. */
static int write_pages(int fd, struct vm *vm, const uint64_t *bm, uint64_t mem_off)
{
	uint64_t npages = vm->mem_size / VM_PAGE, p = 0, q;
	int r;

	while (p < npages) {
		if (!(bm[p / 64] >> (p % 64) & 1)) {
			p++;
			continue;
		}
		for (q = p; q < npages && (bm[q / 64] >> (q % 64) & 1); q++)
			;
		r = pwrite_all(fd, vm->mem + p * VM_PAGE, (q - p) * VM_PAGE,
			       mem_off + p * VM_PAGE);
		if (r)
			return r;
		p = q;
	}
	return 0;
}

/* What one dump holds besides memory; the base dump has no vCPU or VMM state. */
struct dump_parts {
	int fd;
	const void *vcpu, *vmm;
	size_t vcpu_len, vmm_len;
	const uint64_t *bm;
	size_t bm_len;
	const struct snap_id *parent;	/* restored VM: the chain's top layer */
};

static int write_dump(struct vm *vm, const struct dump_parts *d)
{
	struct vmsnap_dump_hdr h = { .version = VMSNAP_DUMP_VERSION };
	int r;

	h.mem_bytes = vm->mem_size;
	h.vcpu_off = VM_PAGE;
	h.vcpu_len = d->vcpu_len;
	h.vmm_off = ALIGN_UP(h.vcpu_off + h.vcpu_len);
	h.vmm_len = d->vmm_len;
	h.bitmap_off = ALIGN_UP(h.vmm_off + h.vmm_len);
	h.bitmap_len = d->bm_len;
	h.mem_off = ALIGN_UP(h.bitmap_off + h.bitmap_len);
	if (d->parent) {
		h.flags = VMSNAP_DUMP_PARENT;
		memcpy(h.parent, d->parent->b, sizeof(h.parent));
	}
	r = ftruncate(d->fd, (off_t)(h.mem_off + vm->mem_size)) < 0 ? -errno : 0;
	r = r ? r : pwrite_all(d->fd, d->vcpu, d->vcpu_len, h.vcpu_off);
	r = r ? r : pwrite_all(d->fd, d->vmm, d->vmm_len, h.vmm_off);
	r = r ? r : pwrite_all(d->fd, d->bm, d->bm_len, h.bitmap_off);
	r = r ? r : write_pages(d->fd, vm, d->bm, h.mem_off);
	if (r)
		return r;
	memcpy(h.magic, VMSNAP_DUMP_MAGIC, sizeof(h.magic));
	return pwrite_all(d->fd, &h, sizeof(h), 0);
}

/*
 * A restored VM gets a fresh, empty /tmp: a snapshot of a guest that already keeps
 * files there would restore without them, so there is none (the VM boots instead).
 */
static int tmp_is_empty(struct vm *vm)
{
	struct { uint64_t ino; int64_t off; uint16_t reclen; uint8_t type; char name[]; } *d;
	char buf[4096];
	long n, off;
	int fd, empty = 1;

	if (vm->mnt_fd[VM_MNT_TMP] < 0)
		return 1;
	fd = vfs_open(vm, AT_FDCWD, "/tmp", O_RDONLY | O_DIRECTORY, NULL);
	if (fd < 0)
		return 0;
	while (empty && (n = syscall(SYS_getdents64, fd, buf, sizeof(buf))) > 0) {
		for (off = 0; off < n; off += d->reclen) {
			d = (void *)(buf + off);
			if (strcmp(d->name, ".") && strcmp(d->name, ".."))
				empty = 0;
		}
	}
	close(fd);
	return empty;
}

/*
 * Every page the VM touched (booted) or wrote since its restore (restored), the VMM's
 * own writes included, not only KVM's. Ranges gmem_zero gave fresh anonymous memory
 * are added: their untouched pages are absent from pagemap yet now read as zero.
 */
static int dirty_pages(struct vm *vm, struct vmsnap_state *s, uint64_t *bm)
{
	uint64_t i, n = (vm->mem_size / VM_PAGE + 63) / 64;
	int r = snap_dirty_from_pagemap(s->pagemap_fd, vm->mem, vm->mem_size, bm);

	for (i = 0; !r && s->zeroed && i < n; i++)
		bm[i] |= s->zeroed[i];
	return r;
}

static int page_is_zero(const uint8_t *p)
{
	static const uint8_t zero[VM_PAGE];

	return !memcmp(p, zero, VM_PAGE);
}

/*
 * Every page whose contents the guest could read back: those the address space owns
 * (page_used) and those written since boot or restore (the pagemap), minus the zero
 * ones. On a restored VM the pagemap alone would miss pages still shared with the
 * image it came from, so this dump stands alone as a base layer.
 */
static void state_bitmap(struct vm *vm, uint64_t *bm)
{
	uint64_t p, n = vm->mem_size / VM_PAGE, bit;

	for (p = 0; p < n; p++) {
		bit = 1ULL << (p % 64);
		if (vm->page_used[p])
			bm[p / 64] |= bit;
		if ((bm[p / 64] & bit) && page_is_zero(vm->mem + p * VM_PAGE))
			bm[p / 64] &= ~bit;
	}
}

/*
 * Dumps the VM to fd. A layer dump holds the pages written since the restore (or the
 * boot) and names its parent; a whole dump (kept state) holds every non-zero page the
 * guest can read and no parent. /tmp is not part of either: a restored VM starts with
 * an empty one, so a VM with files there is not dumped (-ENOTEMPTY).
 */
static int take_dump(struct vm *vm, struct vmsnap_state *s, int fd, int whole)
{
	struct dump_parts d = { .fd = fd, .vcpu = &s->vcpu, .vcpu_len = sizeof(s->vcpu) };
	uint64_t *bm;
	void *vmm = NULL;
	int r;

	vmsnap_settle(vm);
	d.bm_len = (vm->mem_size / VM_PAGE + 63) / 64 * 8;
	bm = calloc(1, d.bm_len);
	r = bm ? 0 : -ENOMEM;
	if (!r && !tmp_is_empty(vm))
		r = -ENOTEMPTY;
	r = r ? r : get_vcpu(vm, &s->vcpu);
	if (!r)
		vmm = vmm_blob(vm, &d.vmm_len, &r);
	if (!r)
		r = dirty_pages(vm, s, bm);
	if (!r && whole)
		state_bitmap(vm, bm);
	d.vmm = vmm;
	d.bm = bm;
	d.parent = !whole && vm->mem_is_file ? &s->image : NULL;
	if (!r)
		r = write_dump(vm, &d);
	free(vmm);
	free(bm);
	return r;
}

void vmsnap_zeroed(struct vm *vm, uint64_t addr, uint64_t len)
{
	struct vmsnap_state *s = vm->snap;

	if (!s || !s->zeroed)
		return;
	for (uint64_t p = addr / VM_PAGE; p < (addr + len) / VM_PAGE; p++)
		s->zeroed[p / 64] |= 1ULL << (p % 64);
}

/*
 * The base layer: guest kernel, vDSO, the program and its interpreter as loaded, the
 * initial stack. No vCPU or VMM state: nothing restores to this point.
 */
void vmsnap_at_load(struct vm *vm)
{
	struct vmsnap_state *s = vm->snap;
	struct dump_parts d = { 0 };
	uint64_t *bm;
	int r;

	if (!s || s->base_fd < 0)
		return;
	d.fd = s->base_fd;
	d.bm_len = (vm->mem_size / VM_PAGE + 63) / 64 * 8;
	bm = calloc(1, d.bm_len);
	r = bm ? dirty_pages(vm, s, bm) : -ENOMEM;
	d.bm = bm;
	if (!r)
		r = write_dump(vm, &d);
	if (r) {
		fprintf(stderr, "stoke-vmm: base snapshot dump: %s\n", strerror(-r));
		pwrite_all(s->base_fd, VMSNAP_DUMP_NONE, 8, 0);
	}
	free(bm);
	close(s->base_fd);
	s->base_fd = -1;
}

void vmsnap_at_read(struct vm *vm)
{
	struct vmsnap_state *s = vm->snap;
	int r;

	if (!s || s->dump_fd < 0 || s->dumped)
		return;
	/*
	 * A restored VM's first read is the one it was snapshotted in; the new state
	 * (the function it loaded) exists once it has answered that frame.
	 */
	if (vm->mem_is_file && !s->responded)
		return;
	s->dumped = 1;
	r = take_dump(vm, s, s->dump_fd, 0);
	/* A failed dump costs the snapshot, not the request: the VM goes on serving. */
	if (r) {
		fprintf(stderr, "stoke-vmm: snapshot dump: %s\n", strerror(-r));
		pwrite_all(s->dump_fd, VMSNAP_DUMP_NONE, 8, 0);
	}
	close(s->dump_fd);
	s->dump_fd = -1;
}

/* ---- restoring ---- */

static int check_vmm(struct vm *vm, const struct snap_file *f, char *why, size_t len)
{
	const struct vmm_blob *b = f->st.vmm;
	uint64_t npages = vm->mem_size / VM_PAGE;

	if (f->st.vcpu_len != sizeof(struct vcpu_blob) ||
	    ((const struct vcpu_blob *)f->st.vcpu)->version != VCPU_VERSION ||
	    f->st.vmm_len < sizeof(*b) || b->version != VMM_VERSION) {
		snprintf(why, len, "snapshot state from another stoke-vmm version");
		return -EPROTONOSUPPORT;
	}
	if (f->st.mem_bytes != vm->mem_size || b->mem_size != vm->mem_size) {
		snprintf(why, len, "snapshot of %llu MiB of memory, this VM has %llu",
			 (unsigned long long)(f->st.mem_bytes >> 20),
			 (unsigned long long)(vm->mem_size >> 20));
		return -EINVAL;
	}
	/* The dump came from a VMM its guest may have attacked: bound what indexes memory. */
	if (b->nfds > VM_NR_FDS ||
	    f->st.vmm_len != sizeof(*b) + npages + b->nfds * sizeof(struct fd_blob) ||
	    b->brk_start > b->mmap_top || b->brk_cur > b->mmap_top ||
	    b->mmap_top > b->stack_lo || b->stack_lo > vm->mem_size) {
		snprintf(why, len, "malformed VMM state in the snapshot");
		return -EINVAL;
	}
	return 0;
}

static void set_vm_fields(struct vm *vm, const struct vmm_blob *b)
{
	vm->brk_start = b->brk_start;
	vm->brk_cur = b->brk_cur;
	vm->mmap_top = b->mmap_top;
	vm->stack_lo = b->stack_lo;
	vm->fs_base = b->fs_base;
	vm->tid_address = b->tid_address;
	vm->rlimit_stack = b->rlimit_stack;
	vm->sigmask = b->sigmask;
	vm->nr_syscalls = b->nr_syscalls;
	memcpy(vm->sigactions, b->sigactions, sizeof(vm->sigactions));
	memcpy(vm->altstack, b->altstack, sizeof(vm->altstack));
	memcpy(vm->cwd, b->cwd, sizeof(vm->cwd));
	vm->cwd[sizeof(vm->cwd) - 1] = '\0';
	memcpy(vm->exe_path, b->exe_path, sizeof(vm->exe_path));
	vm->exe_path[sizeof(vm->exe_path) - 1] = '\0';
	vm->umask = b->umask & 0777;
	vm->has_vdso = !!b->has_vdso;
	vm->out = b->out;
	if (vm->out.hdr_len > sizeof(vm->out.hdr))
		vm->out.hdr_len = 0;
}

static int reopen_fd(struct vm *vm, const struct fd_blob *f)
{
	struct vfd *v;
	int host;

	if (f->fd < 0 || f->fd >= VM_NR_FDS || f->kind < VFD_FREE || f->kind > VFD_CHANNEL)
		return -EINVAL;
	v = &vm->fds[f->fd];
	if (f->kind != VFD_HOST) {
		/* stdio and the channel are this VM's own, set up by vfs_init. */
		v->kind = f->kind;
		v->cloexec = f->cloexec;
		return 0;
	}
	if (memchr(f->path, '\0', sizeof(f->path)) == NULL)
		return -EINVAL;
	host = vfs_open(vm, AT_FDCWD, f->path,
			f->flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_CLOEXEC), NULL);
	if (host < 0)
		return host;
	if (f->offset > 0 && lseek(host, f->offset, SEEK_SET) < 0) {
		close(host);
		return -errno;
	}
	memset(v, 0, sizeof(*v));
	v->kind = VFD_HOST;
	v->host = host;
	v->cloexec = f->cloexec;
	v->flags = f->flags;
	v->path = strdup(f->path);
	return v->path ? 0 : -ENOMEM;
}

static int restore_fds(struct vm *vm, const struct vmm_blob *b, char *why, size_t len)
{
	const struct fd_blob *f = (const void *)((const uint8_t *)(b + 1) +
						 vm->mem_size / VM_PAGE);
	uint32_t i;
	int r;

	for (i = 0; i < b->nfds; i++) {
		r = reopen_fd(vm, &f[i]);
		if (r) {
			snprintf(why, len, "re-opening guest descriptor %d (%.200s): %s",
				 f[i].fd, f[i].path, strerror(-r));
			return r;
		}
	}
	return 0;
}

#define HUGE_SIZE	(2ULL << 20)

/*
 * On this machine every first guest touch of a 4 KiB host page is a shadow page fault
 * (about 25 us): a restored Python touches hundreds. A 2 MiB region backed by a host
 * huge page costs one. So the regions the working set touches are copied into private
 * anonymous huge pages (more private memory per VM: 2 MiB per hot region); the rest
 * stays shared with the page cache. The first 2 MiB (guest kernel, 4 KiB guest pages)
 * is left alone.
 */
static void copy_hot_regions(struct vm *vm, const struct snap_image *img,
			     const struct snap_ws *ws)
{
	uint64_t last = UINT64_MAX, reg, i, p;
	uint8_t *r;

	for (i = 0; i < ws->nranges; i++) {
		for (p = ws->r[i].gpn; p < ws->r[i].gpn + ws->r[i].count; p++) {
			reg = p * VM_PAGE / HUGE_SIZE;
			if (reg == last || reg == 0 || (reg + 1) * HUGE_SIZE > vm->mem_size)
				continue;
			last = reg;
			r = vm->mem + reg * HUGE_SIZE;
			if (mmap(r, HUGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE |
				 MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) == MAP_FAILED)
				continue;
			madvise(r, HUGE_SIZE, MADV_HUGEPAGE);
			if (snap_image_read(img, r, HUGE_SIZE, reg * HUGE_SIZE))
				/* Back to the image's pages: never leave the region zeroed. */
				snap_image_map(img, r, HUGE_SIZE, reg * HUGE_SIZE, NULL);
		}
	}
}

/*
 * Lists the working set's user pages at GL_TOUCH for gk_touch (the guest kernel's own
 * pages are not user-accessible; it faults them itself). Ranges that do not fit are
 * left to fault during the request.
 */
static uint32_t touch_ranges(struct vm *vm, const struct snap_range *r, uint32_t nr,
			     int write, uint32_t n)
{
	uint64_t *out = (uint64_t *)(vm->mem + GL_TOUCH), lo = GL_KERNEL_END / VM_PAGE;
	uint64_t hi = vm->mem_size / VM_PAGE, a, b;
	uint32_t i;

	for (i = 0; i < nr && n < GL_TOUCH_SIZE / 16; i++) {
		a = r[i].gpn < lo ? lo : r[i].gpn;
		b = r[i].gpn + r[i].count > hi ? hi : r[i].gpn + r[i].count;
		if (a >= b)
			continue;
		out[2 * n] = a * VM_PAGE | (uint64_t)write;
		out[2 * n + 1] = b - a;
		n++;
	}
	return n;
}

/*
 * The pages the recording VM wrote come first and are written (one fault makes the
 * private copy and a writable mapping; a read first would cost a second fault), then
 * every touched page is read (those already mapped cost nothing).
 */
static uint32_t touch_list(struct vm *vm, const struct snap_ws *ws)
{
	uint32_t n;

	if (!vm_touch_ready(vm))
		return 0;
	n = touch_ranges(vm, ws->w, ws->nwritten, 1, 0);
	return touch_ranges(vm, ws->r, ws->nranges, 0, n);
}

/*
 * Besides mapping the working set shared: copy the pages the recording VM wrote (one
 * guest fault each instead of a read fault and a write fault) and bring the dense
 * read-only 2 MiB regions in as huge folios (one guest fault per region): docs/vmm.md.
 */
#define PF_FLAGS	(SNAP_PF_DEFAULT | SNAP_PF_WRITTEN | SNAP_PF_HUGE)

/* Set once the preload runs elsewhere (set before the jail's fork: the VMM inherits it). */
static int preloaded;

struct populate {
	struct snap_image img;	/* id and size only: nothing is read through it */
	struct snap_ws ws;
	uint8_t *mem;
};

static void populate_free(struct populate *p)
{
	snap_ws_release(&p->ws);
	free(p);
}

static void *populate_run(void *arg)
{
	struct populate *p = arg;

	/*
	 * The huge regions were advised before the guest ran (advice takes the mmap lock
	 * for writing, which the guest's faults would wait for); populating them here maps
	 * each folio with one PMD once it is read.
	 */
	snap_ws_prefetch(&p->img, &p->ws, p->mem, SNAP_FILL_NONE, PF_FLAGS & ~SNAP_PF_HUGE,
			 NULL);
	populate_free(p);
	return NULL;
}

/*
 * Where the preload is reading the working set, mapping it (and copying the written
 * pages) waits for that I/O. So the restore only records the job (taking ws over), and
 * vmsnap_populate runs it on a thread beside the starting guest.
 */
static void populate_later(struct vm *vm, const struct snap_image *img, struct snap_ws *ws)
{
	struct populate *p = malloc(sizeof(*p));

	if (!p) {
		snap_ws_prefetch(img, ws, vm->mem, SNAP_FILL_NONE, PF_FLAGS & ~SNAP_PF_HUGE, NULL);
		snap_ws_release(ws);
		return;
	}
	*p = (struct populate){ .img = *img, .ws = *ws, .mem = vm->mem };
	p->img.fd = p->img.top_fd = -1;
	p->img.runs = NULL;
	p->img.nruns = 0;
	vm->snap->pending = p;
}

void vmsnap_populate(void *arg)
{
	struct vm *vm = arg;
	struct populate *p = vm->snap ? vm->snap->pending : NULL;

	if (!p)
		return;
	vm->snap->pending = NULL;
	if (!pthread_create(&vm->snap->populate, NULL, populate_run, p)) {
		vm->snap->populating = 1;
		return;
	}
	populate_run(p);
}

void vmsnap_settle(struct vm *vm)
{
	if (vm->snap && vm->snap->populating) {
		pthread_join(vm->snap->populate, NULL);
		vm->snap->populating = 0;
	}
}

/* Takes ws over. */
static void prefetch(struct vm *vm, const struct snap_image *img, struct snap_ws *ws)
{
	if (vm->cfg->snap_huge && !snap_id_is_zero(&ws->image) &&
	    !memcmp(&ws->image, &img->id, sizeof(ws->image)))
		copy_hot_regions(vm, img, ws);
	/* A working set recorded on another image is refused (-ESTALE): then lazily. */
	if (!preloaded) {
		if (!snap_ws_prefetch(img, ws, vm->mem, SNAP_FILL_DEFAULT, PF_FLAGS, NULL) &&
		    vm->cfg->snap_touch)
			vm->snap->touch_n = touch_list(vm, ws);
		snap_ws_release(ws);
		return;
	}
	/* Advice on the huge regions now (FILL_NONE: nothing is read or mapped here). */
	if (snap_ws_prefetch(img, ws, vm->mem, SNAP_FILL_NONE, SNAP_PF_HUGE, NULL)) {
		snap_ws_release(ws);
		return;
	}
	if (vm->cfg->snap_touch)
		vm->snap->touch_n = touch_list(vm, ws);
	populate_later(vm, img, ws);
}

struct preload {
	struct snap_image img;
	struct snap_ws ws;
};

/*
 * Only system calls and thread creation here: the jail forks while this runs, so it
 * holds no lock that fork does not handle (OpenSSL's, among others, are not).
 */
static void *preload_io(void *arg)
{
	struct preload *p = arg;

	snap_ws_prefetch(&p->img, &p->ws, NULL, SNAP_FILL_READAHEAD, PF_FLAGS, NULL);
	snap_image_close(&p->img);
	snap_ws_release(&p->ws);
	free(p);
	return NULL;
}

/* Closes every descriptor from 3 up but a and b (b may be -1). */
static void keep_only(int a, int b)
{
	int lo = a < b ? a : b, hi = a < b ? b : a;
	unsigned from = 3;

	if (lo < 0)
		lo = hi, hi = -1;
	if (lo > 3)
		close_range(from, (unsigned)lo - 1, 0);
	from = (unsigned)lo + 1;
	if (hi >= 0) {
		if (hi > lo + 1)
			close_range(from, (unsigned)hi - 1, 0);
		from = (unsigned)hi + 1;
	}
	close_range(from, ~0U, 0);
}

/*
 * The preload in a child process of its own, for a VMM that is already jailed in
 * namespaces (a generic shell) and drops its privileges soon: glibc's setresuid makes
 * every thread of the process take a signal first, which a thread waiting in a 2 MiB
 * read would delay by milliseconds. The child keeps only the image's descriptors and
 * exits when the reads are done (SIGCHLD ignored: nobody waits for it).
 */
static int preload_apart(struct preload *p)
{
	pid_t pid;

	signal(SIGCHLD, SIG_IGN);
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		keep_only(p->img.fd, p->img.top_fd);
		snap_ws_prefetch(&p->img, &p->ws, NULL, SNAP_FILL_READAHEAD, PF_FLAGS, NULL);
		_exit(0);
	}
	return 0;
}

/* Reads the working set and opens the cached image it names (the store is closed). */
static int preload_open(const char *ws, const char *store_dir, struct preload *p)
{
	struct snap_store *store;
	int r = snap_ws_read(ws, &p->ws, NULL);

	if (r)
		return r;
	/*
	 * The image is named by its top layer, which the working set records; only a
	 * cached one is read ahead (the restore assembles a missing one).
	 */
	r = snap_store_open(store_dir, NULL, &store, NULL);
	if (!r) {
		r = snap_image_find(store, &p->ws.image, &p->img);
		snap_store_close(store);
	}
	if (r)
		snap_ws_release(&p->ws);
	return r;
}

/*
 * A generic shell's preloader, forked while the shell is parked (a fork of the VMM
 * costs about 0.2 ms, and opening the working set and the image 0.3 ms more, which the
 * launch no longer waits for). It keeps only its two pipes and dies with the VMM.
 */
static int helper_go = -1;	/* the VMM's end: the launch's paths, then closed */
static int helper_opened = -1;	/* the helper's answer: 1 reading, 0 not */

/* In the helper: waits for "ws\0store\0" (or end of file: no restore), then reads. */
static void helper_run(int in, int out)
{
	static char buf[2 * PATH_MAX + 2];
	struct preload p = { 0 };
	size_t got = 0;
	ssize_t n;
	char ok;

	while (got < sizeof(buf) - 1 && (n = read(in, buf + got, sizeof(buf) - 1 - got)) != 0)
		if (n > 0)
			got += (size_t)n;
		else if (errno != EINTR)
			_exit(0);
	buf[got] = '\0';
	if (strlen(buf) + 1 >= got)
		_exit(0);
	ok = !preload_open(buf, buf + strlen(buf) + 1, &p);
	if (write(out, &ok, 1) != 1 || !ok)
		_exit(0);
	close(out);
	snap_ws_prefetch(&p.img, &p.ws, NULL, SNAP_FILL_READAHEAD, PF_FLAGS, NULL);
	_exit(0);
}

void vmsnap_preload_fork(void)
{
	pid_t pid, self = getpid();
	int go[2], op[2];

	if (pipe2(go, O_CLOEXEC) < 0)
		return;
	if (pipe2(op, O_CLOEXEC) < 0) {
		close(go[0]);
		close(go[1]);
		return;
	}
	signal(SIGCHLD, SIG_IGN);	/* nobody waits for it: reaped by the kernel */
	pid = fork();
	if (pid == 0) {
		keep_only(go[0], op[1]);
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != self)
			_exit(0);
		helper_run(go[0], op[1]);
	}
	close(go[0]);
	close(op[1]);
	if (pid < 0) {
		close(go[1]);
		close(op[0]);
		return;
	}
	helper_go = go[1];
	helper_opened = op[0];
}

/* Hands the launch to the helper; 0 when it took it (its answer comes later). */
static int helper_start(const struct vm_config *cfg)
{
	size_t a, b;
	int r = -ENOENT;

	if (helper_go < 0)
		return -ECHILD;
	if (cfg->snap_restore && cfg->snap_ws && cfg->snap_store) {
		a = strlen(cfg->snap_ws) + 1;
		b = strlen(cfg->snap_store) + 1;
		r = a + b < 2 * PATH_MAX && write(helper_go, cfg->snap_ws, a) == (ssize_t)a &&
		    write(helper_go, cfg->snap_store, b) == (ssize_t)b ? 0 : -EIO;
	}
	close(helper_go);
	helper_go = -1;
	if (r) {
		close(helper_opened);
		helper_opened = -1;
	}
	return r;
}

/*
 * Whether the helper opened its files and is reading: asked before the restore maps
 * memory (the jail then leaves the host's files behind, and a restore whose working
 * set nobody reads prefetches it itself).
 */
static void helper_answer(void)
{
	ssize_t n;
	char ok = 0;

	if (helper_opened < 0)
		return;
	do
		n = read(helper_opened, &ok, 1);
	while (n < 0 && errno == EINTR);
	preloaded = n == 1 && ok;
	close(helper_opened);
	helper_opened = -1;
}

/*
 * readahead(2) waits for the file's block map and for room in the device queue (3-17
 * ms measured for an evicted Python image), so it runs on a thread of its own while
 * the jail and the VM are set up. Reading the working set and opening the image
 * (which take locks, in OpenSSL among others) happen before, on the caller's thread.
 * The jail's fork leaves the thread in the supervisor; the page cache is the same.
 */
void vmsnap_preload(const struct vm_config *cfg, int apart)
{
	struct preload *p;
	pthread_attr_t attr;
	pthread_t t;
	int r;

	if (apart && !helper_start(cfg))
		return;
	if (!cfg->snap_restore || !cfg->snap_ws || !cfg->snap_store ||
	    !(p = calloc(1, sizeof(*p))))
		return;
	r = preload_open(cfg->snap_ws, cfg->snap_store, p);
	if (r) {
		free(p);
		return;
	}
	if (apart) {
		r = preload_apart(p);
		preloaded = !r;
	} else if (!(r = -pthread_attr_init(&attr))) {
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		r = -pthread_create(&t, &attr, preload_io, p);
		pthread_attr_destroy(&attr);
		preloaded = !r;
		if (!r)
			return;
	}
	snap_image_close(&p->img);
	snap_ws_release(&p->ws);
	free(p);
}

/* Maps the image over the slot; past this point the boot path is gone. */
static int map_image(struct vm *vm, const struct snap_file *f, char *why, size_t len)
{
	struct snap_store *store;
	struct snap_image img;
	struct snap_err e = { 0 };
	struct snap_ws ws;
	int r, has_ws;

	r = snap_store_open(vm->cfg->snap_store, NULL, &store, &e);
	if (!r) {
		/* A function on a runtime maps the runtime's image, shared by its functions. */
		r = snap_image_open_chain(store, f->st.layers, f->st.nlayers, &img, &e);
		snap_store_close(store);
	}
	if (r) {
		snprintf(why, len, "%s", e.msg);
		return r;
	}
	if (img.damaged)
		fprintf(stderr, "stoke-vmm: the cached restore image was damaged (%s): "
			"assembled again from the store\n", strerror(-img.damaged));
	if (vm->cfg->stats && img.top_fd >= 0)
		fprintf(stderr, "stoke-vmm: split image: the parent's image and %u runs of "
			"the top layer's pages\n", img.nruns);
	if (img.size != vm->mem_size) {
		snap_image_close(&img);
		snprintf(why, len, "restore image size does not match the VM");
		return -EINVAL;
	}
	has_ws = vm->cfg->snap_ws && !snap_ws_read(vm->cfg->snap_ws, &ws, NULL);
	helper_answer();
	/* Every host file the restore needs is open: the jail may leave the host behind. */
	if (vm->host_files_done)
		vm->host_files_done(vm->host_files_done_arg);
	r = snap_image_map(&img, vm->mem, vm->mem_size, 0, &e);
	if (!r) {
		vm->mem_is_file = 1;
		vm->snap->image = img.id;
		if (has_ws)
			prefetch(vm, &img, &ws);
	} else {
		snprintf(why, len, "%s", e.msg);
		if (has_ws)
			snap_ws_release(&ws);
	}
	snap_image_close(&img);
	return r;
}

int vmsnap_restore_memory(struct vm *vm, int *mapped, char *why, size_t len)
{
	struct snap_file f;
	struct snap_err e = { 0 };
	const struct vmm_blob *b;
	int r;

	*mapped = 0;
	if (!vm->cfg->snap_store)
		return snprintf(why, len, "--restore needs --snap-store"), -EINVAL;
	r = snap_file_read(vm->cfg->snap_restore, &f, &e);
	if (r)
		return snprintf(why, len, "%s", e.msg), r;
	r = check_vmm(vm, &f, why, len);
	if (!r) {
		b = f.st.vmm;
		r = map_image(vm, &f, why, len);
		*mapped = !r;
	}
	if (!r) {
		memcpy(&vm->snap->vcpu, f.st.vcpu, sizeof(vm->snap->vcpu));
		memcpy(vm->page_used, b + 1, vm->mem_size / VM_PAGE);
		set_vm_fields(vm, b);
		r = restore_fds(vm, b, why, len);
	}
	/* A VM that records the working set notes what its guest touches, page by page. */
	if (!r && vm->snap->ws_fd >= 0)
		vm->snap->tracking = !vm_track_pages(vm);
	snap_file_release(&f);
	return r;
}

int vmsnap_restore_vcpu(struct vm *vm, char *why, size_t len)
{
	const struct vcpu_blob *b = &vm->snap->vcpu;
	struct { struct kvm_msrs h; struct kvm_msr_entry e[NR_MSRS]; } m;
	struct kvm_run *run = vm->run;

	memset(&m, 0, sizeof(m));
	m.h.nmsrs = b->nmsrs > NR_MSRS ? NR_MSRS : b->nmsrs;
	memcpy(m.e, b->msrs, m.h.nmsrs * sizeof(m.e[0]));
	if (ioctl(vm->vcpu_fd, KVM_SET_SREGS, &b->sregs) < 0 ||
	    ioctl(vm->vcpu_fd, KVM_SET_FPU, &b->fpu) < 0 ||
	    ioctl(vm->vcpu_fd, KVM_SET_MSRS, &m) != (int)m.h.nmsrs) {
		snprintf(why, len, "setting the vCPU state: %s", strerror(errno));
		return -EIO;
	}
	/* vm_resume serves the pending read from these and marks them dirty. */
	run->s.regs.regs = b->regs;
	run->s.regs.sregs = b->sregs;
	vm->fs_dirty = 0;
	if (vm->snap->touch_n) {
		if (vm_touch(vm, vm->snap->touch_n)) {
			snprintf(why, len, "touching the working set: the guest did not finish");
			return -EIO;
		}
		/* The list's pages read as the image's again: no private copy stays. */
		madvise(vm->mem + GL_TOUCH, GL_TOUCH_SIZE, MADV_DONTNEED);
		if (vm->cfg->stats)
			fprintf(stderr, "stoke-vmm: touched %u working-set ranges\n",
				vm->snap->touch_n);
	}
	return clock_restore(vm);
}

/* ---- working set ---- */

static int write_ws(int fd, const struct snap_ws *ws)
{
	struct vmsnap_ws_hdr h = { .magic = "STOKWSRW" };
	size_t len = ws->nranges * sizeof(ws->r[0]);
	int r;

	memcpy(h.image, ws->image.b, sizeof(h.image));
	h.pages = ws->pages;
	h.nranges = ws->nranges;
	h.nwritten = ws->nwritten;
	r = pwrite_all(fd, ws->r, len, sizeof(h));
	r = r ? r : pwrite_all(fd, ws->w, ws->nwritten * sizeof(ws->w[0]), sizeof(h) + len);
	return r ? r : pwrite_all(fd, &h, sizeof(h), 0);
}

static void set_range_bits(uint64_t *bm, const struct snap_range *r, uint32_t n,
			   uint64_t from, uint64_t to)
{
	uint64_t p;

	for (uint32_t i = 0; i < n; i++)
		for (p = r[i].gpn; p < r[i].gpn + r[i].count; p++)
			if (p < from || p >= to)
				bm[p / 64] |= 1ULL << (p % 64);
}

/*
 * Narrows the touched pages to what the guest's accessed bits name where they are
 * tracked (vm_track_pages), keeping every written page: the host's page tables also
 * hold the large folios' neighbours that one fault mapped (about 3x the pages here).
 */
static int narrow_to_accessed(struct vm *vm, struct snap_ws *ws)
{
	uint64_t n = vm->mem_size / VM_PAGE, words = (n + 63) / 64;
	uint64_t *bm = calloc(words, 8), *wm = calloc(words, 8);
	uint64_t pt = GL_TRACK_PT / VM_PAGE, pt_end = pt + GL_TRACK_PT_SIZE / VM_PAGE;
	struct snap_ws out, written;
	int r = bm && wm ? 0 : -ENOMEM;

	if (!r) {
		/* The tracking page tables are this VM's own, not the program's. */
		set_range_bits(wm, ws->w, ws->nwritten, pt, pt_end);
		set_range_bits(bm, ws->r, ws->nranges, GL_KERNEL_END / VM_PAGE,
			       vm_tracked_end(vm) / VM_PAGE);
		for (uint64_t p = pt; p < pt_end; p++)
			bm[p / 64] &= ~(1ULL << (p % 64));
		vm_tracked_accessed(vm, bm);
		for (uint64_t i = 0; i < words; i++)
			bm[i] |= wm[i];
		r = snap_ws_from_bitmap(bm, n, &ws->image, &out);
	}
	if (!r && (r = snap_ws_from_bitmap(wm, n, &ws->image, &written)))
		snap_ws_release(&out);
	free(bm);
	free(wm);
	if (r)
		return r;
	snap_ws_release(ws);
	*ws = out;
	ws->w = written.r;
	ws->nwritten = written.nranges;
	return 0;
}

void vmsnap_after_response(struct vm *vm)
{
	struct vmsnap_state *s = vm->snap;
	struct snap_ws ws;
	int r;

	if (s)
		s->responded = 1;
	if (!s || s->ws_fd < 0 || s->ws_done || !vm->mem_is_file)
		return;
	s->ws_done = 1;
	vmsnap_settle(vm);
	r = snap_ws_from_pagemap(s->pagemap_fd, vm->mem, vm->mem_size, &s->image, &ws);
	if (!r && s->tracking && (r = narrow_to_accessed(vm, &ws)))
		snap_ws_release(&ws);
	if (!r) {
		r = write_ws(s->ws_fd, &ws);
		snap_ws_release(&ws);
	}
	if (r)
		fprintf(stderr, "stoke-vmm: recording the working set: %s\n", strerror(-r));
	close(s->ws_fd);
	s->ws_fd = -1;
}

/* ---- state dumps (state: keep) ---- */

int vmsnap_dump_state(struct vm *vm)
{
	struct vmsnap_state *s = vm->snap;
	int r;

	if (!s || s->state_fd < 0)
		return -EBADF;
	r = take_dump(vm, s, s->state_fd, 1);
	if (r) {
		fprintf(stderr, "stoke-vmm: state dump: %s\n", strerror(-r));
		pwrite_all(s->state_fd, VMSNAP_DUMP_NONE, 8, 0);
	}
	return r;
}
