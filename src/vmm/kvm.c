/*
 * KVM plumbing for the process VM: the VM and its single vCPU, the guest kernel area
 * (descriptor tables, page tables, the kernel image) and the run loop that turns exits
 * into system calls.
 */
#include "vm.h"
#include "guest/kernel.h"
#include "vmsnap.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PTE_P	0x1ULL
#define PTE_W	0x2ULL
#define PTE_U	0x4ULL
#define PTE_A	0x20ULL
#define PTE_D	0x40ULL
#define PTE_PS	0x80ULL
#define HUGE	(2ULL << 20)

#define CR0_PE	0x1ULL
#define CR0_MP	0x2ULL
#define CR0_ET	0x10ULL
#define CR0_NE	0x20ULL
#define CR0_WP	0x10000ULL
#define CR0_AM	0x40000ULL
#define CR0_PG	0x80000000ULL
#define CR4_PAE	0x20ULL
#define CR4_OSFXSR	0x200ULL
#define CR4_OSXMMEXCPT	0x400ULL
#define EFER_SCE	0x1ULL
#define EFER_LME	0x100ULL
#define EFER_LMA	0x400ULL

static uint64_t *gtab(struct vm *vm, uint64_t gpa)
{
	return (uint64_t *)(vm->mem + gpa);
}

static void setup_gdt_tss(struct vm *vm)
{
	uint64_t *gdt = gtab(vm, GL_GDT);
	uint64_t tss = GL_TSS;

	gdt[1] = 0x00af9a000000ffffULL;	/* kernel code, 64-bit */
	gdt[2] = 0x00cf92000000ffffULL;	/* kernel data */
	gdt[3] = 0x00cffa000000ffffULL;	/* user code, 32-bit (SYSRET layout) */
	gdt[4] = 0x00cff2000000ffffULL;	/* user data */
	gdt[5] = 0x00affa000000ffffULL;	/* user code, 64-bit */
	gdt[6] = 0x67 | ((tss & 0xffffff) << 16) | (0x89ULL << 40) |
		 (((tss >> 24) & 0xff) << 56);
	gdt[7] = tss >> 32;
	/* RSP0: where exceptions from user mode push their frame. */
	*(uint64_t *)(vm->mem + GL_TSS + 4) = GL_STACK_TOP;
	*(uint16_t *)(vm->mem + GL_TSS + 0x66) = 0x68;
}

static void setup_idt(struct vm *vm)
{
	uint64_t *idt = gtab(vm, GL_IDT);
	int v;

	for (v = 0; v < 32; v++) {
		uint64_t h = GK_ADDR(gk_vectors) + (uint64_t)v * GK_VECTOR_STUB_SIZE;

		idt[2 * v] = (h & 0xffff) | ((uint64_t)GL_SEL_KCODE << 16) |
			     (0x8eULL << 40) | (((h >> 16) & 0xffff) << 48);
		idt[2 * v + 1] = h >> 32;
	}
}

