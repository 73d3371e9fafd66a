/* `stoke bench`: runs the benchmark suites and writes their report, by handing over to
 * the source tree's bench/report (the suites need the tree: its build, its examples). */
#include <errno.h>
#include <limits.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "client.h"

enum { OPT_QUICK = CLI_OPT_VERB_BASE, OPT_OUT };

#define CLI_BENCH_REPORT "bench/report"

/* $STOKE_SRC/bench/report, else the tree the running binary was built in: the binary is
 * <tree>/<build>/src/cli/stoke. Returns 0, or -ENOENT with where it looked in path. */
static int cli_bench_find(char *path, size_t size)
{
	const char *src = getenv("STOKE_SRC");
	char exe[PATH_MAX];
	ssize_t n;

	if (src && *src) {
		snprintf(path, size, "%s/%s", src, CLI_BENCH_REPORT);
		return access(path, X_OK) ? -ENOENT : 0;
	}
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n < 0) {
		snprintf(path, size, "the build tree (/proc/self/exe: %s)", strerror(errno));
		return -ENOENT;
	}
	exe[n] = '\0';
	snprintf(path, size, "%s/../../../%s", dirname(exe), CLI_BENCH_REPORT);
	return access(path, X_OK) ? -ENOENT : 0;
}

static const struct option cli_bench_opts[] = {
	{ "quick", no_argument, NULL, OPT_QUICK },
	{ "out", required_argument, NULL, OPT_OUT },
	{ "help", no_argument, NULL, 'h' },
	{ 0 },
};

/* Returns an exit code to stop with (a usage error), or -1 to run the report. */
static int cli_bench_args(int argc, char **argv, int *quick, char **out)
{
	int opt;

	while ((opt = getopt_long(argc, argv, ":h", cli_bench_opts, NULL)) != -1) {
		if (opt == OPT_QUICK) {
			*quick = 1;
		} else if (opt == OPT_OUT) {
			*out = optarg;
		} else {
			return cli_bad_option(&cli_verb_bench, opt, argv);
		}
	}
	if (optind != argc)
		return cli_usage(&cli_verb_bench, "takes no arguments");
	return -1;
}

static int cli_bench_run(int argc, char **argv)
{
	char *args[5] = { NULL }, *out = NULL, path[PATH_MAX + 32];
	int quick = 0, n = 1, code;

	code = cli_bench_args(argc, argv, &quick, &out);
	if (code >= 0)
		return code;
	if (cli_bench_find(path, sizeof(path))) {
		fprintf(stderr, "stoke: no runnable %s at %s: set STOKE_SRC to the source tree\n",
			CLI_BENCH_REPORT, path);
		return CLI_EXIT_USAGE;
	}
	args[0] = path;
	if (quick)
		args[n++] = "--quick";
	if (out) {
		args[n++] = "--out";
		args[n++] = out;
	}
	fflush(stdout);
	execv(path, args);
	fprintf(stderr, "stoke: cannot run %s: %s\n", path, strerror(errno));
	return CLI_EXIT_USAGE;
}

const struct cli_verb cli_verb_bench = {
	.name = "bench",
	.args = "[OPTIONS]",
	.summary = "Run the benchmark suites and write bench/results/REPORT.md with plots.",
	.options =
		"  --quick             fewer samples and shorter runs (for a smoke test)\n"
		"  --out DIR           write REPORT.md and the plots into DIR\n"
		"                      (default: bench/results of the source tree)\n",
	.notes =
		"$STOKE_SRC names the source tree whose bench/report runs (default: the tree\n"
		"stoke was built in).\n",
	.exits =
		"\nExit status (bench/report's): 0 the report was written, 1 a suite that could\n"
		"run failed (the report is still written), 2 usage error, no runnable\n"
		"bench/report or nothing to report.\n",
	.longopts = cli_bench_opts,
	.shortopts = ":h",
	.run = cli_bench_run,
};
