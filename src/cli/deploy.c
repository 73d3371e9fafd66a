/* `stoke deploy PATH`: uploads a directory or a single file as a new function version. */
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "deploy.h"
#include "gateway/manifest.h"
#include "output.h"

enum { OPT_NAME = CLI_OPT_VERB_BASE, OPT_TIER, OPT_RUNTIME };

/* Deploys bigger than this ask the daemon for its limit before the body is built;
 * below it, building the body costs little and the daemon's own 413 names the limit. */
#define CLI_DEPLOY_ASK_BYTES (1u << 20)

const struct option cli_deploy_opts[] = {
	CLI_CLIENT_OPTIONS,
	{ "name", required_argument, NULL, OPT_NAME },
	{ "tier", required_argument, NULL, OPT_TIER },
	{ "runtime", required_argument, NULL, OPT_RUNTIME },
	{ 0 },
};

int cli_deploy_args(struct cli_client *c, int argc, char **argv,
		    struct cli_manifest_opts *mo, int *code)
{
	int opt;

	while ((opt = cli_client_getopt(c, argc, argv, code)) >= 0) {
		if (opt == OPT_NAME)
			mo->name = optarg;
		else if (opt == OPT_TIER)
			mo->tier = optarg;
		else if (opt == OPT_RUNTIME)
			mo->runtime = optarg;
	}
	if (opt == -2)
		return -1;
	if (argc - optind != 1)
		*code = cli_usage(c->verb, "wants exactly one PATH (a directory or a file)");
	else if (mo->tier && strcmp(mo->tier, "auto") && strcmp(mo->tier, "isolate") &&
		 strcmp(mo->tier, "vm"))
		*code = cli_usage(c->verb, "--tier must be auto, isolate or vm");
	else if ((mo->name && !*mo->name) || (mo->runtime && !*mo->runtime))
		*code = cli_usage(c->verb, "--name and --runtime cannot be empty");
	else
		mo->path = argv[optind];
	return mo->path ? 0 : -1;
}

static void cli_deploy_print(const struct cli_client *c, const cJSON *doc, const char *name)
{
	const cJSON *reason;
	char version[64];

	if (c->json) {
		cli_out_json(doc);
		return;
	}
	cli_out_scalar(cJSON_GetObjectItemCaseSensitive(doc, "version"), version,
		       sizeof(version));
	printf("deployed %s v%s (%s, %s) -> ", cli_out_str(doc, "name", name), version,
	       cli_out_str(doc, "tier", "?"), cli_out_str(doc, "runtime", "?"));
	if (cli_out_str(doc, "url", NULL))
		printf("%s\n", cli_out_str(doc, "url", NULL));
	else
		printf("%s/fn/%s/\n", c->url_text, cli_out_str(doc, "name", name));
	/* Why auto picked this tier: worth seeing before the first slow cold start. */
	cJSON_ArrayForEach(reason, cJSON_GetObjectItemCaseSensitive(doc, "reasons"))
		if (cJSON_IsString(reason))
			printf("  %s\n", reason->valuestring);
}

/*
 * Refuses a deploy over the daemon's limit before reading and encoding the files (a
 * 60 MB tree is 80 MB of base64 in memory). Returns 0 to go on, else the exit code
 * after saying why: the same code as the daemon's 413 would give.
 */
static int cli_deploy_check_size(struct cli_client *c, const struct cli_manifest *m,
				 const char *path)
{
	const cJSON *limit;
	cJSON *doc = NULL;
	size_t size;
	int code;

	if (cli_manifest_body_size(m, &size)) {
		fprintf(stderr, "stoke: out of memory building the request\n");
		return CLI_EXIT_USAGE;
	}
	if (size <= CLI_DEPLOY_ASK_BYTES)
		return CLI_EXIT_OK;
	code = cli_client_api(c, "GET", "/_stoke/status", NULL, &doc);
	limit = cJSON_GetObjectItemCaseSensitive(doc, "max_deploy_bytes");
	if (!code && cJSON_IsNumber(limit) && (double)size > limit->valuedouble) {
		cli_client_fail(c, "too_big", "%s is too big to deploy: %zu files of %.1f MiB "
			"make a %.1f MiB request (contents are sent as base64, 4/3 of their "
			"size);\n  the daemon at %s accepts %.1f MiB (stoke serve --max-deploy)",
			path, m->nfiles, m->bytes / 1048576.0, size / 1048576.0, c->url_text,
			limit->valuedouble / 1048576.0);
		code = CLI_EXIT_REMOTE;
	}
	cJSON_Delete(doc);
	return code;
}