static void setup_page_tables(struct vm *vm)
{
	uint64_t *pml4 = gtab(vm, GL_PML4), *pdpt = gtab(vm, GL_PDPT);
	uint64_t *pt = gtab(vm, GL_PT_LOW), a;
	int i;

	pml4[0] = GL_PDPT | PTE_P | PTE_W | PTE_U;
	for (i = 0; i < 4; i++)
		pdpt[i] = (GL_PD + i * VM_PAGE) | PTE_P | PTE_W | PTE_U;
	/* The kernel area: 4 KiB pages, kernel-only except the stub and its doorbell. */
	gtab(vm, GL_PD)[0] = GL_PT_LOW | PTE_P | PTE_W | PTE_U;
	for (a = GL_GDT; a < GL_PT_LOW + VM_PAGE; a += VM_PAGE)
		pt[a / VM_PAGE] = a | PTE_P | PTE_W;
	pt[GL_SYSCALL_DOORBELL / VM_PAGE] = GL_DOORBELL_GPA | PTE_P | PTE_W | PTE_U;
	pt[GL_FAULT_DOORBELL / VM_PAGE] = (GL_DOORBELL_GPA + VM_PAGE) | PTE_P | PTE_W;
	for (a = GL_TEXT; a < GL_TEXT + GL_TEXT_SIZE; a += VM_PAGE)
		pt[a / VM_PAGE] = a | PTE_P | PTE_U;
	pt[GL_VVAR / VM_PAGE] = GL_VVAR | PTE_P | PTE_U;
	for (a = GL_TOUCH; a < GL_TOUCH + GL_TOUCH_SIZE; a += VM_PAGE)
		pt[a / VM_PAGE] = a | PTE_P | PTE_U;
	for (a = GL_VDSO; a < GL_VDSO + GL_VDSO_SIZE; a += VM_PAGE)
		pt[a / VM_PAGE] = a | PTE_P | PTE_U;
	for (a = GL_STACK_LO; a < GL_STACK_TOP; a += VM_PAGE)
		pt[a / VM_PAGE] = a | PTE_P | PTE_W;
	/* User memory: 2 MiB pages, mapped once for the VM's life. */
	for (a = HUGE; a < vm->mem_size; a += HUGE)
		gtab(vm, GL_PD)[a / HUGE] = a | PTE_P | PTE_W | PTE_U | PTE_PS;
}

static int setup_memory(struct vm *vm)
{
	size_t klen = (size_t)(guest_kernel_end - guest_kernel_start);
	struct kvm_userspace_memory_region r = { 0 };
	uint64_t lead;
	uint8_t *raw;

	/*
	 * 2 MiB aligned, like the guest's large pages: only then can a region backed by a
	 * host huge page (a restore's hot regions) be mapped by KVM as one large page.
	 */
	raw = mmap(NULL, vm->mem_size + HUGE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (raw == MAP_FAILED)
		return -ENOMEM;
	lead = (HUGE - ((uintptr_t)raw & (HUGE - 1))) & (HUGE - 1);
	if (lead)
		munmap(raw, lead);
	munmap(raw + lead + vm->mem_size, HUGE - lead);
	vm->mem = raw + lead;
	if (klen > GL_TEXT_SIZE)
		return -E2BIG;
	memcpy(vm->mem + GL_TEXT, guest_kernel_start, klen);
	setup_gdt_tss(vm);
	setup_idt(vm);
	setup_page_tables(vm);
	r.slot = 0;
	r.guest_phys_addr = 0;
	r.memory_size = vm->mem_size;
	r.userspace_addr = (uint64_t)(uintptr_t)vm->mem;
	if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0)
		return -errno;
	return 0;
}

static int setup_cpuid(struct vm *vm)
{
	struct kvm_cpuid2 *c;
	int nent = 256, r = 0;

	c = calloc(1, sizeof(*c) + nent * sizeof(c->entries[0]));
	if (!c)
		return -ENOMEM;
	c->nent = nent;
	if (ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, c) < 0 ||
	    ioctl(vm->vcpu_fd, KVM_SET_CPUID2, c) < 0)
		r = -errno;
	free(c);
	return r;
}

static void seg(struct kvm_segment *s, uint16_t sel, int code, int dpl)
{
	memset(s, 0, sizeof(*s));
	s->limit = 0xffffffff;
	s->selector = sel;
	s->type = code ? 11 : 3;
	s->present = 1;
	s->dpl = dpl;
	s->s = 1;
	s->l = code;
	s->db = !code;
	s->g = 1;
}

