/* cli_manifest_build and cli_manifest_body on real files in a temporary directory:
 * stoke.json passes through with unknown fields, flags override it, names and entries
 * are derived, symbolic links are followed (loops and links to nothing caught), version
 * control stays home. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "cli/manifest.h"

static char root[256];

static void put(const char *rel, const char *content)
{
	char path[512];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", root, rel);
	f = fopen(path, "w");
	if (!f) {
		perror(path);
		exit(2);
	}
	fputs(content, f);
	fclose(f);
}

static void mkdir_in(const char *rel)
{
	char path[512];

	snprintf(path, sizeof(path), "%s/%s", root, rel);
	if (mkdir(path, 0755)) {
		perror(path);
		exit(2);
	}
}

static void link_in(const char *target, const char *rel)
{
	char path[512];

	snprintf(path, sizeof(path), "%s/%s", root, rel);
	if (symlink(target, path)) {
		perror(path);
		exit(2);
	}
}

static const char *field(const struct cli_manifest *m, const char *key)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(m->manifest, key);

	return cJSON_IsString(item) ? item->valuestring : NULL;
}

/* Builds for path (relative to root) with the given flags; returns the result. */
static int build(const char *rel, const char *name, const char *tier, const char *runtime,
		 struct cli_manifest *m, struct cli_err *err)
{
	char path[512];
	struct cli_manifest_opts o = { path, name, tier, runtime };

	snprintf(path, sizeof(path), "%s/%s", root, rel);
	return cli_manifest_build(&o, m, err);
}

/* The body as the daemon sees it: parsed back from JSON. */
static cJSON *body_of(const struct cli_manifest *m)
{
	struct strbuf sb = STRBUF_INIT;
	cJSON *doc;

	CHECK_INT(cli_manifest_body(m, &sb, NULL), 0);
	doc = cJSON_ParseWithLength(sb.buf, sb.len);
	CHECK(doc != NULL);
	sb_free(&sb);
	return doc;
}

static const char *file_b64(const cJSON *body, const char *rel)
{
	const cJSON *files = cJSON_GetObjectItemCaseSensitive(body, "files");
	const cJSON *f = cJSON_GetObjectItemCaseSensitive(files, rel);

	return cJSON_IsString(f) ? f->valuestring : NULL;
}

static void setup_tree(void)
{
	mkdir_in("My_App");
	put("My_App/stoke.json", "{\"name\":\"from-json\",\"tier\":\"vm\",\"runtime\":"
	    "\"python3\",\"entry\":\"main.py\",\"custom\":{\"x\":[1,2]}}");
	put("My_App/main.py", "print('hi')\n");
	put("My_App/.env", "A=1\n");
	mkdir_in("My_App/lib");
	put("My_App/lib/util.py", "x = 1\n");
	mkdir_in("My_App/.git");
	put("My_App/.git/HEAD", "ref: refs/heads/main\n");
	mkdir_in("My_App/lib/.cache");
	put("My_App/lib/.cache/junk", "junk");
	put("My_App/.gitignore", "*.pyc\n");
	link_in("main.py", "My_App/alias.py");
	/* Links are followed wherever they point: a file and a directory outside the tree. */
	mkdir_in("elsewhere");
	put("elsewhere/lib.js", "export const x = 1;\n");
	mkdir_in("elsewhere/pkg");
	put("elsewhere/pkg/a.js", "1");
	link_in("../../elsewhere/lib.js", "My_App/lib/shared.js");
	link_in("../elsewhere/pkg", "My_App/pkg");
	link_in("..", "My_App/lib/up");		/* a loop: left out, said */
	mkdir_in("dangling");
	put("dangling/index.js", "1");
	link_in("/nonexistent/lib.js", "dangling/lib.js");
	mkdir_in("looped");
	put("looped/index.js", "1");
	link_in("b", "looped/a");
	link_in("a", "looped/b");
	mkdir_in("Plain.Dir");
	put("Plain.Dir/index.js", "export default {}\n");
	put("Hello.JS", "export default {fetch() {}}\n");
	mkdir_in("bad");
	put("bad/stoke.json", "{\"name\": ");
	mkdir_in("comma");
	put("comma/stoke.json", "{\n  \"name\": \"x\",\n  }\n");
	mkdir_in("array");
	put("array/stoke.json", "[1]");
	mkdir_in("numname");
	put("numname/stoke.json", "{\"name\": 5}");
	put("numname/a.js", "1");
	mkdir_in("empty");
}

