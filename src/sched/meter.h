/*
 * Metering: every invocation's tier, cold/warm, wall time, CPU time, memory, GB-seconds
 * and peak memory, summed per function and minute into the registry by a background
 * thread, so the request path only appends to an in-memory batch.
 */
#ifndef STOKE_METER_H
#define STOKE_METER_H

#include <stdint.h>

struct meter;

struct meter_rec {
	char function[64];
	const char *tier;	/* a string literal (the tier's name) */
	int cold;
	int error;		/* answered 5xx */
	uint64_t wall_us;
	uint64_t cpu_us;
	uint32_t memory_mb;	/* configured memory: what GB-s are billed on */
	uint64_t peak_kb;	/* memory high-water the tier measured (0: none) */
	int64_t minute;		/* Unix time of its minute; 0: when it is recorded */
};

/* Opens its own connection to the registry database at path and starts the writer. */
int meter_start(const char *db_path, struct meter **out);
/* Queues one record; never blocks on I/O. Drops (and counts) records if the writer
 * has fallen more than a bounded amount behind. */
void meter_record(struct meter *m, const struct meter_rec *rec);
/* Writes everything queued, then returns (used by tests and at shutdown). */
void meter_flush(struct meter *m);
void meter_stop(struct meter *m);

struct meter_usage {
	char function[64];
	char tier[16];
	uint64_t invocations, cold, errors;
	double wall_ms, cpu_ms, gb_s;
	double peak_mb_max;	/* highest peak of any invocation */
	double peak_mb_avg;	/* mean of the invocations' peaks (those that had one) */
};

/* Sums usage per function since a Unix time (0: all), optionally for one function.
 * Calls each() per function; returns 0 or -EIO. */
int meter_usage(struct meter *m, const char *function, int64_t since,
		int (*each)(void *arg, const struct meter_usage *u), void *arg);

#endif
