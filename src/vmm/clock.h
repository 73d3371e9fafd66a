/*
 * Guest time: the vDSO image and its clock page (src/guest/vvar.h). The clock system
 * calls use the same TSC-linear formula as the vDSO so the two never disagree.
 */
#ifndef STOKE_VMM_CLOCK_H
#define STOKE_VMM_CLOCK_H

#include <time.h>

struct vm;

/* Loads the vDSO and fills the clock page; returns 0, or -errno (then no vDSO). */
int clock_init(struct vm *vm);
/* After a restore: re-measures the TSC and re-anchors the snapshot's clock page. */
int clock_restore(struct vm *vm);
/* Re-anchors the clock page to the host clocks (never moving time backwards). */
void clock_rebase(struct vm *vm);
/* Time of a clock the page serves; -EINVAL for others (the caller asks the host). */
int clock_now(struct vm *vm, clockid_t clk, struct timespec *ts);

#endif
