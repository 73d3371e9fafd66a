/* Memory system calls: brk, mmap and friends, as bookkeeping over the guest map. */
#include "sys.h"
#include "guest/layout.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE_UP(x) (((x) + VM_PAGE - 1) & ~(VM_PAGE - 1))

static int range_ok(struct vm *vm, uint64_t addr, uint64_t len)
{
	return addr >= GL_KERNEL_END && addr < vm->mmap_top && len <= vm->mmap_top - addr;
}

static int range_free(struct vm *vm, uint64_t addr, uint64_t len)
{
	uint64_t p;

	for (p = addr / VM_PAGE; p < (addr + len) / VM_PAGE; p++)
		if (vm->page_used[p])
			return 0;
	return 1;
}

/* Frees pages and returns them to the host, keeping "free pages read as zero". */
static void release(struct vm *vm, uint64_t addr, uint64_t len)
{
	gmem_mark(vm, addr, len, 0);
	gmem_zero(vm, addr, len);
}

SYS_HANDLER(brk)
{
	uint64_t want = a[0], old = PAGE_UP(vm->brk_cur), new = PAGE_UP(want);

	if (want < vm->brk_start || !range_ok(vm, vm->brk_start, want - vm->brk_start))
		return (long)vm->brk_cur;
	if (new > old) {
		if (!range_free(vm, old, new - old))
			return (long)vm->brk_cur;
		gmem_mark(vm, old, new - old, 1);
	} else if (new < old) {
		release(vm, new, old - new);
	}
	vm->brk_cur = want;
	return (long)want;
}

/* Picks the address for a new mapping per the flags; 0 with *err set on failure. */
static uint64_t place(struct vm *vm, uint64_t hint, uint64_t len, int flags, long *err)
{
	if (flags & (MAP_FIXED | MAP_FIXED_NOREPLACE)) {
		if (hint & (VM_PAGE - 1)) {
			*err = -EINVAL;
			return 0;
		}
		if (!range_ok(vm, hint, len)) {
			*err = -ENOMEM;
			return 0;
		}
		if ((flags & MAP_FIXED_NOREPLACE) && !range_free(vm, hint, len)) {
			*err = -EEXIST;
			return 0;
		}
		if (!range_free(vm, hint, len))
			release(vm, hint, len);	/* MAP_FIXED replaces what was there */
		gmem_mark(vm, hint, len, 1);
		return hint;
	}
	hint &= ~(VM_PAGE - 1);
	if (hint && range_ok(vm, hint, len) && range_free(vm, hint, len)) {
		gmem_mark(vm, hint, len, 1);
		return hint;
	}
	hint = gmem_alloc(vm, len);
	if (!hint)
		*err = -ENOMEM;
	return hint;
}

/* Copies file contents in: a private mapping is a snapshot of the file. */
static long fill_from_file(struct vm *vm, uint64_t addr, uint64_t len, struct vfd *f,
			   uint64_t off)
{
	uint64_t done = 0;
	ssize_t n;

	while (done < len) {
		n = pread(f->host, vm->mem + addr + done, len - done, (off_t)(off + done));
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		done += (uint64_t)n;
	}
	/* The tail of the last page past end of file reads as zero. */
	memset(vm->mem + addr + done, 0, PAGE_UP(len) - done);
	return 0;
}

SYS_HANDLER(mmap)
{
	uint64_t len = PAGE_UP(a[1]), off = a[5], addr;
	int prot = (int)a[2], flags = (int)a[3];
	struct vfd *f = NULL;
	long err = 0;

	if (!a[1] || !len || (off & (VM_PAGE - 1)))
		return -EINVAL;
	if (!(flags & (MAP_PRIVATE | MAP_SHARED | MAP_SHARED_VALIDATE)))
		return -EINVAL;
	if (!(flags & MAP_ANONYMOUS)) {
		f = vfd_get(vm, (long)a[4]);
		if (!f)
			return -EBADF;
		if (f->kind != VFD_HOST)
			return -ENODEV;
		/* No shared writable file mappings: they would need write-back. */
		if ((flags & MAP_SHARED) && (prot & PROT_WRITE))
			return -ENODEV;
	}
	addr = place(vm, a[0], len, flags, &err);
	if (!addr)
		return err;
	if (f) {
		err = fill_from_file(vm, addr, a[1], f, off);
		if (err) {
			release(vm, addr, len);
			return err;
		}
	}
	return (long)addr;
}

SYS_HANDLER(munmap)
{
	uint64_t addr = a[0], len = PAGE_UP(a[1]);

	if ((addr & (VM_PAGE - 1)) || !len)
		return -EINVAL;
	if (!range_ok(vm, addr, len))
		return addr >= vm->mem_size ? 0 : -EINVAL;
	release(vm, addr, len);
	return 0;
}

SYS_HANDLER(mprotect)
{
	/* Protections are not enforced: all guest memory stays mapped read-write. */
	if (a[0] & (VM_PAGE - 1))
		return -EINVAL;
	if (!range_ok(vm, a[0], PAGE_UP(a[1])))
		return -ENOMEM;
	return 0;
}

SYS_HANDLER(madvise)
{
	uint64_t addr = a[0], len = PAGE_UP(a[1]);

	if (addr & (VM_PAGE - 1))
		return -EINVAL;
	if (!range_ok(vm, addr, len))
		return -ENOMEM;
	if (a[2] == MADV_DONTNEED || a[2] == MADV_FREE)
		gmem_zero(vm, addr, len);
	return 0;
}

static long mremap_move(struct vm *vm, uint64_t old, uint64_t olen, uint64_t nlen)
{
	uint64_t n = gmem_alloc(vm, nlen);

	if (!n)
		return -ENOMEM;
	memcpy(vm->mem + n, vm->mem + old, olen);
	release(vm, old, olen);
	return (long)n;
}

SYS_HANDLER(mremap)
{
	uint64_t old = a[0], olen = PAGE_UP(a[1]), nlen = PAGE_UP(a[2]);
	int flags = (int)a[3];

	if ((old & (VM_PAGE - 1)) || !nlen || (flags & ~MREMAP_MAYMOVE))
		return -EINVAL;
	if (!range_ok(vm, old, olen))
		return -EFAULT;
	if (nlen <= olen) {
		if (nlen < olen)
			release(vm, old + nlen, olen - nlen);
		return (long)old;
	}
	if (range_ok(vm, old + olen, nlen - olen) && range_free(vm, old + olen, nlen - olen)) {
		gmem_mark(vm, old + olen, nlen - olen, 1);
		return (long)old;
	}
	if (!(flags & MREMAP_MAYMOVE))
		return -ENOMEM;
	return mremap_move(vm, old, olen, nlen);
}
