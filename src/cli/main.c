/* `stoke VERB ...`: finds the verb and hands it the rest of the command line. */
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

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
	"\nDaemon options:\n"
	"  --url URL         the daemon (default: $STOKE_URL, else http://127.0.0.1:8080)\n"
	"  --token T         API token (default: $STOKE_TOKEN, else DATA_DIR/token)\n"
	"  --data-dir DIR    where to find the token (default: $STOKE_DATA_DIR, else\n"
	"                    $XDG_DATA_HOME/stoke or ~/.local/share/stoke)\n"
	"  --timeout S       give up after S seconds of silence (default 120)\n"
	"  --json            machine-readable output\n";

static const char cli_exit_help[] =
	"\nExit status: 0 success, 1 the daemon or function answered an error,\n"
	"2 usage error or unusable local input (a missing PATH, a bad stoke.json),\n"
	"3 the daemon could not be reached or did not answer.\n";

void cli_help(const struct cli_verb *verb, FILE *out)
{
	fprintf(out, "Usage: stoke %s %s\n\n%s\n", verb->name, verb->args, verb->summary);
	if (verb->options && *verb->options)
		fprintf(out, "\nOptions:\n%s", verb->options);
	fprintf(out, "  -h, --help        show this help\n");
	if (verb->client)
		fputs(cli_client_help, out);
	fputs(cli_exit_help, out);
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

	fprintf(out, "Usage: stoke VERB [OPTIONS] [ARGS]\n\n"
		"Runs and manages serverless functions.\n\nVerbs:\n");
	for (i = 0; i < CLI_NVERBS; i++)
		fprintf(out, "  %-8s %s\n", cli_verbs[i]->name, cli_verbs[i]->summary);
	fprintf(out, "  %-8s %s\n", "help", "Show the help of a verb.");
	fprintf(out, "\nRun 'stoke VERB --help' for a verb's options. "
		"'stoke --version' prints the version.\n");
	fputs(cli_exit_help, out);
}

static const struct cli_verb *cli_find(const char *name)
{
	size_t i;

	for (i = 0; i < CLI_NVERBS; i++)
		if (!strcmp(cli_verbs[i]->name, name))
			return cli_verbs[i];
	return NULL;
}

static int cli_unknown(const char *name)
{
	fprintf(stderr, "stoke: unknown verb '%s'\nTry 'stoke --help'.\n", name);
	return CLI_EXIT_USAGE;
}

/* `stoke help [VERB]` */
static int cli_help_verb(int argc, char **argv)
{
	const struct cli_verb *verb;

	if (argc < 3 || !strcmp(argv[2], "help") || !strcmp(argv[2], "--help") ||
	    !strcmp(argv[2], "-h")) {
		cli_main_help(stdout);
		return CLI_EXIT_OK;
	}
	verb = cli_find(argv[2]);
	if (!verb)
		return cli_unknown(argv[2]);
	cli_help(verb, stdout);
	return CLI_EXIT_OK;
}

int main(int argc, char **argv)
{
	const struct cli_verb *verb;
	const char *name = argc > 1 ? argv[1] : NULL;

	if (!name) {
		cli_main_help(stderr);
		return CLI_EXIT_USAGE;
	}
	if (!strcmp(name, "--help") || !strcmp(name, "-h"))
		return cli_help_verb(1, argv);
	if (!strcmp(name, "help"))
		return cli_help_verb(argc, argv);
	if (!strcmp(name, "--version") || !strcmp(name, "-V")) {
		printf("stoke %s\n", STOKE_VERSION);
		return CLI_EXIT_OK;
	}
	verb = cli_find(name);
	if (!verb)
		return cli_unknown(name);
	return verb->run(argc - 1, argv + 1);
}
