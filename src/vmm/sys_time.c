/* Clocks and sleeps, answered from the host's clocks. */
#include "sys.h"
#include "clock.h"

#include <errno.h>
#include <sys/time.h>
#include <time.h>

/* The clocks Linux offers through clock_gettime; CPU-time clocks measure the VMM. */
static int clock_ok(uint64_t id)
{
	switch (id) {
	case CLOCK_REALTIME: case CLOCK_MONOTONIC: case CLOCK_PROCESS_CPUTIME_ID:
	case CLOCK_THREAD_CPUTIME_ID: case CLOCK_MONOTONIC_RAW: case CLOCK_REALTIME_COARSE:
	case CLOCK_MONOTONIC_COARSE: case CLOCK_BOOTTIME: case CLOCK_TAI:
		return 1;
	default:
		return 0;
	}
}

SYS_HANDLER(clock_gettime)
{
	struct timespec *ts = gmem_ptr(vm, a[1], sizeof(*ts));

	if (!clock_ok(a[0]))
		return -EINVAL;
	if (!ts)
		return -EFAULT;
	if (clock_now(vm, (clockid_t)a[0], ts) == 0)
		return 0;
	return sys_ret(clock_gettime((clockid_t)a[0], ts));
}

SYS_HANDLER(clock_getres)
{
	struct timespec *ts = NULL;

	if (!clock_ok(a[0]))
		return -EINVAL;
	if (a[1] && !(ts = gmem_ptr(vm, a[1], sizeof(*ts))))
		return -EFAULT;
	return ts ? sys_ret(clock_getres((clockid_t)a[0], ts)) : 0;
}

/* CLOCK_REALTIME as the vDSO sees it, so that no two clocks of the guest disagree. */
static struct timespec realtime(struct vm *vm)
{
	struct timespec ts;

	if (clock_now(vm, CLOCK_REALTIME, &ts))
		clock_gettime(CLOCK_REALTIME, &ts);
	return ts;
}

SYS_HANDLER(gettimeofday)
{
	struct timeval *tv = NULL;
	struct timespec ts;

	if (a[0] && !(tv = gmem_ptr(vm, a[0], sizeof(*tv))))
		return -EFAULT;
	if (tv) {
		ts = realtime(vm);
		tv->tv_sec = ts.tv_sec;
		tv->tv_usec = ts.tv_nsec / 1000;
	}
	return 0;
}

SYS_HANDLER(time)
{
	time_t now = realtime(vm).tv_sec, *t = NULL;

	if (a[0] && !(t = gmem_ptr(vm, a[0], sizeof(*t))))
		return -EFAULT;
	if (t)
		*t = now;
	return now;
}

static long sleep_common(struct vm *vm, clockid_t clk, int flags, uint64_t ureq, uint64_t urem)
{
	struct timespec *req = gmem_ptr(vm, ureq, sizeof(*req)), *rem = NULL;
	int r;

	if (!req)
		return -EFAULT;
	if (urem && !(rem = gmem_ptr(vm, urem, sizeof(*rem))))
		return -EFAULT;
	if (req->tv_nsec < 0 || req->tv_nsec >= 1000000000L || req->tv_sec < 0)
		return -EINVAL;
	/* A wall-clock timeout interrupts this sleep like it interrupts the vCPU. */
	r = clock_nanosleep(clk, flags, req, rem);
	return -r;
}

SYS_HANDLER(nanosleep)
{
	return sleep_common(vm, CLOCK_MONOTONIC, 0, a[0], a[1]);
}

SYS_HANDLER(clock_nanosleep)
{
	if (a[0] != CLOCK_REALTIME && a[0] != CLOCK_MONOTONIC && a[0] != CLOCK_BOOTTIME &&
	    a[0] != CLOCK_TAI)
		return -EINVAL;
	return sleep_common(vm, (clockid_t)a[0], (int)a[1] & TIMER_ABSTIME, a[2], a[3]);
}