static int cli_deploy_upload(struct cli_client *c, const struct cli_manifest *m,
			     const char *method, const char *target, cJSON **doc)
{
	struct strbuf body = STRBUF_INIT;
	struct cli_err err = { 0 };
	int code;

	if (cli_manifest_body(m, &body, &err)) {
		cli_client_fail(c, "invalid_input", "%s", err.msg);
		code = CLI_EXIT_USAGE;
	} else {
		code = cli_client_api(c, method, target, &body, doc);
	}
	sb_free(&body);
	return code;
}

/*
 * Checks the name as typed (--name 'My Fn', stoke.json, a derived one) before it is
 * percent-encoded into the URL: the daemon would see and judge "My%20Fn", and suggest
 * a name made from the escapes. Returns 0, or CLI_EXIT_USAGE after saying which name
 * would do, like the daemon's own refusal.
 */
static int cli_deploy_check_name(const struct cli_client *c, const char *name)
{
	char valid[64], msg[512];
	cJSON *doc;

	if (mf_valid_name(name, strlen(name)))
		return CLI_EXIT_OK;
	mf_suggest_name(name, valid, sizeof(valid));
	snprintf(msg, sizeof(msg), "\"%s\" is not a valid function name: use 1-63 "
		 "characters of a-z, 0-9 and '-', not starting or ending with '-'%s%s%s", name,
		 *valid ? " (\"" : "", valid, *valid ? "\" is)" : "");
	doc = cJSON_CreateObject();
	if (!doc || !cJSON_AddStringToObject(doc, "error", "invalid_manifest") ||
	    !cJSON_AddStringToObject(doc, "message", msg) ||
	    !cJSON_AddStringToObject(doc, "field", "name") ||
	    (*valid && !cJSON_AddStringToObject(doc, "suggestion", valid)))
		fprintf(stderr, "stoke: %s\n", msg);
	else
		cli_client_error(c, doc);
	cJSON_Delete(doc);
	return CLI_EXIT_USAGE;
}

/* Whether the file at path starts like an ELF program (any class: the daemon says
 * which one it runs). */
static int cli_deploy_is_elf(const char *path)
{
	unsigned char h[4];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : read(fd, h, sizeof(h));

	if (fd >= 0)
		close(fd);
	return n == 4 && !memcmp(h, "\177ELF", 4);
}

/* ".js, .mjs (js), .py (python3)...": the extensions stoke knows, by runtime. */
static void cli_deploy_exts(struct strbuf *sb)
{
	const struct mf_entry_ext *e;

	for (e = mf_entry_exts; e->ext; e++) {
		sb_printf(sb, "%s%s", e != mf_entry_exts ? ", " : "", e->ext);
		if (!e[1].ext || strcmp(e[1].runtime, e->runtime))
			sb_printf(sb, " (%s)", e->runtime);
	}
}

/*
 * Without a runtime from --runtime or stoke.json, the daemon infers one from the entry's
 * extension and takes anything it does not know for a native program, so readme.txt
 * would be refused as "not an x86-64 ELF program". Says instead that ".txt" tells no
 * runtime, before sending. Returns 0 to go on, else CLI_EXIT_USAGE.
 */
