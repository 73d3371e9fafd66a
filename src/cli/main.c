/* `stoke [OPTIONS] VERB ...`: finds the verb and hands it the rest of the command line,
 * with the options given before the verb moved after it. */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "common/typo.h"

#ifndef STOKE_VERSION
#define STOKE_VERSION "unknown"
#endif

static const struct cli_verb *const cli_verbs[] = {
	&cli_verb_serve, &cli_verb_deploy, &cli_verb_advise, &cli_verb_invoke, &cli_verb_ls,
	&cli_verb_show, &cli_verb_rm, &cli_verb_logs, &cli_verb_status, &cli_verb_usage,
	&cli_verb_bench, &cli_verb_gc,
};

#define CLI_NVERBS (sizeof(cli_verbs) / sizeof(cli_verbs[0]))

static const char cli_client_help[] =
	"\nDaemon options (also accepted before the verb):\n"
	"  --url URL           the daemon (default: $STOKE_URL, else http://127.0.0.1:8080)\n"
	"  --token T           API token (default: $STOKE_TOKEN, else DATA_DIR/token)\n"
	"  --data-dir DIR      where to find the token (default: $STOKE_DATA_DIR, else\n"
	"                      $XDG_DATA_HOME/stoke or ~/.local/share/stoke)\n"
	"  --timeout S         give up after S seconds of silence (default 120)\n"
	"  --json              machine-readable output\n";

static const char cli_exit_help[] =
	"\nExit status: 0 success, 1 the daemon or function answered an error,\n"
	"2 usage error or unusable local input (a missing PATH; a stoke.json, name or\n"
	"entry file that stoke or the daemon refuses), 3 the daemon could not be reached\n"
	"or did not answer.\n";

void cli_help(const struct cli_verb *verb, FILE *out)
{
	fprintf(out, "Usage: stoke %s %s\n\n%s\n", verb->name, verb->args, verb->summary);
	fprintf(out, "\nOptions:\n%s", verb->options ? verb->options : "");
	fprintf(out, "  -h, --help          show this help\n");
	if (verb->notes)
		fprintf(out, "\n%s", verb->notes);
	if (verb->client)
		fputs(cli_client_help, out);
	fputs(verb->exits ? verb->exits : cli_exit_help, out);
}

int cli_usage(const struct cli_verb *verb, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "stoke %s: ", verb->name);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'stoke %s --help'.\n", verb->name);
	return CLI_EXIT_USAGE;
}

int cli_bad_option(const struct cli_verb *verb, int c, char **argv)
{
	const char *arg = argv[optind - 1];

	if (c == ':')
		return cli_usage(verb, "option '%s' needs a value", arg);
	if (optopt && optopt < 0x100)
		return cli_usage(verb, "unknown option '-%c'", optopt);
	return cli_usage(verb, "unknown option '%s'", arg);
}

static void cli_main_help(FILE *out)
{
	size_t i;

	fprintf(out, "Usage: stoke [OPTIONS] VERB [OPTIONS] [ARGS]\n\n"
		"Runs and manages serverless functions.\n\nVerbs:\n");
	for (i = 0; i < CLI_NVERBS; i++)
		fprintf(out, "  %-8s %s\n", cli_verbs[i]->name, cli_verbs[i]->summary);
	fprintf(out, "  %-8s %s\n", "help", "Show the help of a verb.");
	fprintf(out, "\nOptions before the verb apply to it as if written after it:\n"
		"  --url URL, --token T, --data-dir DIR, --timeout S, --json\n"
		"                      (see a verb's --help; serve takes --data-dir only)\n"
		"  -h, --help          show this help, or the verb's when one follows\n"
		"  -V, --version       print the version\n"
		"\nRun 'stoke VERB --help' for a verb's options.\n");
	fputs(cli_exit_help, out);
	fputs("(serve and bench exit differently: see their --help)\n", out);
}

static const struct cli_verb *cli_find(const char *name)
{
	size_t i;

	for (i = 0; i < CLI_NVERBS; i++)
		if (!strcmp(cli_verbs[i]->name, name))
			return cli_verbs[i];
	return NULL;
}

/* A mistyped verb gets the one it was probably meant to be (deploi: deploy). */
static int cli_unknown(const char *name)
{
	const char *words[CLI_NVERBS + 2], *close;
	size_t i;

	for (i = 0; i < CLI_NVERBS; i++)
		words[i] = cli_verbs[i]->name;
	words[i++] = "help";
	words[i] = NULL;
	close = typo_closest(name, words);
	fprintf(stderr, "stoke: unknown verb '%s'", name);
	if (close)
		fprintf(stderr, " (did you mean %s?)", close);
	fprintf(stderr, "\nTry 'stoke --help'.\n");
	return CLI_EXIT_USAGE;
}

/* `stoke help [VERB]` */
static int cli_help_verb(const char *name)
{
	const struct cli_verb *verb;

	if (!name || !strcmp(name, "help") || !strcmp(name, "--help") || !strcmp(name, "-h")) {
		cli_main_help(stdout);
		return CLI_EXIT_OK;
	}
	verb = cli_find(name);
	if (!verb)
		return cli_unknown(name);
	cli_help(verb, stdout);
	return CLI_EXIT_OK;
}

enum { CLI_GLOBAL_HELP = 'h', CLI_GLOBAL_VERSION = 'V' };

/* What may come before the verb: the daemon options every client verb shares. */
static const struct option cli_global_opts[] = {
	CLI_CLIENT_OPTIONS,
	{ "version", no_argument, NULL, CLI_GLOBAL_VERSION },
	{ 0 },
};

