#include "check.h"
#include "gateway/manifest.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char dir[] = "/tmp/stoke-mf-XXXXXX";

static void touch(const char *name)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "w");
	if (f)
		fclose(f);
}

/* Parses json for function "f"; returns the error field ("" on success). */
static const char *parse(const char *json, struct fn **out)
{
	static struct mf_error err;
	char reasons[512];
	cJSON *m = cJSON_Parse(json);
	int ret;

	*out = NULL;
	ret = mf_parse(m, "f", dir, out, reasons, sizeof(reasons), &err);
	cJSON_Delete(m);
	return ret ? err.field : "";
}

static void expect_field(const char *json, const char *field)
{
	struct fn *fn;

	CHECK_STR(parse(json, &fn), field);
	CHECK(fn == NULL);
}

static void test_defaults(void)
{
	struct fn *fn;

	CHECK_STR(parse("{}", &fn), "");
	CHECK(fn && fn->tier == TIER_ISOLATE);
	CHECK_STR(fn->entry, "index.js");
	CHECK_STR(fn->runtime, "js");
	CHECK(fn->limits.cpu_ms == 50 && fn->limits.wall_ms == 30000);
	CHECK(fn->limits.memory_mb == 128);
	fn_unref(fn);
}

static void test_tier_rules(void)
{
	struct fn *fn;

	CHECK_STR(parse("{\"entry\":\"handler.py\"}", &fn), "");
	CHECK(fn->tier == TIER_VM && !strcmp(fn->runtime, "python3"));
	fn_unref(fn);
	CHECK_STR(parse("{\"entry\":\"handler.py\",\"limits\":{\"wall_s\":120}}", &fn), "");
	CHECK(fn->tier == TIER_VM && fn->limits.wall_ms == 120000);
	fn_unref(fn);
	CHECK_STR(parse("{\"entry\":\"handler.py\",\"isolation\":\"strict\"}", &fn), "");
	CHECK(fn->tier == TIER_VM && fn->strict);
	fn_unref(fn);
	CHECK_STR(parse("{\"entry\":\"handler.py\",\"state\":\"keep\"}", &fn), "");
	CHECK(fn->tier == TIER_VM && fn->keep_state);
	fn_unref(fn);
	/* JavaScript that would need a micro-VM has nowhere to run: refused, naming why */
	expect_field("{\"limits\":{\"wall_s\":120}}", "runtime");
	expect_field("{\"isolation\":\"strict\"}", "runtime");
	expect_field("{\"state\":\"keep\"}", "runtime");
	expect_field("{\"tier\":\"vm\"}", "runtime");
	expect_field("{\"tier\":\"isolate\",\"entry\":\"handler.py\"}", "tier");
}

static void test_errors(void)
{
	expect_field("{\"nope\":1}", "nope");
	expect_field("{\"limits\":{\"cpu_ms\":0}}", "limits.cpu_ms");
	expect_field("{\"limits\":{\"cpu_ms\":1.5}}", "limits.cpu_ms");
	expect_field("{\"limits\":{\"x\":1}}", "limits.x");
	expect_field("{\"limits\":[]}", "limits");
	expect_field("{\"env\":{\"A\":true}}", "env");
	expect_field("{\"entry\":\"/etc/passwd\"}", "entry");
	expect_field("{\"entry\":\"gone.js\"}", "entry");
	expect_field("{\"runtime\":\"cobol\"}", "runtime");
	expect_field("{\"runtime\":\"js\",\"entry\":\"handler.py\"}", "runtime");
	expect_field("{\"name\":\"g\"}", "name");
	expect_field("[]", "manifest");
}

static const char *suggest(const char *name)
{
	static char out[64];

	mf_suggest_name(name, out, sizeof(out));
	CHECK(!*out || mf_valid_name(out, strlen(out)));
	return out;
}

static void test_name_suggestions(void)
{
	CHECK_STR(suggest("my_handler"), "my-handler");
	CHECK_STR(suggest("My Great__App!"), "my-great-app");
	CHECK_STR(suggest("_x_"), "x");
	CHECK_STR(suggest("___"), "");
	CHECK_STR(suggest("a1234567890123456789012345678901234567890123456789012345678901-xyz"),
		  "a1234567890123456789012345678901234567890123456789012345678901");
}

static void test_names(void)
{
	CHECK(mf_valid_name("a", 1));
	CHECK(mf_valid_name("hello-js-2", 10));
	CHECK(!mf_valid_name("", 0));
	CHECK(!mf_valid_name("-a", 2));
	CHECK(!mf_valid_name("a-", 2));
	CHECK(!mf_valid_name("A", 1));
	CHECK(!mf_valid_name("a_b", 3));
	CHECK(!mf_valid_name("a.b", 3));
	CHECK(mf_valid_name("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 63));
	CHECK(!mf_valid_name("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 64));
}

int main(void)
{
	char cmd[128];

	CHECK(mkdtemp(dir) != NULL);
	touch("index.js");
	touch("handler.py");
	test_defaults();
	test_tier_rules();
	test_errors();
	test_names();
	test_name_suggestions();
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
	return check_done();
}
