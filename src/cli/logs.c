/* `stoke logs NAME`: a function's captured output, optionally followed as it grows. */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client.h"
#include "output.h"

#define CLI_LOGS_POLL_MS 500

struct cli_logs {
	const char *name;
	int follow;
	long limit;		/* 0: the daemon's page size (100) */
	double since;		/* the daemon's "next" cursor */
};

static volatile sig_atomic_t cli_logs_stop;

static void cli_logs_on_signal(int sig)
{
	cli_logs_stop = 1;
}

/* Ctrl-C ends -f quietly with status 0; no SA_RESTART, so a pending read or sleep
 * returns at once. */
static void cli_logs_catch_signals(void)
{
	struct sigaction sa = { .sa_handler = cli_logs_on_signal };

	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

static void cli_logs_print(const cJSON *line, int json)
{
	char *text;

	if (json) {
		text = cJSON_PrintUnformatted(line);
		if (text)
			puts(text);
		free(text);
		return;
	}
	printf("%s %s %s %s\n", cli_out_str(line, "ts", "-"),
	       cli_out_str(line, "request_id", "-"), cli_out_str(line, "stream", "-"),
	       cli_out_str(line, "msg", ""));
}

/* Fetches and prints one page. Returns an exit code; *count tells how many lines came. */
static int cli_logs_page(struct cli_client *c, struct cli_logs *lg, int *count)
{
	struct strbuf target = STRBUF_INIT;
	const cJSON *line, *next;
	cJSON *doc = NULL;
	int code;

	sb_adds(&target, "/_stoke/functions/");
	cli_client_escape(&target, lg->name);
	sb_printf(&target, "/logs?since=%.0f", lg->since);
	if (lg->limit)
		sb_printf(&target, "&limit=%ld", lg->limit);
	*count = 0;
	code = cli_client_api(c, "GET", target.buf, NULL, &doc);
	sb_free(&target);
	if (code)
		return code;
	cJSON_ArrayForEach(line, cJSON_GetObjectItemCaseSensitive(doc, "lines")) {
		cli_logs_print(line, c->json);
		(*count)++;
	}
	next = cJSON_GetObjectItemCaseSensitive(doc, "next");
	/* A cursor that does not move would make us print the same page forever. */
	if (cJSON_IsNumber(next) && next->valuedouble > lg->since)
		lg->since = next->valuedouble;
	else
		*count = 0;
	cJSON_Delete(doc);
	fflush(stdout);
	return CLI_EXIT_OK;
}

static void cli_logs_sleep(void)
{
	struct timespec ts = { .tv_nsec = CLI_LOGS_POLL_MS * 1000000L };

	nanosleep(&ts, NULL);
}

/* Without -n, pages until the daemon has nothing more; -f then keeps polling. */
static int cli_logs_loop(struct cli_client *c, struct cli_logs *lg)
{
	int code, count;

	for (;;) {
		code = cli_logs_page(c, lg, &count);
		if (cli_logs_stop)
			return CLI_EXIT_OK;
		if (code)
			return code;
		if (!lg->follow && (lg->limit || !count))
			return CLI_EXIT_OK;
		if (!count)
			cli_logs_sleep();
		if (cli_logs_stop)
			return CLI_EXIT_OK;
	}
}

static const struct option cli_logs_opts[] = {
	CLI_CLIENT_OPTIONS,
	{ "follow", no_argument, NULL, 'f' },
	{ "lines", required_argument, NULL, 'n' },
	{ 0 },
};

static int cli_logs_args(struct cli_client *c, int argc, char **argv, struct cli_logs *lg,
			 int *code)
{
	char *end;
	int opt;

	while ((opt = cli_client_getopt(c, argc, argv, code)) >= 0) {
		if (opt == 'f')
			lg->follow = 1;
		if (opt != 'n')
			continue;
		errno = 0;
		lg->limit = strtol(optarg, &end, 10);
		if (errno || *end || end == optarg || lg->limit < 1) {
			*code = cli_usage(c->verb, "-n wants a positive number, got '%s'", optarg);
			return -1;
		}
	}
	if (opt == -2)
		return -1;
	if (argc - optind != 1) {
		*code = cli_usage(c->verb, "wants exactly one function name");
		return -1;
	}
	lg->name = argv[optind];
	return 0;
}

static int cli_logs_run(int argc, char **argv)
{
	struct cli_logs lg = { 0 };
	struct cli_client c;
	int code = 0;

	cli_client_init(&c, &cli_verb_logs);
	if (cli_logs_args(&c, argc, argv, &lg, &code))
		return code;
	code = cli_client_open(&c);
	if (!code && lg.follow)
		cli_logs_catch_signals();
	if (!code)
		code = cli_logs_loop(&c, &lg);
	cli_client_close(&c);
	return code;
}

const struct cli_verb cli_verb_logs = {
	.name = "logs",
	.args = "NAME [-f] [-n N] [OPTIONS]",
	.summary = "Print a function's log lines: time, request id, stream, message.",
	.options =
		"  -f, --follow        keep polling for new lines (every 500 ms) until Ctrl-C\n"
		"  -n, --lines N       start with the last N lines (default: the daemon's, 100)\n",
	.notes = "With --json, one JSON object per line.\n",
	.client = 1,
	.longopts = cli_logs_opts,
	.shortopts = ":hfn:",
	.run = cli_logs_run,
};