static void test_stoke_json_passes_through(void)
{
	struct cli_manifest m;
	cJSON *body, *custom;

	CHECK_INT(build("My_App", NULL, NULL, NULL, &m, NULL), 0);
	CHECK_STR(m.name, "from-json");
	CHECK_STR(field(&m, "tier"), "vm");
	CHECK_STR(field(&m, "runtime"), "python3");
	CHECK_STR(field(&m, "entry"), "main.py");
	custom = cJSON_GetObjectItemCaseSensitive(m.manifest, "custom");
	CHECK(cJSON_IsObject(custom));
	/* .env, .gitignore, alias.py, lib/.cache/junk, lib/shared.js, lib/util.py, main.py,
	 * pkg/a.js, stoke.json; not .git nor lib/up (a loop). */
	CHECK_INT(m.nfiles, 9);
	CHECK_INT(m.nskipped, 2);
	CHECK(m.nskipped == 2 && !strcmp(m.skipped[0], ".git (version control)") &&
	      !strcmp(m.skipped[1], "lib/up (a link back to a directory that contains it)"));

	body = body_of(&m);
	CHECK_STR(file_b64(body, "main.py"), "cHJpbnQoJ2hpJykK");
	CHECK_STR(file_b64(body, "lib/util.py"), "eCA9IDEK");
	CHECK(file_b64(body, ".env") != NULL);
	CHECK(file_b64(body, "stoke.json") != NULL);
	CHECK(file_b64(body, ".git/HEAD") == NULL);
	CHECK(file_b64(body, "lib/.cache/junk") != NULL);
	CHECK_STR(file_b64(body, "alias.py"), "cHJpbnQoJ2hpJykK");
	CHECK_STR(file_b64(body, "lib/shared.js"), "ZXhwb3J0IGNvbnN0IHggPSAxOwo=");
	CHECK_STR(file_b64(body, "pkg/a.js"), "MQ==");
	CHECK(file_b64(body, "lib/up/main.py") == NULL);
	custom = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(body,
							"manifest"), "custom");
	CHECK(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(custom, "x")));
	cJSON_Delete(body);
	cli_manifest_free(&m);
}

static void test_flags_override(void)
{
	struct cli_manifest m;

	CHECK_INT(build("My_App", "flagged", "isolate", "js", &m, NULL), 0);
	CHECK_STR(m.name, "flagged");
	CHECK_STR(field(&m, "name"), "flagged");
	CHECK_STR(field(&m, "tier"), "isolate");
	CHECK_STR(field(&m, "runtime"), "js");
	CHECK_STR(field(&m, "entry"), "main.py");
	cli_manifest_free(&m);
}

static void test_derived_names(void)
{
	struct cli_manifest m;
	cJSON *body;

	/* A directory keeps its dots: only files lose an extension. */
	CHECK_INT(build("Plain.Dir/", NULL, NULL, NULL, &m, NULL), 0);
	CHECK_STR(m.name, "plain.dir");
	CHECK(field(&m, "entry") == NULL);
	CHECK(field(&m, "tier") == NULL);
	cli_manifest_free(&m);

	CHECK_INT(build("Plain.Dir/.", NULL, "auto", NULL, &m, NULL), 0);
	CHECK_STR(m.name, "plain.dir");
	CHECK_STR(field(&m, "tier"), "auto");
	cli_manifest_free(&m);

	CHECK_INT(build("Hello.JS", NULL, NULL, NULL, &m, NULL), 0);
	CHECK_STR(m.name, "hello");
	CHECK_STR(field(&m, "entry"), "Hello.JS");
	CHECK_INT(m.nfiles, 1);
	body = body_of(&m);
	CHECK(file_b64(body, "Hello.JS") != NULL);
	cJSON_Delete(body);
	cli_manifest_free(&m);

	CHECK_INT(build("Hello.JS", "other", NULL, "js", &m, NULL), 0);
	CHECK_STR(m.name, "other");
	CHECK_STR(field(&m, "entry"), "Hello.JS");
	CHECK_STR(field(&m, "runtime"), "js");
	cli_manifest_free(&m);
}