static int setup_sregs(struct vm *vm)
{
	struct kvm_sregs s;

	if (ioctl(vm->vcpu_fd, KVM_GET_SREGS, &s) < 0)
		return -errno;
	seg(&s.cs, GL_SEL_KCODE, 1, 0);
	seg(&s.ds, GL_SEL_KDATA, 0, 0);
	s.es = s.fs = s.gs = s.ss = s.ds;
	memset(&s.tr, 0, sizeof(s.tr));
	s.tr.base = GL_TSS;
	s.tr.limit = 0x67;
	s.tr.selector = GL_SEL_TSS;
	s.tr.type = 11;
	s.tr.present = 1;
	memset(&s.ldt, 0, sizeof(s.ldt));
	s.ldt.type = 2;
	s.ldt.unusable = 1;
	s.gdt.base = GL_GDT;
	s.gdt.limit = 8 * 8 - 1;
	s.idt.base = GL_IDT;
	s.idt.limit = 16 * 256 - 1;
	s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG;
	s.cr3 = GL_PML4;
	/* No OSXSAVE: XSAVE is not offered here, so glibc must stay on fxsave and SSE. */
	s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
	s.efer = EFER_SCE | EFER_LME | EFER_LMA;
	if (ioctl(vm->vcpu_fd, KVM_SET_SREGS, &s) < 0)
		return -errno;
	return 0;
}

static int create_vcpu(struct vm *vm)
{
	int n, r;

	vm->vcpu_fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, 0);
	if (vm->vcpu_fd < 0)
		return -errno;
	n = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (n < 0)
		return -errno;
	vm->run_size = (size_t)n;
	vm->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vm->vcpu_fd, 0);
	if (vm->run == MAP_FAILED) {
		vm->run = NULL;
		return -errno;
	}
	r = setup_cpuid(vm);
	if (r)
		return r;
	return setup_sregs(vm);
}

int vm_create(struct vm *vm, const struct vm_config *cfg)
{
	int r;

	vm->cfg = cfg;
	vm->mem_size = cfg->mem_bytes & ~(HUGE - 1);
	if (vm->mem_size < 16 * HUGE || vm->mem_size > GL_MAX_MEMORY)
		return -EINVAL;
	vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (vm->kvm_fd < 0)
		return -errno;
	if (ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS) <= 0)
		return -ENOTSUP;
	vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	if (vm->vm_fd < 0)
		return -errno;
	/* Register memory before anything else: after an irqchip exists it is slow here. */
	r = setup_memory(vm);
	if (r)
		return r;
	r = create_vcpu(vm);
	if (r)
		return r;
	return gmem_init(vm);
}

void vm_destroy(struct vm *vm)
{
	if (vm->run)
		munmap(vm->run, vm->run_size);
	if (vm->mem)
		munmap(vm->mem, vm->mem_size);
	free(vm->page_used);
	if (vm->vcpu_fd > 0)
		close(vm->vcpu_fd);
	if (vm->vm_fd > 0)
		close(vm->vm_fd);
	if (vm->kvm_fd > 0)
		close(vm->kvm_fd);
}

static int enter_user(struct vm *vm, uint64_t entry, uint64_t sp)
{
	struct kvm_regs regs;

	memset(&regs, 0, sizeof(regs));
	regs.rip = GK_ADDR(gk_enter);
	regs.rdi = entry;
	regs.rsi = sp;
	regs.rsp = GL_STACK_TOP;
	regs.rflags = 2;
	if (ioctl(vm->vcpu_fd, KVM_SET_REGS, &regs) < 0)
		return -errno;
	return 0;
}

/*
 * Resumes the program after a system call. Under PVM the vCPU never left CPL 3, so
 * RIP/RFLAGS are all that change; on hardware KVM `syscall` entered CPL 0 and the
 * user segments must be put back too, which is what sysretq would have done.
 */
static void finish_syscall(struct vm *vm, long ret)
{
	struct kvm_run *run = vm->run;
	struct kvm_regs *r = &run->s.regs.regs;
	struct kvm_sregs *s = &run->s.regs.sregs;

	r->rax = (uint64_t)ret;
	r->rip = r->rcx;
	r->rflags = (r->r11 & ~0x30000ULL) | 2;	/* as sysret: RF, VM clear */
	run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
	if (s->cs.dpl != 3) {
		seg(&s->cs, GL_SEL_UCODE, 1, 3);
		seg(&s->ss, GL_SEL_UDATA, 0, 3);
		run->kvm_dirty_regs |= KVM_SYNC_X86_SREGS;
	}
	if (vm->fs_dirty) {
		s->fs.base = vm->fs_base;
		vm->fs_dirty = 0;
		run->kvm_dirty_regs |= KVM_SYNC_X86_SREGS;
	}
}

