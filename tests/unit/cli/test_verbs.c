/*
 * The stoke binary (path in argv[1]) against a fake daemon on loopback: what each verb
 * sends, what it prints, and the exit-code contract (0 ok, 1 the daemon or function
 * answered an error, 2 usage, 3 unreachable).
 */
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "check.h"
#include "loopback.h"

extern char **environ;

static const char *stoke;
static char url[64], tmpdir[256];
static char out[1 << 16], err[1 << 16];	/* the last run's stdout and stderr */

static void reply(int fd, int status, const char *type, const char *body)
{
	char head[256];

	snprintf(head, sizeof(head), "HTTP/1.1 %d X\r\nContent-Type: %s\r\n"
		 "Content-Length: %zu\r\n\r\n", status, type, strlen(body));
	loop_say(fd, head);
	loop_say(fd, body);
}

static int starts(const char *req, const char *line)
{
	return !strncmp(req, line, strlen(line));
}

static void fake_daemon(int fd, const char *req)
{
	const char *j = "application/json";

	if (starts(req, "GET /fn/") || starts(req, "POST /fn/"))
		reply(fd, strstr(req, "/fn/f/boom ") ? 502 : 200, "text/plain",
		      strstr(req, "Authorization") ? "token leaked" : "fn body");
	else if (!strstr(req, "\r\nAuthorization: Bearer sekrit\r\n"))
		reply(fd, 401, j, "{\"error\":\"unauthorized\",\"message\":\"bad token\"}");
	else if (starts(req, "GET /_stoke/functions HTTP"))
		reply(fd, 200, j, "{\"functions\":[{\"name\":\"alpha\",\"version\":7,\"tier\":"
		      "\"isolate\",\"runtime\":\"js\",\"entry\":\"index.js\",\"deployed_at\":0}]}");
	else if (starts(req, "PUT /_stoke/functions/hello "))
		reply(fd, 201, j, "{\"name\":\"hello\",\"version\":3,\"tier\":\"isolate\","
		      "\"runtime\":\"js\",\"entry\":\"index.js\",\"url\":\"http://h/fn/hello/\"}");
	else if (starts(req, "POST /_stoke/functions/hello/advise "))
		reply(fd, 200, j, "{\"tier\":\"vm\",\"runtime\":\"python3\",\"entry\":"
		      "\"h.py\",\"reasons\":[\"python3 runs only in a micro-VM\",\"second\"]}");
	else if (starts(req, "PUT /_stoke/functions/") ||
		 starts(req, "POST /_stoke/functions/"))
		reply(fd, 400, j, "{\"error\":\"invalid_manifest\",\"message\":\"unknown field "
		      "nmae\",\"field\":\"nmae\"}");
	else if (starts(req, "GET /_stoke/usage?function=alpha&since=1796083200 ") ||
		 starts(req, "GET /_stoke/usage "))
		reply(fd, 200, j, "{\"usage\":[{\"function\":\"alpha\",\"tier\":\"isolate\","
		      "\"invocations\":3,\"cold_starts\":1,\"errors\":0,\"wall_ms\":2,"
		      "\"cpu_ms\":1.5,\"gb_s\":0.25,\"cost_lambda_usd\":0.5,"
		      "\"cost_workers_usd\":0.25}],\"cost_lambda_usd\":0.5,"
		      "\"cost_workers_usd\":0.25,\"prices\":{\"lambda\":{\"per_gb_s\":1,"
		      "\"as_of\":\"2025-01-01\"},\"workers\":{\"as_of\":\"2025-02-02\"}}}");
	else if (starts(req, "DELETE /_stoke/functions/alpha "))
		reply(fd, 200, j, "{\"deleted\":\"alpha\"}");
	else if (starts(req, "GET /_stoke/functions/alpha/logs?since=0&limit=2 "))
		reply(fd, 200, j, "{\"lines\":[{\"seq\":4,\"ts\":\"T\",\"request_id\":\"r1\","
		      "\"stream\":\"stdout\",\"msg\":\"hi\"}],\"next\":5}");
	else
		reply(fd, 404, j, "{\"error\":\"not_found\",\"message\":\"no such thing\"}");
}

static void slurp(const char *path, char *buf, size_t size)
{
	FILE *f = fopen(path, "r");
	size_t n = f ? fread(buf, 1, size - 1, f) : 0;

	buf[n] = '\0';
	if (f)
		fclose(f);
}