/* A file larger than one encoding batch, ending in a partial group: the batches must
 * join into one valid encoding. */
static void test_large_file(void)
{
	struct cli_manifest m;
	const char *enc;
	char *text;
	cJSON *body;
	size_t i;

	mkdir_in("big");
	text = malloc(3002);
	for (i = 0; i < 3000; i++)
		text[i] = "abc"[i % 3];
	memcpy(text + 3000, "f", 2);
	put("big/data.txt", text);
	free(text);
	CHECK_INT(build("big", NULL, NULL, NULL, &m, NULL), 0);
	body = body_of(&m);
	enc = file_b64(body, "data.txt");
	CHECK(enc && strlen(enc) == 4004);
	for (i = 0; enc && i < 4000; i += 4)
		if (memcmp(enc + i, "YWJj", 4)) {
			CHECK(!"repetition broken");
			break;
		}
	CHECK_STR(enc ? enc + 4000 : NULL, "Zg==");
	cJSON_Delete(body);
	cli_manifest_free(&m);
}

/* The size announced before the files are read is the size of the body built. */
static void test_body_size(void)
{
	static const char *const paths[] = { "My_App", "big", "Hello.JS", "Plain.Dir" };
	struct strbuf sb = STRBUF_INIT;
	struct cli_manifest m;
	size_t i, size = 0;

	for (i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
		CHECK_INT(build(paths[i], NULL, NULL, NULL, &m, NULL), 0);
		CHECK_INT(cli_manifest_body_size(&m, &size), 0);
		CHECK_INT(cli_manifest_body(&m, &sb, NULL), 0);
		CHECK_INT(size, sb.len);
		sb_free(&sb);
		cli_manifest_free(&m);
	}
}

static void test_errors(void)
{
	struct cli_err err = { 0 };
	struct cli_manifest m;

	CHECK_INT(build("bad", NULL, NULL, NULL, &m, &err), -EINVAL);
	CHECK(strstr(err.msg, "stoke.json: invalid JSON near line 1, column 9") != NULL);
	CHECK_INT(build("comma", NULL, NULL, NULL, &m, &err), -EINVAL);
	CHECK(strstr(err.msg, "stoke.json: invalid JSON near line 3, column 4") != NULL);
	CHECK_INT(build("array", NULL, NULL, NULL, &m, &err), -EINVAL);
	CHECK_INT(build("numname", NULL, NULL, NULL, &m, &err), -EINVAL);
	CHECK(strstr(err.msg, "name") != NULL);
	CHECK_INT(build("numname", "fixed", NULL, NULL, &m, &err), 0);
	cli_manifest_free(&m);
	CHECK_INT(build("missing", NULL, NULL, NULL, &m, &err), -ENOENT);
	CHECK_INT(build("empty", NULL, NULL, NULL, &m, &err), -ENOENT);
	CHECK(strstr(err.msg, "no files") != NULL);
	CHECK_INT(build("dangling", NULL, NULL, NULL, &m, &err), -ENOENT);
	CHECK(strstr(err.msg, "/dangling/lib.js is a symbolic link to /nonexistent/lib.js, "
		     "which does not exist") != NULL);
	CHECK_INT(build("dangling/lib.js", NULL, NULL, NULL, &m, &err), -ENOENT);
	CHECK(strstr(err.msg, "is a symbolic link to /nonexistent/lib.js") != NULL);
	CHECK_INT(build("looped", NULL, NULL, NULL, &m, &err), -ELOOP);
	CHECK(strstr(err.msg, "/looped/a: symbolic links that point at each other") != NULL);
}

static void cleanup(void)
{
	char cmd[300];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	if (system(cmd))
		fprintf(stderr, "could not remove %s\n", root);
}

int main(void)
{
	const char *tmp = getenv("TMPDIR");

	snprintf(root, sizeof(root), "%s/stoke-cli-manifest-XXXXXX", tmp ? tmp : "/tmp");
	if (!mkdtemp(root)) {
		perror("mkdtemp");
		return 2;
	}
	setup_tree();
	test_stoke_json_passes_through();
	test_flags_override();
	test_derived_names();
	test_large_file();
	test_body_size();
	test_errors();
	cleanup();
	return check_done("test_manifest");
}
