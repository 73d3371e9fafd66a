/*
 * The process VM's vDSO: clock_gettime, gettimeofday and time answered from the clock
 * page (vvar.h) and the TSC, without leaving the guest. Built freestanding as a tiny
 * shared object with no relocations (the VMM copies it in, nobody relocates it); glibc
 * finds it through AT_SYSINFO_EHDR and looks the symbols up under version LINUX_2.6.
 */
#include "layout.h"
#include "vvar.h"

struct timespec64 { long tv_sec; long tv_nsec; };
struct timeval64 { long tv_sec; long tv_usec; };

#define CLOCK_REALTIME 0
#define CLOCK_MONOTONIC 1
#define CLOCK_MONOTONIC_RAW 4
#define CLOCK_REALTIME_COARSE 5
#define CLOCK_MONOTONIC_COARSE 6
#define CLOCK_BOOTTIME 7
#define NSEC 1000000000ULL

int __vdso_clock_gettime(int clk, struct timespec64 *ts);
int __vdso_gettimeofday(struct timeval64 *tv, void *tz);
long __vdso_time(long *t);
int __vdso_clock_getres(int clk, struct timespec64 *ts);

static long sys2(long nr, long a, long b)
{
	long ret;

	__asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b)
			 : "rcx", "r11", "memory");
	return ret;
}

static uint64_t now_ns(const volatile struct vvar *v, uint64_t base)
{
	uint32_t lo, hi;
	uint64_t tsc;

	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	tsc = ((uint64_t)hi << 32 | lo) - v->tsc_base;
	return base + (uint64_t)(((unsigned __int128)tsc * v->mult) >> 32);
}

/* Returns nanoseconds for a clock the page serves, or -1 to fall back. */
static long long clock_ns(int clk)
{
	const volatile struct vvar *v = (const volatile struct vvar *)GL_VVAR;

	if (!v->valid)
		return -1;
	switch (clk) {
	case CLOCK_REALTIME:
	case CLOCK_REALTIME_COARSE:
		return (long long)now_ns(v, v->real_base);
	case CLOCK_MONOTONIC:
	case CLOCK_MONOTONIC_RAW:
	case CLOCK_MONOTONIC_COARSE:
		return (long long)now_ns(v, v->mono_base);
	case CLOCK_BOOTTIME:
		return (long long)now_ns(v, v->boot_base);
	default:
		return -1;
	}
}

int __vdso_clock_gettime(int clk, struct timespec64 *ts)
{
	long long ns = clock_ns(clk);

	if (ns < 0)
		return (int)sys2(228, clk, (long)ts);	/* clock_gettime */
	ts->tv_sec = (long)((unsigned long long)ns / NSEC);
	ts->tv_nsec = (long)((unsigned long long)ns % NSEC);
	return 0;
}

int __vdso_gettimeofday(struct timeval64 *tv, void *tz)
{
	long long ns = clock_ns(CLOCK_REALTIME);

	if (ns < 0 || tz)
		return (int)sys2(96, (long)tv, (long)tz);	/* gettimeofday */
	if (tv) {
		tv->tv_sec = (long)((unsigned long long)ns / NSEC);
		tv->tv_usec = (long)((unsigned long long)ns % NSEC / 1000);
	}
	return 0;
}

long __vdso_time(long *t)
{
	long long ns = clock_ns(CLOCK_REALTIME);
	long s;

	if (ns < 0)
		return sys2(201, (long)t, 0);	/* time */
	s = (long)((unsigned long long)ns / NSEC);
	if (t)
		*t = s;
	return s;
}

int __vdso_clock_getres(int clk, struct timespec64 *ts)
{
	return (int)sys2(229, clk, (long)ts);	/* clock_getres */
}
