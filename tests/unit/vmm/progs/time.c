/* Clocks and sleeps; compared with Linux. */
#include "t.h"
#include <sys/time.h>
#include <time.h>

static long ns(struct timespec t) { return t.tv_sec * 1000000000L + t.tv_nsec; }

int main(void)
{
	struct timespec a, b, req = { 0, 2000000 }, bad = { 0, 2000000000L };
	struct timeval tv;

	SHOWOK("clock_gettime mono", clock_gettime(CLOCK_MONOTONIC, &a));
	SHOWOK("nanosleep", nanosleep(&req, NULL));
	clock_gettime(CLOCK_MONOTONIC, &b);
	TRUTH("slept >= 2ms", ns(b) - ns(a) >= 2000000);
	TRUTH("slept < 2s", ns(b) - ns(a) < 2000000000L);
	SHOW("nanosleep bad", nanosleep(&bad, NULL));
	SHOW("clock_gettime bad clock", clock_gettime(12345, &a));
	SHOWOK("clock_getres", clock_getres(CLOCK_MONOTONIC, &a));
	SHOWOK("gettimeofday", gettimeofday(&tv, NULL));
	clock_gettime(CLOCK_REALTIME, &a);
	TRUTH("realtime agrees", a.tv_sec - tv.tv_sec < 2 && tv.tv_sec - a.tv_sec < 2);
	clock_gettime(CLOCK_MONOTONIC, &a);
	a.tv_nsec += 1000000;
	if (a.tv_nsec >= 1000000000L) { a.tv_sec++; a.tv_nsec -= 1000000000L; }
	SHOW("clock_nanosleep abs", clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &a, NULL));
	TRUTH("time() sane", time(NULL) > 1700000000);
	return 0;
}