/*
 * Parses the options before the verb. Returns the index of the verb in argv, or -1
 * with *code set when stoke is done (help, version, a usage error). *help tells that
 * --help came before a verb, which then shows that verb's help.
 */
static int cli_global_args(int argc, char **argv, int *help, int *code)
{
	int opt;

	opterr = 0;
	while ((opt = getopt_long(argc, argv, "+:hV", cli_global_opts, NULL)) != -1) {
		if (opt == CLI_GLOBAL_HELP) {
			*help = 1;
		} else if (opt == CLI_GLOBAL_VERSION) {
			printf("stoke %s\n", STOKE_VERSION);
			*code = CLI_EXIT_OK;
			return -1;
		} else if (opt == '?' || opt == ':') {
			fprintf(stderr, opt == ':' ? "stoke: option '%s' needs a value\n" :
				"stoke: unknown option '%s' before the verb\n", argv[optind - 1]);
			fprintf(stderr, "Try 'stoke --help'.\n");
			*code = CLI_EXIT_USAGE;
			return -1;
		}
	}
	if (optind < argc)
		return optind;
	if (*help || argc < 2) {
		cli_main_help(*help ? stdout : stderr);
		*code = *help ? CLI_EXIT_OK : CLI_EXIT_USAGE;
	} else {
		fprintf(stderr, "stoke: options but no verb\nTry 'stoke --help'.\n");
		*code = CLI_EXIT_USAGE;
	}
	return -1;
}

/* Whether the verb's own table knows the long option that argument a spells (getopt
 * takes unambiguous abbreviations, so a prefix counts). */
static int cli_verb_takes(const struct cli_verb *verb, const char *a)
{
	const struct option *o;
	size_t len = strcspn(a + 2, "=");

	for (o = verb->longopts; o->name; o++)
		if (!strncmp(o->name, a + 2, len))
			return 1;
	return 0;
}

/* Whether the long option a ("--url" or "--url=X") takes its value from the next
 * argument. */
static int cli_global_takes_next(const char *a)
{
	const struct option *o;

	if (strchr(a, '='))
		return 0;
	for (o = cli_global_opts; o->name; o++)
		if (!strncmp(o->name, a + 2, strlen(a + 2)))
			return o->has_arg == required_argument;
	return 0;
}

/* The options before the verb must be ones the verb takes (serve takes no --url). */
static int cli_check_moved(const struct cli_verb *verb, char **argv, int nmoved)
{
	int i;

	for (i = 0; i < nmoved; i++) {
		if (strncmp(argv[i], "--", 2))
			continue;
		if (cli_verb_takes(verb, argv[i])) {
			i += cli_global_takes_next(argv[i]);
			continue;
		}
		fprintf(stderr, "stoke: option '%s' does not apply to '%s'\n"
			"Try 'stoke %s --help'.\n", argv[i], verb->name, verb->name);
		return CLI_EXIT_USAGE;
	}
	return CLI_EXIT_OK;
}

/*
 * --help anywhere among a verb's arguments shows its help and does nothing else, even
 * after a bad option. The verb's own table tells option values from options, so
 * `invoke f -d --help` still sends the body "--help". The scan runs on a copy: getopt
 * moves the arguments it skips behind the options, and after `logs f -n` (a value
 * missing at the end) the verb's own parse would then read `-n f`.
 */
static int cli_wants_help(const struct cli_verb *verb, int argc, char **argv)
{
	char **scan = calloc((size_t)argc + 1, sizeof(*scan));
	int opt, help = 0;

	if (!scan)
		return 0;
	memcpy(scan, argv, (size_t)argc * sizeof(*scan));
	opterr = 0;
	optind = 0;
	while ((opt = getopt_long(argc, scan, verb->shortopts, verb->longopts, NULL)) != -1)
		if (opt == 'h')
			help = 1;
	optind = 0;	/* the verb parses again from the start */
	free(scan);
	return help;
}

/* argv for the verb: its name, the options that came before it, then its own. */
static char **cli_verb_argv(int argc, char **argv, int at)
{
	char **out = calloc((size_t)argc + 1, sizeof(*out));
	int n = 0, i;

	if (!out)
		return NULL;
	out[n++] = argv[at];
	for (i = 1; i < at; i++)
		out[n++] = argv[i];
	for (i = at + 1; i < argc; i++)
		out[n++] = argv[i];
	return out;
}

static int cli_run_verb(const struct cli_verb *verb, int argc, char **argv, int at,
			int help)
{
	char **vargv;
	int code;

	code = cli_check_moved(verb, argv + 1, at - 1);
	if (code)
		return code;
	vargv = cli_verb_argv(argc, argv, at);
	if (!vargv) {
		fprintf(stderr, "stoke: out of memory\n");
		return CLI_EXIT_USAGE;
	}
	argc--;		/* the same arguments, less the program name */
	if (help || cli_wants_help(verb, argc, vargv)) {
		cli_help(verb, stdout);
		code = CLI_EXIT_OK;
	} else {
		code = verb->run(argc, vargv);
	}
	free(vargv);
	return code;
}

int main(int argc, char **argv)
{
	const struct cli_verb *verb;
	int at, help = 0, code = 0;

	at = cli_global_args(argc, argv, &help, &code);
	if (at < 0)
		return code;
	if (!strcmp(argv[at], "help"))
		return cli_help_verb(at + 1 < argc ? argv[at + 1] : NULL);
	verb = cli_find(argv[at]);
	if (!verb)
		return cli_unknown(argv[at]);
	return cli_run_verb(verb, argc, argv, at, help);
}