static int cli_deploy_check_runtime(const struct cli_client *c,
				    const struct cli_manifest_opts *mo,
				    const struct cli_manifest *m)
{
	const char *entry = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m->manifest,
										 "entry"));
	struct strbuf exts = STRBUF_INIT;
	char path[PATH_MAX];
	struct stat st;

	if (cJSON_GetObjectItemCaseSensitive(m->manifest, "runtime") || !entry ||
	    mf_entry_runtime(entry) || stat(mo->path, &st))
		return CLI_EXIT_OK;
	if (S_ISDIR(st.st_mode))
		snprintf(path, sizeof(path), "%s/%s", mo->path, entry);
	else
		snprintf(path, sizeof(path), "%s", mo->path);
	/* A missing entry is the daemon's to name; a program is native whatever its name. */
	if (stat(path, &st) || !S_ISREG(st.st_mode) || cli_deploy_is_elf(path))
		return CLI_EXIT_OK;
	cli_deploy_exts(&exts);
	cli_client_fail(c, "invalid_input", "cannot tell the runtime of %s from its extension "
			"\"%s\": stoke knows %s, and a file without an extension is a native "
			"program; pass --runtime js, python3 or native, or set \"runtime\" in "
			"stoke.json",
			entry, strrchr(entry, '.'), sb_failed(&exts) ? "?" : exts.buf);
	sb_free(&exts);
	return CLI_EXIT_USAGE;
}

/* Says what the walk left out (.git, a socket, a link loop), so that nothing goes
 * missing silently; everything else under PATH is sent. */
static void cli_deploy_say_skipped(const struct cli_manifest *m)
{
	size_t i;

	if (!m->nskipped)
		return;
	fprintf(stderr, "stoke: not uploaded:");
	for (i = 0; i < m->nskipped; i++)
		fprintf(stderr, "%s %s", i ? "," : "", m->skipped[i]);
	fputc('\n', stderr);
}

/* Local problems (a missing PATH, a bad stoke.json) are usage errors. */
int cli_deploy_send(struct cli_client *c, const struct cli_manifest_opts *mo,
		    const char *method, const char *suffix, cli_deploy_print_fn *print)
{
	struct strbuf target = STRBUF_INIT;
	struct cli_err err = { 0 };
	struct cli_manifest m;
	cJSON *doc = NULL;
	int code;

	if (cli_manifest_build(mo, &m, &err)) {
		cli_client_fail(c, "invalid_input", "%s", err.msg);
		return CLI_EXIT_USAGE;
	}
	cli_deploy_say_skipped(&m);
	c->name_in_file = m.name_from_file;
	code = cli_deploy_check_name(c, m.name) ?: cli_deploy_check_runtime(c, mo, &m);
	if (code) {
		cli_manifest_free(&m);
		return code;
	}
	sb_adds(&target, "/_stoke/functions/");
	cli_client_escape(&target, m.name);
	sb_adds(&target, suffix);
	if (sb_failed(&target)) {
		fprintf(stderr, "stoke: out of memory building the request\n");
		code = CLI_EXIT_USAGE;
	} else {
		code = cli_deploy_check_size(c, &m, mo->path);
	}
	if (!code)
		code = cli_deploy_upload(c, &m, method, target.buf, &doc);
	if (!code)
		print(c, doc, m.name);
	cJSON_Delete(doc);
	sb_free(&target);
	cli_manifest_free(&m);
	return code;
}

static int cli_deploy_run(int argc, char **argv)
{
	struct cli_manifest_opts mo = { 0 };
	struct cli_client c;
	int code = 0;

	cli_client_init(&c, &cli_verb_deploy);
	c.name_flag = "--name";
	if (cli_deploy_args(&c, argc, argv, &mo, &code))
		return code;
	code = cli_client_open(&c);
	if (!code)
		code = cli_deploy_send(&c, &mo, "PUT", "", cli_deploy_print);
	cli_client_close(&c);
	return code;
}

const struct cli_verb cli_verb_deploy = {
	.name = "deploy",
	.args = "PATH [OPTIONS]",
	.summary = "Deploy a directory (with an optional stoke.json) or a single source file.",
	.options = CLI_DEPLOY_OPTIONS,
	.notes =
		"A directory is sent whole, dot-files and node_modules included, symbolic\n"
		"links followed; only version control (.git, .hg, .svn, .bzr), link loops and\n"
		"special files are left out, and stoke says which.\n",
	.client = 1,
	.longopts = cli_deploy_opts,
	.shortopts = ":h",
	.run = cli_deploy_run,
};