/* Runs stoke with args (NULL-terminated) against the fake daemon; returns its status. */
static int run(const char *const *args)
{
	char *argv[32], o[300], e[300];
	posix_spawn_file_actions_t fa;
	int i, status = -1;
	pid_t pid;

	argv[0] = (char *)stoke;
	for (i = 0; args[i] && i < 30; i++)
		argv[i + 1] = (char *)args[i];
	argv[i + 1] = NULL;
	snprintf(o, sizeof(o), "%s/out", tmpdir);
	snprintf(e, sizeof(e), "%s/err", tmpdir);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 1, o, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	posix_spawn_file_actions_addopen(&fa, 2, e, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (posix_spawn(&pid, stoke, &fa, NULL, argv, environ) == 0)
		waitpid(pid, &status, 0);
	posix_spawn_file_actions_destroy(&fa);
	slurp(o, out, sizeof(out));
	slurp(e, err, sizeof(err));
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

#define RUN(...) run((const char *const[]){ __VA_ARGS__, NULL })

static void test_admin_verbs(void)
{
	CHECK_INT(RUN("ls"), 0);
	CHECK(strstr(out, "NAME") && strstr(out, "alpha") && strstr(out, "1970-01-01"));
	CHECK_INT(RUN("ls", "--json"), 0);
	CHECK(strstr(out, "\"functions\"") != NULL);
	CHECK_INT(RUN("ls", "--token", "wrong"), 1);
	CHECK(starts(err, "stoke: bad token\nstoke: the token sent came from --token; "));
	CHECK_INT(RUN("rm", "alpha"), 0);
	CHECK_STR(out, "deleted alpha\n");
	CHECK_INT(RUN("rm", "nope"), 1);
	CHECK_STR(err, "stoke: no such thing\n");
	CHECK_STR(out, "");
	CHECK_INT(RUN("show", "nope", "--json"), 1);
	CHECK_STR(err, "stoke: no such thing\n");
	CHECK_STR(out, "{\"error\":\"not_found\",\"message\":\"no such thing\","
		  "\"status\":404}\n");
	CHECK_INT(RUN("logs", "alpha", "-n", "2"), 0);
	CHECK_STR(out, "T r1 stdout hi\n");
}

static void test_deploy(void)
{
	char path[300];
	FILE *f;

	snprintf(path, sizeof(path), "%s/Hello.js", tmpdir);
	f = fopen(path, "w");
	fputs("export default {}\n", f);
	fclose(f);
	CHECK_INT(RUN("deploy", path), 0);
	CHECK_STR(out, "deployed hello v3 (isolate, js) -> http://h/fn/hello/\n");
	CHECK(strstr(loop_seen, "\"manifest\":{\"name\":\"hello\",\"entry\":\"Hello.js\"}"));
	CHECK(strstr(loop_seen, "\"files\":{\"Hello.js\":\"ZXhwb3J0IGRlZmF1bHQge30K\"}"));
	CHECK(strstr(loop_seen, "\r\nContent-Type: application/json\r\n") != NULL);

	CHECK_INT(RUN("deploy", path, "--name", "other"), 2);	/* invalid_manifest */
	CHECK_STR(err, "stoke: unknown field nmae\n");
	/* --json: the error is also one JSON object on stdout, the exit code the same. */
	CHECK_INT(RUN("deploy", path, "--name", "other", "--json"), 2);
	CHECK_STR(out, "{\"error\":\"invalid_manifest\",\"message\":\"unknown field nmae\","
		  "\"field\":\"nmae\",\"status\":400}\n");
	CHECK_STR(err, "stoke: unknown field nmae\n");
	CHECK_INT(RUN("deploy", "/nonexistent/dir", "--json"), 2);
	CHECK_STR(out, "{\"error\":\"invalid_input\",\"message\":"
		  "\"/nonexistent/dir: No such file or directory\"}\n");
	CHECK_INT(RUN("deploy", path, "--name", "My Fn"), 2);	/* refused before sending */
	CHECK(strstr(err, "\"My Fn\" is not a valid function name") &&
	      strstr(err, "(\"my-fn\" is)") && strstr(err, "\nstoke: hint: use --name my-fn\n"));
	/* An extension that tells no runtime is named, with the ones that do, unsent. */
	snprintf(path, sizeof(path), "%s/readme.txt", tmpdir);
	f = fopen(path, "w");
	fputs("hello\n", f);
	fclose(f);
	CHECK_INT(RUN("deploy", path), 2);
	CHECK(starts(err, "stoke: cannot tell the runtime of readme.txt from its extension "
		     "\".txt\": stoke knows .js, .mjs, .ts, .mts, .wasm (js), .py (python3), "
		     ".c (native), and a file without an extension is a native program; pass "
		     "--runtime js, python3 or native"));
	CHECK_INT(RUN("deploy", path, "--name", "hello", "--runtime", "js"), 0);
	snprintf(path, sizeof(path), "%s/Hello.js", tmpdir);
	CHECK_INT(RUN("deploy", path, "--tier", "fast"), 2);
	CHECK_INT(RUN("deploy", "/nonexistent/dir"), 2);
}

static void test_advise(void)
{
	char path[300];
	FILE *f;

	snprintf(path, sizeof(path), "%s/hello.py", tmpdir);
	f = fopen(path, "w");
	fputs("def handler(e, c): pass\n", f);
	fclose(f);
	CHECK_INT(RUN("advise", path), 0);
	CHECK_STR(out, "tier: vm\nruntime: python3\nentry: h.py\n"
		  "  - python3 runs only in a micro-VM\n  - second\n");
	CHECK(starts(loop_seen, "POST /_stoke/functions/hello/advise HTTP/1.1\r\n"));
	CHECK(strstr(loop_seen, "\"files\":{\"hello.py\":") != NULL);
	CHECK_INT(RUN("advise", path, "--json"), 0);
	CHECK(strstr(out, "\"reasons\":") != NULL);
	CHECK_INT(RUN("advise", path, "--name", "other"), 2);
	CHECK_STR(err, "stoke: unknown field nmae\n");
	CHECK_INT(RUN("advise"), 2);
}

static void test_usage(void)
{
	CHECK_INT(RUN("usage", "alpha", "--since", "2026-12-01"), 0);
	CHECK(starts(loop_seen, "GET /_stoke/usage?function=alpha&since=1796083200 HTTP"));
	CHECK(starts(out, "since 2026-12-01T00:00:00Z\nFUNCTION"));
	CHECK(strstr(out, "\nalpha  ") && strstr(out, "\ntotal  ") && strstr(out, "$0.5"));
	CHECK(strstr(out, "AWS Lambda as of 2025-01-01") && strstr(out, "as of 2025-02-02"));
	CHECK_INT(RUN("usage"), 0);
	CHECK(starts(loop_seen, "GET /_stoke/usage HTTP"));
	CHECK_INT(RUN("usage", "--json"), 0);
	CHECK(strstr(out, "\"cost_workers_usd\":\t0.25") != NULL);
	CHECK_INT(RUN("usage", "--since", "last week"), 2);
	CHECK(strstr(err, "--since") != NULL);
	CHECK_INT(RUN("usage", "a", "b"), 2);
}

/* bench hands over to $STOKE_SRC/bench/report: here a script that echoes its arguments. */
static void test_bench(void)
{
	char path[300];
	FILE *f;

	snprintf(path, sizeof(path), "%s/bench", tmpdir);
	CHECK_INT(mkdir(path, 0755), 0);
	snprintf(path, sizeof(path), "%s/bench/report", tmpdir);
	f = fopen(path, "w");
	fputs("#!/bin/sh\necho \"report $*\"\nexit 1\n", f);
	fclose(f);
	CHECK_INT(chmod(path, 0755), 0);
	setenv("STOKE_SRC", tmpdir, 1);
	CHECK_INT(RUN("bench", "--quick", "--out", "/x y"), 1);
	CHECK_STR(out, "report --quick --out /x y\n");
	CHECK_INT(RUN("bench"), 1);
	CHECK_STR(out, "report \n");
	setenv("STOKE_SRC", "/nonexistent", 1);
	CHECK_INT(RUN("bench"), 2);
	CHECK(strstr(err, "STOKE_SRC") != NULL);
	unsetenv("STOKE_SRC");
}

static void test_invoke(void)
{
	CHECK_INT(RUN("invoke", "f", "/x"), 0);
	CHECK_STR(out, "fn body");
	CHECK(starts(loop_seen, "GET /fn/f/x HTTP/1.1\r\n"));
	CHECK_INT(RUN("invoke", "f", "-d", "abc", "-H", "X-A: 1"), 0);
	CHECK(starts(loop_seen, "POST /fn/f/ HTTP/1.1\r\n"));
	CHECK(strstr(loop_seen, "\r\nX-A: 1\r\n") && strstr(loop_seen, "\r\n\r\nabc"));
	CHECK_INT(RUN("invoke", "f", "/boom", "-i"), 1);
	CHECK(starts(out, "HTTP/1.1 502 X\r\n") && strstr(out, "\r\n\r\nfn body"));
	CHECK_INT(RUN("invoke", "f", "-H", "no colon"), 2);
	/* A value missing at the end is named, not taken from the arguments before it. */
	CHECK_INT(RUN("invoke", "f", "/x", "-X"), 2);
	CHECK_STR(err, "stoke invoke: option '-X' needs a value\nTry 'stoke invoke --help'.\n");
	CHECK_INT(RUN("logs", "f", "-n"), 2);
	CHECK(starts(err, "stoke logs: option '-n' needs a value\n"));
	CHECK_INT(RUN("deploy", "somewhere", "--name"), 2);
	CHECK(starts(err, "stoke deploy: option '--name' needs a value\n"));
}

static void test_usage_and_reach(void)
{
	char dead[64];

	CHECK_INT(RUN("--version"), 0);
	CHECK(starts(out, "stoke "));
	CHECK_INT(RUN("help", "deploy"), 0);
	CHECK(strstr(out, "--tier") != NULL);
	CHECK_INT(RUN("ls", "--help"), 0);
	CHECK_INT(RUN("frobnicate"), 2);
	CHECK_STR(err, "stoke: unknown verb 'frobnicate'\nTry 'stoke --help'.\n");
	CHECK_INT(RUN("deploi"), 2);
	CHECK(starts(err, "stoke: unknown verb 'deploi' (did you mean deploy?)\n"));
	CHECK_INT(RUN("help", "invok"), 2);
	CHECK(strstr(err, "(did you mean invoke?)") != NULL);
	CHECK_INT(RUN("ls", "--bogus"), 2);
	CHECK_INT(RUN("show"), 2);
	CHECK_INT(RUN("logs", "x", "-n", "zero"), 2);
	CHECK_INT(RUN("status", "--url", "https://127.0.0.1"), 2);
	snprintf(dead, sizeof(dead), "http://127.0.0.1:%d", loop_dead_port());
	CHECK_INT(RUN("status", "--url", dead), 3);
	CHECK(strstr(err, "cannot reach the daemon at") && strstr(err, "stoke serve"));
	CHECK_STR(out, "");
	CHECK_INT(RUN("show", "f", "--url", dead, "--json"), 3);
	CHECK(strstr(err, "cannot reach the daemon at") && strstr(err, "stoke serve"));
	CHECK(starts(out, "{\"error\":\"unreachable\",\"message\":\"cannot reach "));
	CHECK_INT(RUN("invoke", "f", "--url", dead), 3);
	CHECK_INT(RUN("usage", "--url", dead), 3);
	CHECK_INT(RUN("bench", "--bogus"), 2);
	CHECK_INT(RUN("bench", "extra"), 2);
}

/* The daemon sees nothing from a run that only asked for help. */
static void forget_requests(void)
{
	pthread_mutex_lock(&loop_lock);
	loop_seen[0] = '\0';
	pthread_mutex_unlock(&loop_lock);
}

/* --help anywhere prints exactly what `stoke help VERB` prints, exits 0 and does
 * nothing else: no request, no "deleted victim", no daemon started. */
static void test_help_anywhere(void)
{
	static const char *const verbs[] = { "serve", "deploy", "advise", "invoke", "ls",
		"show", "rm", "logs", "status", "usage", "bench", "gc" };
	static char want[sizeof(out)];
	size_t i;

	for (i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
		const char *v = verbs[i];

		CHECK_INT(RUN("help", v), 0);
		memcpy(want, out, sizeof(want));
		CHECK(starts(want, "Usage: stoke ") && strstr(want, "-h, --help"));
		forget_requests();
		CHECK_INT(RUN(v, "--help", "victim"), 0);
		CHECK_STR(out, want);
		CHECK_INT(RUN(v, "victim", "--help"), 0);
		CHECK_STR(out, want);
		CHECK_INT(RUN(v, "--bogus", "-h"), 0);
		CHECK_STR(out, want);
		CHECK_INT(RUN("--help", v), 0);
		CHECK_STR(out, want);
		CHECK_STR(err, "");
		pthread_mutex_lock(&loop_lock);
		CHECK_STR(loop_seen, "");
		pthread_mutex_unlock(&loop_lock);
	}
	/* An option's value is not an option: this sends the body "--help". */
	CHECK_INT(RUN("invoke", "f", "-d", "--help"), 0);
	CHECK(strstr(loop_seen, "\r\n\r\n--help") != NULL);
}

/* Every option line of every help describes from column 22, under an Options: header. */
static void test_help_layout(void)
{
	static const char *const verbs[] = { "serve", "deploy", "advise", "invoke", "ls",
		"show", "rm", "logs", "status", "usage", "bench", "gc" };
	const char *line, *end;
	size_t i;
	int options;

	for (i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
		CHECK_INT(RUN("help", verbs[i]), 0);
		CHECK(strstr(out, "\n\nOptions:\n") != NULL);
		options = 0;
		for (line = out; (end = strchr(line, '\n')); line = end + 1) {
			if (!strncmp(line, "Options:", 8) || !strncmp(line, "Daemon options", 14))
				options = 1;
			else if (line == end)
				options = 0;
			if (!options || line[0] != ' ')
				continue;
			/* an option and two spaces, or a continuation: text starts at 22 */
			if (end - line < 23 || line[21] != ' ' || line[22] == ' ' ||
			    (line[2] != '-' && line[2] != '$' && strspn(line, " ") != 22)) {
				fprintf(stderr, "%s: misaligned: %.*s\n", verbs[i],
					(int)(end - line), line);
				CHECK(0);
			}
		}
	}
}

/* Each help ends with the exit codes that verb can give: serve and bench talk to no
 * daemon, so they say nothing of one answering an error. */
static void test_help_exits(void)
{
	CHECK_INT(RUN("serve", "--help"), 0);
	CHECK(strstr(out, "\nExit status: 0 the daemon stopped on SIGTERM or Ctrl-C, 1 it "));
	CHECK(!strstr(out, "answered an error"));
	CHECK_INT(RUN("bench", "--help"), 0);
	CHECK(strstr(out, "\nExit status (bench/report's): 0 the report was written, 1 a "));
	CHECK(!strstr(out, "answered an error"));
	CHECK_INT(RUN("deploy", "--help"), 0);
	CHECK(strstr(out, "\nExit status: 0 success, 1 the daemon or function answered an "));
}

/* The daemon options also work before the verb. */
static void test_options_before_verb(void)
{
	char dead[64];

	CHECK_INT(RUN("--url", url, "ls"), 0);
	CHECK(strstr(out, "alpha") != NULL);
	CHECK_INT(RUN("--json", "--token=sekrit", "ls"), 0);
	CHECK(strstr(out, "\"functions\"") != NULL);
	CHECK_INT(RUN("--token", "wrong", "rm", "alpha"), 1);
	CHECK_INT(RUN("--tok", "wrong", "rm", "alpha"), 1);	/* getopt's abbreviations */
	CHECK_INT(RUN("--timeout", "5", "--url", url, "rm", "alpha"), 0);
	CHECK_STR(out, "deleted alpha\n");
	snprintf(dead, sizeof(dead), "http://127.0.0.1:%d", loop_dead_port());
	CHECK_INT(RUN("--url", dead, "status"), 3);
	CHECK_INT(RUN("--json", "serve"), 2);
	CHECK(strstr(err, "'--json' does not apply to 'serve'") != NULL);
	CHECK_INT(RUN("--url", url), 2);
	CHECK_INT(RUN("--url"), 2);
	CHECK_INT(RUN("--bogus", "ls"), 2);
	CHECK_INT(RUN("--help"), 0);
	CHECK(strstr(out, "Options before the verb") && strstr(out, "--url URL"));
	CHECK_INT(RUN("help", "--help"), 0);
	CHECK(starts(out, "Usage: stoke [OPTIONS] VERB"));
	CHECK_INT(RUN("-h", "rm"), 0);
	CHECK(starts(out, "Usage: stoke rm NAME"));
}

int main(int argc, char **argv)
{
	const char *tmp = getenv("TMPDIR");
	char cmd[300];

	if (argc < 2)
		return 2;
	stoke = argv[1];
	snprintf(tmpdir, sizeof(tmpdir), "%s/stoke-cli-verbs-XXXXXX", tmp ? tmp : "/tmp");
	if (!mkdtemp(tmpdir))
		return 2;
	snprintf(url, sizeof(url), "http://127.0.0.1:%d", loop_start(fake_daemon));
	setenv("STOKE_URL", url, 1);
	setenv("STOKE_TOKEN", "sekrit", 1);
	test_admin_verbs();
	test_deploy();
	test_advise();
	test_usage();
	test_bench();
	test_invoke();
	test_usage_and_reach();
	test_help_anywhere();
	test_options_before_verb();
	test_help_layout();
	test_help_exits();
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd))
		fprintf(stderr, "could not remove %s\n", tmpdir);
	return check_done("test_verbs");
}
