#include "check.h"
#include "store/registry.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

struct seen {
	int count;
	int64_t version;
	char manifest[64];
};

static int collect(void *arg, const struct reg_row *row)
{
	struct seen *s = arg;

	s->count++;
	s->version = row->version;
	snprintf(s->manifest, sizeof(s->manifest), "%s", row->manifest);
	return 0;
}

static void deploy(struct reg *reg, const char *name, const char *manifest)
{
	struct reg_row row = { .name = name, .manifest = manifest, .tier = "isolate",
			       .runtime = "js", .entry = "index.js", .dir = "/x" };

	CHECK(reg_next_version(reg, name, &row.version) == 0);
	CHECK(reg_deploy(reg, &row) == 0);
}

int main(void)
{
	char dir[] = "/tmp/stoke-reg-XXXXXX", path[128], why[256] = "";
	FILE *f;
	struct seen s = { 0 };
	struct reg *reg;
	int64_t v;

	CHECK(mkdtemp(dir) != NULL);
	snprintf(path, sizeof(path), "%s/registry.db", dir);
	CHECK(reg_open(path, &reg, why, sizeof(why)) == 0);
	deploy(reg, "a", "{\"v\":1}");
	deploy(reg, "a", "{\"v\":2}");
	deploy(reg, "b", "{}");
	CHECK(reg_get(reg, "a", collect, &s) == 0);
	CHECK(s.count == 1 && s.version == 2);
	CHECK_STR(s.manifest, "{\"v\":2}");

	/* Deleted names keep their history: the next version never reuses a number. */
	CHECK(reg_delete(reg, "a") == 0);
	CHECK(reg_delete(reg, "a") == -ENOENT);
	CHECK(reg_get(reg, "a", collect, &s) == -ENOENT);
	CHECK(reg_next_version(reg, "a", &v) == 0 && v == 3);
	reg_close(reg);

	/* Reopening sees what was committed. */
	CHECK(reg_open(path, &reg, why, sizeof(why)) == 0);
	s.count = 0;
	CHECK(reg_each(reg, collect, &s) == 0);
	CHECK(s.count == 1);
	reg_close(reg);

	/* A file that is not a database: refused, with SQLite's reason. */
	f = fopen(path, "w");
	CHECK(f && fputs("this is not an SQLite database, but it is long enough to tell\n"
			 "....................................................\n", f) >= 0);
	fclose(f);
	CHECK(reg_open(path, &reg, why, sizeof(why)) == -EIO);
	CHECK(strstr(why, "not a database") != NULL);
	snprintf(path, sizeof(path), "rm -rf %s", dir);
	CHECK(system(path) == 0);
	return check_done();
}
