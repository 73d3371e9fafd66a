#include "meter.h"

#include <errno.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define METER_MAX_PENDING (1 << 20)
/* The writer wakes this often, or sooner for a flush or this many records: under load
 * one transaction a second, instead of one per commit's worth of requests. */
#define METER_FLUSH_MS 1000
#define METER_BATCH_MAX (1 << 16)

struct meter {
	sqlite3 *db;
	pthread_t tid;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_cond_t flushed;
	struct meter_rec *pending;
	size_t npending, cap;
	uint64_t dropped;
	uint64_t generation, written;	/* for meter_flush */
	int stop;
};

static const char meter_schema[] =
	"CREATE TABLE IF NOT EXISTS usage ("
	" function TEXT NOT NULL, minute INTEGER NOT NULL, tier TEXT NOT NULL,"
	" invocations INTEGER NOT NULL, cold INTEGER NOT NULL, errors INTEGER NOT NULL,"
	" wall_us INTEGER NOT NULL, cpu_us INTEGER NOT NULL, mb_us INTEGER NOT NULL,"
	" PRIMARY KEY (function, minute, tier));";

/*
 * Peak memory came later: a registry written before it gets the columns added (the
 * error of adding one that exists is ignored). peak_n counts the invocations that
 * reported a peak, so the average is over those.
 */
static const char *const meter_peak_columns[] = {
	"ALTER TABLE usage ADD COLUMN peak_kb_max INTEGER NOT NULL DEFAULT 0",
	"ALTER TABLE usage ADD COLUMN peak_kb_sum INTEGER NOT NULL DEFAULT 0",
	"ALTER TABLE usage ADD COLUMN peak_n INTEGER NOT NULL DEFAULT 0",
};

static const char meter_upsert[] =
	"INSERT INTO usage (function, minute, tier, invocations, cold, errors, wall_us,"
	" cpu_us, mb_us, peak_kb_max, peak_kb_sum, peak_n)"
	" VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET"
	" invocations = invocations + excluded.invocations, cold = cold + excluded.cold,"
	" errors = errors + excluded.errors, wall_us = wall_us + excluded.wall_us,"
	" cpu_us = cpu_us + excluded.cpu_us, mb_us = mb_us + excluded.mb_us,"
	" peak_kb_max = MAX(peak_kb_max, excluded.peak_kb_max),"
	" peak_kb_sum = peak_kb_sum + excluded.peak_kb_sum, peak_n = peak_n + excluded.peak_n";

/* A batch's records summed per function and tier: one upsert each. */
struct meter_sum {
	const struct meter_rec *rec;	/* the first of the run: its names */
	int64_t invocations, cold, errors, wall_us, cpu_us, mb_us;
	int64_t peak_kb_max, peak_kb_sum, peak_n;
};

static int meter_cmp(const void *a, const void *b)
{
	const struct meter_rec *x = a, *y = b;
	int c = strcmp(x->function, y->function);

	if (!c)
		c = strcmp(x->tier, y->tier);
	return c ? c : (x->minute > y->minute) - (x->minute < y->minute);
}

static void meter_add(struct meter_sum *s, const struct meter_rec *r)
{
	s->invocations++;
	s->cold += r->cold != 0;
	s->errors += r->error != 0;
	s->wall_us += (int64_t)r->wall_us;
	s->cpu_us += (int64_t)r->cpu_us;
	s->mb_us += (int64_t)(r->wall_us * r->memory_mb);
	if (!r->peak_kb)
		return;
	if ((int64_t)r->peak_kb > s->peak_kb_max)
		s->peak_kb_max = (int64_t)r->peak_kb;
	s->peak_kb_sum += (int64_t)r->peak_kb;
	s->peak_n++;
}

