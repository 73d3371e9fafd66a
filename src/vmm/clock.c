/* Guest time: see clock.h. */
#include "clock.h"
#include "vm.h"
#include "guest/layout.h"
#include "guest/vvar.h"

#include <elf.h>
#include <errno.h>
#include <linux/kvm.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <x86intrin.h>

#define MSR_IA32_TSC 0x10
#define NSEC 1000000000ULL

extern const unsigned char vdso_image[];
extern const unsigned long vdso_image_size;

static struct vvar *vvar(struct vm *vm)
{
	return (struct vvar *)(vm->mem + GL_VVAR);
}

/* Copies the vDSO's PT_LOAD segments to GL_VDSO, laid out as its addresses say. */
static int load_vdso(struct vm *vm)
{
	const Elf64_Ehdr *eh = (const Elf64_Ehdr *)vdso_image;
	const Elf64_Phdr *ph;
	int i;

	if (vdso_image_size < sizeof(*eh) || memcmp(eh->e_ident, ELFMAG, SELFMAG) ||
	    eh->e_phoff + eh->e_phnum * sizeof(*ph) > vdso_image_size)
		return -ENOEXEC;
	ph = (const Elf64_Phdr *)(vdso_image + eh->e_phoff);
	for (i = 0; i < eh->e_phnum; i++, ph++) {
		if (ph->p_type != PT_LOAD)
			continue;
		if (ph->p_vaddr + ph->p_memsz > GL_VDSO_SIZE || ph->p_filesz > ph->p_memsz ||
		    ph->p_offset + ph->p_filesz > vdso_image_size)
			return -ENOEXEC;
		memcpy(vm->mem + GL_VDSO + ph->p_vaddr, vdso_image + ph->p_offset, ph->p_filesz);
	}
	return 0;
}

/*
 * Guest TSC minus host TSC. Zero on PVM hosts (guest user mode reads the host's TSC);
 * on hardware KVM the vCPU has its own offset. Read bracketed by host TSC reads, best
 * of three, so the error stays within an ioctl's duration (a few microseconds).
 */
static int tsc_offset(struct vm *vm, int64_t *off)
{
	struct { struct kvm_msrs m; struct kvm_msr_entry e; } msr;
	uint64_t h0, h1, best = UINT64_MAX;
	int i;

	for (i = 0; i < 3; i++) {
		memset(&msr, 0, sizeof(msr));
		msr.m.nmsrs = 1;
		msr.e.index = MSR_IA32_TSC;
		h0 = __rdtsc();
		if (ioctl(vm->vcpu_fd, KVM_GET_MSRS, &msr) != 1)
			return -EIO;
		h1 = __rdtsc();
		if (h1 - h0 < best) {
			best = h1 - h0;
			*off = (int64_t)(msr.e.data - (h0 / 2 + h1 / 2));
		}
	}
	return 0;
}

static uint64_t host_ns(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * NSEC + (uint64_t)ts.tv_nsec;
}

static uint64_t guest_tsc(struct vm *vm)
{
	return __rdtsc() + (uint64_t)vm->tsc_offset;
}

static uint64_t extrapolate(const struct vvar *v, uint64_t base, uint64_t tsc)
{
	return base + (uint64_t)(((unsigned __int128)(tsc - v->tsc_base) * v->mult) >> 32);
}

int clock_init(struct vm *vm)
{
	struct vvar *v = vvar(vm);
	long khz;
	int r;

	if (getenv("STOKE_VMM_NO_VDSO"))
		return -ENOTSUP;
	khz = ioctl(vm->vcpu_fd, KVM_GET_TSC_KHZ, 0);
	if (khz <= 0)
		return -ENOTSUP;
	r = tsc_offset(vm, &vm->tsc_offset);
	if (!r)
		r = load_vdso(vm);
	if (r)
		return r;
	memset(v, 0, sizeof(*v));
	v->mult = (uint64_t)((1000000ULL << 32) / (uint64_t)khz);
	v->tsc_base = guest_tsc(vm);
	v->mono_base = host_ns(CLOCK_MONOTONIC);
	v->real_base = host_ns(CLOCK_REALTIME);
	v->boot_base = host_ns(CLOCK_BOOTTIME);
	v->valid = 1;
	vm->has_vdso = 1;
	return 0;
}

/*
 * A restored VM keeps the snapshot's vDSO and clock page, but its TSC rate and offset
 * are this vCPU's, and the snapshot may be hours old: re-anchor every clock to the
 * host now. Monotonic time still never goes back (the snapshot may come from an
 * earlier boot of the host, whose monotonic clock was further along).
 */
int clock_restore(struct vm *vm)
{
	struct vvar *v = vvar(vm);
	uint64_t mono;
	long khz;
	int r;

	if (!vm->has_vdso)
		return 0;
	khz = ioctl(vm->vcpu_fd, KVM_GET_TSC_KHZ, 0);
	if (khz <= 0)
		return -ENOTSUP;
	r = tsc_offset(vm, &vm->tsc_offset);
	if (r)
		return r;
	mono = host_ns(CLOCK_MONOTONIC);
	if (v->valid && mono < v->mono_base)
		mono = v->mono_base;
	v->mult = (uint64_t)((1000000ULL << 32) / (uint64_t)khz);
	v->tsc_base = guest_tsc(vm);
	v->mono_base = mono;
	v->real_base = host_ns(CLOCK_REALTIME);
	v->boot_base = host_ns(CLOCK_BOOTTIME);
	v->valid = 1;
	return 0;
}

void clock_rebase(struct vm *vm)
{
	struct vvar *v = vvar(vm);
	uint64_t tsc, mono;

	if (!vm->has_vdso)
		return;
	tsc = guest_tsc(vm);
	mono = host_ns(CLOCK_MONOTONIC);
	/* Running ahead of the host: keep extrapolating rather than step back. */
	if (mono < extrapolate(v, v->mono_base, tsc))
		return;
	v->real_base = host_ns(CLOCK_REALTIME);
	v->boot_base = host_ns(CLOCK_BOOTTIME);
	v->mono_base = mono;
	v->tsc_base = tsc;
}

int clock_now(struct vm *vm, clockid_t clk, struct timespec *ts)
{
	struct vvar *v = vvar(vm);
	uint64_t ns, base;

	if (!vm->has_vdso)
		return -EINVAL;
	switch (clk) {
	case CLOCK_REALTIME: case CLOCK_REALTIME_COARSE:
		base = v->real_base;
		break;
	case CLOCK_MONOTONIC: case CLOCK_MONOTONIC_RAW: case CLOCK_MONOTONIC_COARSE:
		base = v->mono_base;
		break;
	case CLOCK_BOOTTIME:
		base = v->boot_base;
		break;
	default:
		return -EINVAL;
	}
	ns = extrapolate(v, base, guest_tsc(vm));
	ts->tv_sec = (time_t)(ns / NSEC);
	ts->tv_nsec = (long)(ns % NSEC);
	return 0;
}
