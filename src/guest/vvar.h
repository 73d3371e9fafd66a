/*
 * The clock page the VMM keeps at GL_VVAR and the vDSO reads, so that clock_gettime
 * needs no exit (each exit costs about 0.1 ms on PVM hosts). Time is linear in the
 * guest's TSC: ns = base + ((tsc - tsc_base) * mult) >> 32. The guest has one thread
 * and the VMM writes only while the vCPU is stopped, so no sequence lock is needed.
 */
#ifndef STOKE_GUEST_VVAR_H
#define STOKE_GUEST_VVAR_H

#include <stdint.h>

struct vvar {
	uint32_t valid;		/* 0: the vDSO falls back to the system call */
	uint32_t pad;
	uint64_t tsc_base;
	uint64_t mult;
	uint64_t mono_base;	/* CLOCK_MONOTONIC at tsc_base, ns */
	uint64_t real_base;	/* CLOCK_REALTIME at tsc_base, ns */
	uint64_t boot_base;	/* CLOCK_BOOTTIME at tsc_base, ns */
};

#endif