static int meter_upsert_sum(sqlite3_stmt *st, const struct meter_sum *s)
{
	int ok;

	sqlite3_bind_text(st, 1, s->rec->function, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, s->rec->minute);
	sqlite3_bind_text(st, 3, s->rec->tier, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, s->invocations);
	sqlite3_bind_int64(st, 5, s->cold);
	sqlite3_bind_int64(st, 6, s->errors);
	sqlite3_bind_int64(st, 7, s->wall_us);
	sqlite3_bind_int64(st, 8, s->cpu_us);
	sqlite3_bind_int64(st, 9, s->mb_us);
	sqlite3_bind_int64(st, 10, s->peak_kb_max);
	sqlite3_bind_int64(st, 11, s->peak_kb_sum);
	sqlite3_bind_int64(st, 12, s->peak_n);
	ok = sqlite3_step(st) == SQLITE_DONE;
	sqlite3_reset(st);
	return ok;
}

static int meter_write(struct meter *m, struct meter_rec *recs, size_t n)
{
	struct meter_sum sum = { 0 };
	sqlite3_stmt *st;
	size_t i;
	int ok = 1;

	qsort(recs, n, sizeof(*recs), meter_cmp);
	if (sqlite3_prepare_v2(m->db, meter_upsert, -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_exec(m->db, "BEGIN", NULL, NULL, NULL);
	for (i = 0; i < n && ok; i++) {
		if (sum.rec && meter_cmp(sum.rec, &recs[i])) {
			ok = meter_upsert_sum(st, &sum);
			memset(&sum, 0, sizeof(sum));
		}
		if (!sum.rec)
			sum.rec = &recs[i];
		meter_add(&sum, &recs[i]);
	}
	if (ok && sum.rec)
		ok = meter_upsert_sum(st, &sum);
	sqlite3_finalize(st);
	sqlite3_exec(m->db, ok ? "COMMIT" : "ROLLBACK", NULL, NULL, NULL);
	return ok ? 0 : -EIO;
}

static void *meter_main(void *arg)
{
	struct meter *m = arg;
	struct meter_rec *batch = NULL;
	size_t n, batch_cap = 0;
	uint64_t gen;
	struct timespec ts;

	pthread_setname_np(pthread_self(), "meter");
	pthread_mutex_lock(&m->lock);
	for (;;) {
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += METER_FLUSH_MS / 1000;
		while (m->npending < METER_BATCH_MAX && !m->stop && m->written == m->generation)
			if (pthread_cond_timedwait(&m->cond, &m->lock, &ts))
				break;
		/* Swap buffers so recorders never wait on SQLite. */
		n = m->npending;
		gen = m->generation;
		if (n) {
			struct meter_rec *tmp = m->pending;
			size_t cap = m->cap;

			m->pending = batch;
			m->cap = batch_cap;
			m->npending = 0;
			batch = tmp;
			batch_cap = cap;
		}
		pthread_mutex_unlock(&m->lock);
		if (n && meter_write(m, batch, n))
			fprintf(stderr, "meter: could not write %zu usage records\n", n);
		pthread_mutex_lock(&m->lock);
		m->written = gen;
		pthread_cond_broadcast(&m->flushed);
		if (m->stop && !m->npending)
			break;
	}
	pthread_mutex_unlock(&m->lock);
	free(batch);
	return NULL;
}

static int meter_schema_init(sqlite3 *db)
{
	size_t i;

	if (sqlite3_exec(db, meter_schema, NULL, NULL, NULL) != SQLITE_OK)
		return -EIO;
	for (i = 0; i < sizeof(meter_peak_columns) / sizeof(meter_peak_columns[0]); i++)
		sqlite3_exec(db, meter_peak_columns[i], NULL, NULL, NULL);
	return 0;
}

int meter_start(const char *db_path, struct meter **out)
{
	struct meter *m = calloc(1, sizeof(*m));

	if (!m)
		return -ENOMEM;
	if (sqlite3_open(db_path, &m->db) != SQLITE_OK ||
	    sqlite3_busy_timeout(m->db, 5000) != SQLITE_OK ||
	    meter_schema_init(m->db)) {
		sqlite3_close(m->db);
		free(m);
		return -EIO;
	}
	pthread_mutex_init(&m->lock, NULL);
	pthread_cond_init(&m->cond, NULL);
	pthread_cond_init(&m->flushed, NULL);
	if (pthread_create(&m->tid, NULL, meter_main, m)) {
		sqlite3_close(m->db);
		free(m);
		return -EAGAIN;
	}
	*out = m;
	return 0;
}

void meter_record(struct meter *m, const struct meter_rec *rec)
{
	int64_t minute = rec->minute ? rec->minute : (int64_t)time(NULL) / 60 * 60;

	pthread_mutex_lock(&m->lock);
	if (m->npending == m->cap && m->cap < METER_MAX_PENDING) {
		size_t cap = m->cap ? m->cap * 2 : 1024;
		struct meter_rec *p = realloc(m->pending, cap * sizeof(*p));

		if (p) {
			m->pending = p;
			m->cap = cap;
		}
	}
	if (m->npending < m->cap) {
		m->pending[m->npending] = *rec;
		m->pending[m->npending++].minute = minute;
		if (m->npending == METER_BATCH_MAX)
			pthread_cond_signal(&m->cond);
	} else
		m->dropped++;
	pthread_mutex_unlock(&m->lock);
}

void meter_flush(struct meter *m)
{
	uint64_t gen;

	pthread_mutex_lock(&m->lock);
	gen = ++m->generation;
	pthread_cond_signal(&m->cond);
	while (m->written < gen)
		pthread_cond_wait(&m->flushed, &m->lock);
	pthread_mutex_unlock(&m->lock);
}

void meter_stop(struct meter *m)
{
	if (!m)
		return;
	pthread_mutex_lock(&m->lock);
	m->stop = 1;
	pthread_cond_signal(&m->cond);
	pthread_mutex_unlock(&m->lock);
	pthread_join(m->tid, NULL);
	sqlite3_close(m->db);
	free(m->pending);
	free(m);
}

int meter_usage(struct meter *m, const char *function, int64_t since,
		int (*each)(void *arg, const struct meter_usage *u), void *arg)
{
	static const char sql[] =
		"SELECT function, tier, SUM(invocations), SUM(cold), SUM(errors), SUM(wall_us),"
		" SUM(cpu_us), SUM(mb_us), MAX(peak_kb_max), SUM(peak_kb_sum), SUM(peak_n)"
		" FROM usage WHERE minute >= ?1 / 60 * 60"
		" AND (?2 IS NULL OR function = ?2) GROUP BY function, tier ORDER BY function";
	sqlite3_stmt *st;
	int rc, ret = 0;

	if (sqlite3_prepare_v2(m->db, sql, -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_int64(st, 1, since);
	if (function)
		sqlite3_bind_text(st, 2, function, -1, SQLITE_STATIC);
	while (!ret && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct meter_usage u = { 0 };

		snprintf(u.function, sizeof(u.function), "%s", sqlite3_column_text(st, 0));
		snprintf(u.tier, sizeof(u.tier), "%s", sqlite3_column_text(st, 1));
		u.invocations = (uint64_t)sqlite3_column_int64(st, 2);
		u.cold = (uint64_t)sqlite3_column_int64(st, 3);
		u.errors = (uint64_t)sqlite3_column_int64(st, 4);
		u.wall_ms = (double)sqlite3_column_int64(st, 5) / 1e3;
		u.cpu_ms = (double)sqlite3_column_int64(st, 6) / 1e3;
		/* MB x us -> GB x s, with 1 GB = 1024 MB as Lambda bills */
		u.gb_s = (double)sqlite3_column_int64(st, 7) / 1024.0 / 1e6;
		u.peak_mb_max = (double)sqlite3_column_int64(st, 8) / 1024.0;
		if (sqlite3_column_int64(st, 10) > 0)
			u.peak_mb_avg = (double)sqlite3_column_int64(st, 9) / 1024.0 /
					(double)sqlite3_column_int64(st, 10);
		ret = each(arg, &u);
	}
	if (!ret && rc != SQLITE_DONE)
		ret = -EIO;
	sqlite3_finalize(st);
	return ret;
}
