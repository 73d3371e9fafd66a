#include "check.h"
#include "gateway/manifest.h"
#include "common/strbuf.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

static struct mf_error err;	/* the last parse's */

/* Parses json for function "f"; returns the error field ("" on success). */
static const char *parse(const char *json, struct fn **out)
{
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
	CHECK(fn->limits.max_instances == 1);	/* one instance holds the state */
	fn_unref(fn);
	CHECK_STR(parse("{\"entry\":\"handler.py\",\"state\":\"keep\","
			"\"limits\":{\"max_instances\":4}}", &fn), "");
	CHECK(fn->limits.max_instances == 4);
	fn_unref(fn);
	CHECK_STR(parse("{\"entry\":\"handler.py\"}", &fn), "");
	CHECK(fn->limits.max_instances == 16 && fn->limits.concurrency == 1);
	fn_unref(fn);
	/* A micro-VM guest serves one request at a time: more is refused, not ignored */
	expect_field("{\"entry\":\"handler.py\",\"limits\":{\"concurrency\":2}}",
		     "limits.concurrency");
	CHECK_STR(parse("{\"limits\":{\"concurrency\":8}}", &fn), "");
	CHECK(fn->tier == TIER_ISOLATE && fn->limits.concurrency == 8);
	fn_unref(fn);
	/* JavaScript that would need a micro-VM has nowhere to run: refused, naming why */
	expect_field("{\"limits\":{\"wall_s\":120}}", "runtime");
	expect_field("{\"isolation\":\"strict\"}", "runtime");
	expect_field("{\"state\":\"keep\"}", "runtime");
	expect_field("{\"tier\":\"vm\"}", "tier");	/* the field to change */
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

/* The message for json, which must be refused. */
static const char *message(const char *json)
{
	struct fn *fn;

	CHECK(*parse(json, &fn));
	return err.message;
}

/* Messages name what is allowed, and the likely intended value or field. */
static void test_messages(void)
{
	struct fn *fn;

	CHECK_STR(message("{\"tier\":\"VM\"}"),
		  "tier must be one of auto, isolate, vm, not \"VM\" (did you mean vm?)");
	CHECK_STR(message("{\"runtime\":\"python\"}"), "runtime must be one of js, "
		  "python3, native, not \"python\" (did you mean python3?)");
	CHECK_STR(message("{\"runtime\":\"node\"}"), "runtime must be one of js, "
		  "python3, native, not \"node\" (did you mean js?)");
	CHECK_STR(message("{\"tier\":\"microvm\"}"), "tier must be one of auto, isolate, "
		  "vm, not \"microvm\" (did you mean vm?)");
	CHECK_STR(message("{\"runtime\":\"cobol\"}"),
		  "runtime must be one of js, python3, native, not \"cobol\"");
	CHECK_STR(message("{\"limts\":{}}"), "unknown field limts (did you mean limits?)");
	CHECK_STR(message("{\"colour\":1}"), "unknown field colour");
	CHECK_STR(message("{\"limits\":{\"queu\":1}}"),
		  "unknown field limits.queu (did you mean queue?)");
	CHECK_STR(message("{\"limits\":{\"queue\":-1}}"),
		  "limits.queue must be a whole number from 0 to 100000, not -1");
	CHECK_STR(message("{\"limits\":{\"cpu_ms\":1.5}}"),
		  "limits.cpu_ms must be a whole number from 1 to 600000, not 1.5");
	CHECK_STR(message("{\"limits\":{\"memory_mb\":\"lots\"}}"),
		  "limits.memory_mb must be a whole number from 16 to 16384, not a string");
	CHECK(strstr(message("{\"env\":{\"MY-VAR\":\"x\"}}"), "\"MY-VAR\" is not a valid"));
	expect_field("{\"env\":{\"1A\":\"x\"}}", "env");
	expect_field("{\"env\":{\"\":\"x\"}}", "env");
	CHECK_STR(parse("{\"env\":{\"_A1\":\"x\",\"b\":\"y\"}}", &fn), "");
	fn_unref(fn);
}

/* {"tier": TIER, "runtime": "python3", "entry": "handler.py", "env": {n x KNN: value}} */
static const char *env_of(const char *tier, int n, size_t value_len, struct fn **fn)
{
	struct strbuf sb = STRBUF_INIT;
	const char *field;
	int i;

	sb_printf(&sb, "{\"tier\":\"%s\",\"runtime\":\"%s\",\"entry\":\"%s\",\"env\":{",
		  tier, strcmp(tier, "vm") ? "js" : "python3",
		  strcmp(tier, "vm") ? "index.js" : "handler.py");
	for (i = 0; i < n; i++)
		sb_printf(&sb, "%s\"K%02d\":\"%*s\"", i ? "," : "", i, (int)value_len, "");
	sb_adds(&sb, "}}");
	field = parse(sb.buf, fn);
	sb_free(&sb);
	return field;
}

/* The micro-VM's command line holds 32 variables and 4096 bytes; isolates take more. */
static void test_vm_env_limits(void)
{
	struct fn *fn;

	CHECK_STR(env_of("vm", 32, 125, &fn), "");	/* 32 x (3 + 125) = 4096 */
	fn_unref(fn);
	CHECK_STR(env_of("vm", 33, 1, &fn), "env");
	CHECK(strstr(err.message, "33 variables") && strstr(err.message, "at most 32"));
	CHECK_STR(env_of("vm", 32, 126, &fn), "env");
	CHECK(strstr(err.message, "4128 bytes") && strstr(err.message, "4096 bytes"));
	CHECK_STR(env_of("isolate", 100, 1000, &fn), "");
	fn_unref(fn);
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

static void rm(const char *name)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	CHECK(unlink(path) == 0);
}

/* A missing entry names the source file it was probably meant to be; runs last, as it
 * takes the default entries away. */
static void test_entry_hints(void)
{
	CHECK_STR(message("{\"entry\":\"handlr.py\"}"), "entry file handlr.py is not "
		  "among the deployed files (did you mean handler.py?)");
	CHECK_STR(err.suggestion, "handler.py");
	CHECK_STR(message("{\"entry\":\"server.py\"}"),
		  "entry file server.py is not among the deployed files");
	CHECK_STR(err.suggestion, "");
	rm("index.js");
	rm("handler.py");
	touch("lambda_function.py");
	touch("notes.txt");
	CHECK_STR(message("{}"), "no entry file: name one with \"entry\" (lambda_function.py "
		  "is the only source file here) or deploy index.js, index.ts or handler.py");
	CHECK_STR(err.suggestion, "lambda_function.py");
	touch("util.py");	/* two candidates: no guess */
	CHECK_STR(message("{}"), "no entry file: name one with \"entry\" or deploy index.js, "
		  "index.ts or handler.py");
	CHECK_STR(err.suggestion, "");
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
	test_messages();
	test_vm_env_limits();
	test_entry_hints();
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd) == 0);
	return check_done();
}