static void on_syscall(struct vm *vm)
{
	struct kvm_regs *r = &vm->run->s.regs.regs;
	uint64_t args[6] = { r->rdi, r->rsi, r->rdx, r->r10, r->r8, r->r9 };
	long ret = sys_dispatch(vm, r->rax, args);

	if (!vm->exited)
		finish_syscall(vm, ret);
}

static int fault_signal(uint64_t vec)
{
	switch (vec) {
	case 0: case 16: case 19:
		return SIGFPE;
	case 1: case 3:
		return SIGTRAP;
	case 6:
		return SIGILL;
	case 17:
		return SIGBUS;
	default:
		return SIGSEGV;
	}
}

static int on_fault(struct vm *vm)
{
	uint64_t *box = (uint64_t *)(vm->mem + GL_FAULT_BOX);
	int sig = fault_signal(box[0]);

	snprintf(vm->stop_reason, sizeof(vm->stop_reason),
		 "%s: exception %llu error %#llx at rip %#llx (address %#llx, rsp %#llx)",
		 strsignal(sig), (unsigned long long)box[0], (unsigned long long)box[1],
		 (unsigned long long)box[2], (unsigned long long)box[6],
		 (unsigned long long)box[5]);
	vm->exit_code = 128 + sig;
	return -EFAULT;
}

static int on_other_exit(struct vm *vm)
{
	struct kvm_run *run = vm->run;

	if (run->exit_reason == KVM_EXIT_INTERNAL_ERROR)
		snprintf(vm->stop_reason, sizeof(vm->stop_reason),
			 "vCPU internal error %u at rip %#llx (instruction not emulated)",
			 run->internal.suberror, (unsigned long long)run->s.regs.regs.rip);
	else
		snprintf(vm->stop_reason, sizeof(vm->stop_reason), "unexpected exit %u at rip %#llx",
			 run->exit_reason, (unsigned long long)run->s.regs.regs.rip);
	vm->exit_code = 128 + SIGILL;
	return -EIO;
}

static uint64_t mono_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

static int timed_run(struct vm *vm)
{
	uint64_t t0 = vm->cfg->stats ? mono_ns() : 0;
	int r = ioctl(vm->vcpu_fd, KVM_RUN, 0);

	vm->nr_runs++;
	if (vm->cfg->stats)
		vm->run_ns += mono_ns() - t0;
	return r;
}

static int run_loop(struct vm *vm)
{
	struct kvm_run *run = vm->run;
	int r;

	while (!vm->exited) {
		run->kvm_valid_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;
		r = timed_run(vm);
		vmsnap_settle(vm);
		if (r < 0) {
			if (errno != EINTR)
				return -errno;
			/* Only the wall-clock timer interrupts us (channel.c). */
			snprintf(vm->stop_reason, sizeof(vm->stop_reason), "wall time limit exceeded");
			vm->exit_code = 124;
			return -EINTR;
		}
		if (run->exit_reason == KVM_EXIT_MMIO && run->mmio.is_write &&
		    run->mmio.phys_addr == GL_DOORBELL_GPA)
			on_syscall(vm);
		else if (run->exit_reason == KVM_EXIT_MMIO &&
			 run->mmio.phys_addr == GL_DOORBELL_GPA + VM_PAGE)
			return on_fault(vm);
		else
			return on_other_exit(vm);
	}
	return 0;
}

int vm_run(struct vm *vm, uint64_t entry, uint64_t sp)
{
	int r = enter_user(vm, entry, sp);

	return r ? r : run_loop(vm);
}

