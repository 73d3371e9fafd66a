#include "registry.h"

#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

struct reg {
	sqlite3 *db;
	int is_new;	/* no tables before reg_open: a missing or empty file */
};

static const char reg_schema[] =
	"PRAGMA journal_mode=WAL;"
	"PRAGMA synchronous=NORMAL;"
	"CREATE TABLE IF NOT EXISTS versions ("
	" name TEXT NOT NULL, version INTEGER NOT NULL, manifest TEXT NOT NULL,"
	" tier TEXT NOT NULL, runtime TEXT NOT NULL, entry TEXT NOT NULL,"
	" dir TEXT NOT NULL, created_at INTEGER NOT NULL,"
	" PRIMARY KEY (name, version));"
	"CREATE TABLE IF NOT EXISTS functions ("
	" name TEXT PRIMARY KEY, version INTEGER NOT NULL, deployed_at INTEGER NOT NULL);";

static const char reg_live_sql[] =
	"SELECT v.name, v.version, v.manifest, v.tier, v.runtime, v.entry, v.dir,"
	" f.deployed_at FROM functions f JOIN versions v"
	" ON v.name = f.name AND v.version = f.version";

/* *is_new = 1 when the file holds no table yet (it is read here, so a file that is not a
 * database fails now). */
static int reg_count_tables(sqlite3 *db, int *is_new)
{
	sqlite3_stmt *st;
	int rc;

	if (sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_master", -1, &st, NULL))
		return -EIO;
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		*is_new = sqlite3_column_int(st, 0) == 0;
	sqlite3_finalize(st);
	return rc == SQLITE_ROW ? 0 : -EIO;
}

const char *reg_error(struct reg *reg)
{
	return sqlite3_errmsg(reg->db);
}

int reg_is_new(const struct reg *reg)
{
	return reg->is_new;
}

int reg_open(const char *path, struct reg **out, char *why, size_t len)
{
	struct reg *reg = calloc(1, sizeof(*reg));

	if (!reg)
		return -ENOMEM;
	if (sqlite3_open(path, &reg->db) != SQLITE_OK)
		goto fail;
	sqlite3_busy_timeout(reg->db, 5000);
	if (reg_count_tables(reg->db, &reg->is_new) ||
	    sqlite3_exec(reg->db, reg_schema, NULL, NULL, NULL) != SQLITE_OK)
		goto fail;
	*out = reg;
	return 0;
fail:
	snprintf(why, len, "%s", reg->db ? sqlite3_errmsg(reg->db) : "out of memory");
	sqlite3_close(reg->db);
	free(reg);
	return -EIO;
}

void reg_close(struct reg *reg)
{
	if (!reg)
		return;
	sqlite3_close(reg->db);
	free(reg);
}

int reg_next_version(struct reg *reg, const char *name, int64_t *version)
{
	sqlite3_stmt *st;
	int ret = -EIO;

	if (sqlite3_prepare_v2(reg->db, "SELECT COALESCE(MAX(version), 0) + 1 FROM versions"
			       " WHERE name = ?", -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	if (sqlite3_step(st) == SQLITE_ROW) {
		*version = sqlite3_column_int64(st, 0);
		ret = 0;
	}
	sqlite3_finalize(st);
	return ret;
}

static int reg_step_done(sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);

	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? 0 : -EIO;
}

static int reg_insert_version(struct reg *reg, const struct reg_row *row, int64_t now)
{
	sqlite3_stmt *st;

	if (sqlite3_prepare_v2(reg->db, "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?)", -1,
			       &st, NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_text(st, 1, row->name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, row->version);
	sqlite3_bind_text(st, 3, row->manifest, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, row->tier, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, row->runtime, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 6, row->entry, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 7, row->dir, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 8, now);
	return reg_step_done(st);
}

static int reg_set_live(struct reg *reg, const char *name, int64_t version, int64_t now)
{
	sqlite3_stmt *st;

	if (sqlite3_prepare_v2(reg->db, "INSERT OR REPLACE INTO functions VALUES (?,?,?)", -1,
			       &st, NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, version);
	sqlite3_bind_int64(st, 3, now);
	return reg_step_done(st);
}

int reg_deploy(struct reg *reg, const struct reg_row *row)
{
	int64_t now = (int64_t)time(NULL);
	int ret;

	if (sqlite3_exec(reg->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
		return -EIO;
	ret = reg_insert_version(reg, row, now);
	if (!ret)
		ret = reg_set_live(reg, row->name, row->version, now);
	sqlite3_exec(reg->db, ret ? "ROLLBACK" : "COMMIT", NULL, NULL, NULL);
	return ret;
}

int reg_delete(struct reg *reg, const char *name)
{
	sqlite3_stmt *st;
	int ret;

	if (sqlite3_prepare_v2(reg->db, "DELETE FROM functions WHERE name = ?", -1, &st,
			       NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	ret = reg_step_done(st);
	if (!ret && sqlite3_changes(reg->db) == 0)
		ret = -ENOENT;
	return ret;
}

static const char *reg_col(sqlite3_stmt *st, int i)
{
	return (const char *)sqlite3_column_text(st, i);
}

static int reg_run(sqlite3_stmt *st, int (*each)(void *, const struct reg_row *), void *arg,
		   int *rows)
{
	int rc, ret = 0;

	while (!ret && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct reg_row row = {
			.name = reg_col(st, 0),
			.version = sqlite3_column_int64(st, 1),
			.manifest = reg_col(st, 2),
			.tier = reg_col(st, 3),
			.runtime = reg_col(st, 4),
			.entry = reg_col(st, 5),
			.dir = reg_col(st, 6),
			.deployed_at = sqlite3_column_int64(st, 7),
		};
		(*rows)++;
		ret = each(arg, &row);
	}
	if (!ret && rc != SQLITE_DONE)
		ret = -EIO;
	sqlite3_finalize(st);
	return ret;
}

int reg_each(struct reg *reg, int (*each)(void *, const struct reg_row *), void *arg)
{
	sqlite3_stmt *st;
	int rows = 0;

	if (sqlite3_prepare_v2(reg->db, reg_live_sql, -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	return reg_run(st, each, arg, &rows);
}

int reg_get(struct reg *reg, const char *name,
	    int (*each)(void *, const struct reg_row *), void *arg)
{
	char sql[sizeof(reg_live_sql) + 32];
	sqlite3_stmt *st;
	int rows = 0, ret;

	snprintf(sql, sizeof(sql), "%s WHERE f.name = ?", reg_live_sql);
	if (sqlite3_prepare_v2(reg->db, sql, -1, &st, NULL) != SQLITE_OK)
		return -EIO;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	ret = reg_run(st, each, arg, &rows);
	return ret ? ret : rows ? 0 : -ENOENT;
}
