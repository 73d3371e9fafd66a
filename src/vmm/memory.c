/*
 * The guest's address space. Guest-virtual equals guest-physical and all of guest
 * memory is mapped from the start, so "mapping" is bookkeeping: one byte per 4 KiB page
 * says whether brk, mmap or the loader owns it. Free pages always read as zero (they
 * are handed back to the host when freed), so fresh anonymous mappings cost nothing.
 *
 * Layout: [0, 2 MiB) guest kernel; program and brk heap from 4 MiB up; mappings
 * top-down below the stack; the stack at the top of memory.
 */
#include "vm.h"
#include "vmsnap.h"
#include "guest/layout.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Linux's default RLIMIT_STACK, shrunk for small VMs. */
#define STACK_MAX	(8ULL << 20)

int gmem_init(struct vm *vm)
{
	uint64_t npages = vm->mem_size / VM_PAGE;
	uint64_t stack = vm->mem_size / 16;

	vm->page_used = calloc(npages, 1);
	if (!vm->page_used)
		return -ENOMEM;
	if (stack > STACK_MAX)
		stack = STACK_MAX;
	vm->stack_lo = vm->mem_size - stack;
	vm->mmap_top = vm->stack_lo - VM_PAGE;	/* one guard page */
	vm->rlimit_stack = stack;
	gmem_mark(vm, 0, GL_KERNEL_END, 1);
	gmem_mark(vm, vm->mmap_top, vm->mem_size - vm->mmap_top, 1);
	return 0;
}

void *gmem_ptr(struct vm *vm, uint64_t addr, uint64_t len)
{
	if (addr < GL_KERNEL_END || addr >= vm->mem_size || len > vm->mem_size - addr)
		return NULL;
	return vm->mem + addr;
}

int gmem_str(struct vm *vm, uint64_t addr, char *buf, size_t max)
{
	uint8_t *p = gmem_ptr(vm, addr, 1);
	size_t avail, n;

	if (!p)
		return -EFAULT;
	avail = vm->mem_size - addr;
	for (n = 0; n < max && n < avail; n++) {
		buf[n] = (char)p[n];
		if (!p[n])
			return 0;
	}
	return n == max ? -ENAMETOOLONG : -EFAULT;
}

void gmem_mark(struct vm *vm, uint64_t addr, uint64_t len, int used)
{
	memset(vm->page_used + addr / VM_PAGE, used, len / VM_PAGE);
}

void gmem_zero(struct vm *vm, uint64_t addr, uint64_t len)
{
	/* Small ranges: memset keeps the pages (a refault costs about 25 us here). */
	if (len <= 16 * VM_PAGE) {
		memset(vm->mem + addr, 0, len);
		return;
	}
	/*
	 * A restored VM's memory is a private mapping of its image, where MADV_DONTNEED
	 * would bring the snapshot's bytes back; fresh anonymous memory reads as zero,
	 * and KVM follows the remap inside the slot (its MMU notifier).
	 */
	if (!vm->mem_is_file)
		madvise(vm->mem + addr, len, MADV_DONTNEED);
	else if (mmap(vm->mem + addr, len, PROT_READ | PROT_WRITE,
		      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0) ==
		 MAP_FAILED) {
		memset(vm->mem + addr, 0, len);
		return;
	}
	/* Absent from pagemap now, like never-touched pages: a layer dump must know. */
	vmsnap_zeroed(vm, addr, len);
}

uint64_t gmem_alloc(struct vm *vm, uint64_t len)
{
	uint64_t n = len / VM_PAGE, run = 0, p = vm->mmap_top / VM_PAGE;
	uint64_t lo = GL_KERNEL_END / VM_PAGE;

	while (p > lo) {
		p--;
		if (vm->page_used[p]) {
			run = 0;
			continue;
		}
		if (++run == n) {
			gmem_mark(vm, p * VM_PAGE, len, 1);
			return p * VM_PAGE;
		}
	}
	return 0;
}
