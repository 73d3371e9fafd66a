/* The batching meter: sums per function and tier, peak memory, an older schema. */
#include "check.h"
#include "sched/meter.h"

#include <sqlite3.h>
#include <stdlib.h>
#include <unistd.h>

static char dir[] = "/tmp/stoke-meter-XXXXXX";
static char db[256];

struct seen {
	int rows;
	struct meter_usage u[4];
};

static int collect(void *arg, const struct meter_usage *u)
{
	struct seen *s = arg;

	if (s->rows < 4)
		s->u[s->rows] = *u;
	s->rows++;
	return 0;
}

static void record(struct meter *m, const char *fn, const char *tier, int error,
		   uint64_t peak_kb)
{
	struct meter_rec r = { .tier = tier, .error = error, .wall_us = 1000, .cpu_us = 500,
			       .memory_mb = 128, .peak_kb = peak_kb };

	snprintf(r.function, sizeof(r.function), "%s", fn);
	meter_record(m, &r);
}

/* Totals equal the records, however they were batched; peaks are max and mean. */
static void test_sums_and_peaks(void)
{
	struct seen s = { 0 };
	struct meter *m;
	int i;

	CHECK(meter_start(db, &m) == 0);
	for (i = 0; i < 10; i++) {
		record(m, "a", "vm", i == 3, 1024 * (uint64_t)(i + 1));
		if (i == 4)
			meter_flush(m);	/* two batches, one row per minute */
	}
	record(m, "b", "isolate", 0, 0);	/* no peak reported: left out of the mean */
	record(m, "b", "isolate", 0, 2048);
	meter_flush(m);
	CHECK(meter_usage(m, NULL, 0, collect, &s) == 0);
	CHECK(s.rows == 2);
	CHECK_STR(s.u[0].function, "a");
	CHECK(s.u[0].invocations == 10 && s.u[0].errors == 1);
	CHECK(s.u[0].peak_mb_max == 10.0);
	CHECK(s.u[0].peak_mb_avg == 5.5);
	CHECK(s.u[1].invocations == 2 && s.u[1].peak_mb_max == 2.0);
	CHECK(s.u[1].peak_mb_avg == 2.0);
	meter_stop(m);
}

/* A registry from before peak memory: the columns are added, old rows kept. */
static void test_old_schema(void)
{
	char path[300];
	struct seen s = { 0 };
	struct meter *m;
	sqlite3 *d;

	snprintf(path, sizeof(path), "%s/old.db", dir);
	CHECK(sqlite3_open(path, &d) == SQLITE_OK);
	CHECK(sqlite3_exec(d, "CREATE TABLE usage (function TEXT NOT NULL, minute INTEGER NOT"
			   " NULL, tier TEXT NOT NULL, invocations INTEGER NOT NULL, cold"
			   " INTEGER NOT NULL, errors INTEGER NOT NULL, wall_us INTEGER NOT"
			   " NULL, cpu_us INTEGER NOT NULL, mb_us INTEGER NOT NULL, PRIMARY"
			   " KEY (function, minute, tier));"
			   "INSERT INTO usage VALUES ('old', 60, 'vm', 3, 0, 0, 1, 1, 1);",
			   NULL, NULL, NULL) == SQLITE_OK);
	sqlite3_close(d);
	CHECK(meter_start(path, &m) == 0);
	record(m, "old", "vm", 0, 4096);
	meter_flush(m);
	CHECK(meter_usage(m, "old", 0, collect, &s) == 0);
	CHECK(s.rows == 1 && s.u[0].invocations == 4);
	CHECK(s.u[0].peak_mb_max == 4.0 && s.u[0].peak_mb_avg == 4.0);
	meter_stop(m);
	/* Started again: adding the columns a second time is harmless. */
	CHECK(meter_start(path, &m) == 0);
	meter_stop(m);
	unlink(path);
}

int main(void)
{
	if (!mkdtemp(dir))
		return 1;
	snprintf(db, sizeof(db), "%s/registry.db", dir);
	test_sums_and_peaks();
	test_old_schema();
	unlink(db);
	rmdir(dir);
	return check_done();
}