/* User regions (2 MiB, from GL_KERNEL_END) that vm_track_pages maps with 4 KiB pages. */
static uint64_t tracked_regions(struct vm *vm)
{
	uint64_t n = vm->mem_size / HUGE - 1;

	return n < GL_TRACK_PT_SIZE / VM_PAGE ? n : GL_TRACK_PT_SIZE / VM_PAGE;
}

int vm_track_pages(struct vm *vm)
{
	uint64_t *pd = gtab(vm, GL_PD), *pt, r, i, a;

	if (vm->nr_runs)
		return -EBUSY;
	for (r = 0; r < tracked_regions(vm); r++) {
		a = (r + 1) * HUGE;
		/* The guest's MMU may have set accessed and dirty: nothing else differs. */
		if ((pd[a / HUGE] & ~(PTE_A | PTE_D)) != (a | PTE_P | PTE_W | PTE_U | PTE_PS))
			return -EINVAL;
		pt = gtab(vm, GL_TRACK_PT + r * VM_PAGE);
		for (i = 0; i < HUGE / VM_PAGE; i++)
			pt[i] = (a + i * VM_PAGE) | PTE_P | PTE_W | PTE_U;
		pd[a / HUGE] = (GL_TRACK_PT + r * VM_PAGE) | PTE_P | PTE_W | PTE_U;
	}
	return 0;
}

uint64_t vm_tracked_end(struct vm *vm)
{
	return (tracked_regions(vm) + 1) * HUGE;
}

void vm_tracked_accessed(struct vm *vm, uint64_t *bitmap)
{
	const uint64_t *pt = gtab(vm, GL_TRACK_PT);
	uint64_t p, first = GL_KERNEL_END / VM_PAGE;

	for (p = 0; p < tracked_regions(vm) * (HUGE / VM_PAGE); p++)
		if (pt[p] & PTE_A)
			bitmap[(first + p) / 64] |= 1ULL << ((first + p) % 64);
}

int vm_touch_ready(struct vm *vm)
{
	size_t klen = (size_t)(guest_kernel_end - guest_kernel_start);
	const uint64_t *pt = gtab(vm, GL_PT_LOW);
	uint64_t a;

	/* A snapshot of another VMM build may lack gk_touch or the list's mapping. */
	if (memcmp(vm->mem + GL_TEXT, guest_kernel_start, klen))
		return 0;
	for (a = GL_TOUCH; a < GL_TOUCH + GL_TOUCH_SIZE; a += VM_PAGE)
		if (pt[a / VM_PAGE] != (a | PTE_P | PTE_U))
			return 0;
	return 1;
}

int vm_touch(struct vm *vm, uint32_t n)
{
	struct kvm_run *run = vm->run;
	struct kvm_regs *r = &run->s.regs.regs, saved = *r;
	struct kvm_sregs ssaved = run->s.regs.sregs;
	int rc, ok;

	if (!n)
		return 0;
	r->rip = GK_ADDR(gk_touch);
	r->rsi = GL_TOUCH;
	r->rcx = n;
	run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
	run->kvm_valid_regs = KVM_SYNC_X86_REGS | KVM_SYNC_X86_SREGS;
	while ((rc = timed_run(vm)) < 0 && errno == EINTR)
		;
	ok = rc == 0 && run->exit_reason == KVM_EXIT_MMIO && run->mmio.is_write &&
	     run->mmio.phys_addr == GL_DOORBELL_GPA && r->rax == GK_TOUCH_DONE;
	/* Back into the pending system call, as if the touch had never run. */
	*r = saved;
	run->s.regs.sregs = ssaved;
	run->kvm_dirty_regs = KVM_SYNC_X86_REGS;
	return ok ? 0 : -EIO;
}

/*
 * The restored registers (in the synced area) are those of the system call the
 * snapshot stopped in: serving it now hands the guest its request.
 */
int vm_resume(struct vm *vm)
{
	on_syscall(vm);
	return run_loop(vm);
}
