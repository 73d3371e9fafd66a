/*
 * What it costs this machine to wake a sleeping thread, the price of every hand-off
 * between stoke's event loops and its isolate workers. Two threads pass a byte back
 * and forth over two pipes, each sleeping in read() until the other writes: first free
 * to run on any core (the scheduler puts the woken thread on the idle one, so each
 * wake-up is an inter-processor interrupt and, in a virtual machine, the exits that
 * come with it), then both pinned to one core (no interrupt, a plain context switch).
 *
 * On virtual machines the first figure varies several-fold between hosts: it explains
 * most of how bench/gateway's ratio to workerd (one thread, no hand-off) moves from
 * one machine to another.
 *
 * usage: wake_probe [ROUND_TRIPS]    prints one JSON object: microseconds per round
 * trip free (wall time and both threads' CPU) and on one core (wall time)
 */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

struct probe {
	int ping[2], pong[2];
	long trips;
	int cpu;		/* both threads on this CPU, or -1 for anywhere */
};

static double now_s(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pin(int cpu)
{
	cpu_set_t set;

	if (cpu < 0)
		return;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	sched_setaffinity(0, sizeof(set), &set);
}

static void *echo(void *arg)
{
	struct probe *p = arg;
	char c;
	long i;

	pin(p->cpu);
	for (i = 0; i < p->trips; i++)
		if (read(p->ping[0], &c, 1) != 1 || write(p->pong[1], &c, 1) != 1)
			break;
	return NULL;
}

/* Microseconds of wall time and of CPU (both threads) per round trip. */
static int measure(long trips, int cpu, double *wall_us, double *cpu_us)
{
	struct probe p = { .trips = trips, .cpu = cpu };
	double w0, c0;
	pthread_t t;
	char c = 'x';
	long i;

	if (pipe(p.ping) || pipe(p.pong))
		return -1;
	pin(cpu);
	if (pthread_create(&t, NULL, echo, &p))
		return -1;
	w0 = now_s(CLOCK_MONOTONIC);
	c0 = now_s(CLOCK_PROCESS_CPUTIME_ID);
	for (i = 0; i < trips; i++)
		if (write(p.ping[1], &c, 1) != 1 || read(p.pong[0], &c, 1) != 1)
			break;
	*wall_us = (now_s(CLOCK_MONOTONIC) - w0) / (double)trips * 1e6;
	*cpu_us = (now_s(CLOCK_PROCESS_CPUTIME_ID) - c0) / (double)trips * 1e6;
	pthread_join(t, NULL);
	close(p.ping[0]);
	close(p.ping[1]);
	close(p.pong[0]);
	close(p.pong[1]);
	return i == trips ? 0 : -1;
}

int main(int argc, char **argv)
{
	long trips = argc > 1 ? atol(argv[1]) : 20000;
	double fw, fc, pw, pc;

	if (trips <= 0 || measure(trips, -1, &fw, &fc) || measure(trips, 0, &pw, &pc)) {
		fprintf(stderr, "wake_probe: pipes or threads failed\n");
		return 1;
	}
	printf("{\"round_trips\":%ld,\"free_us\":%.2f,\"free_cpu_us\":%.2f,"
	       "\"one_core_us\":%.2f}\n", trips, fw, fc, pw);
	return 0;
}
