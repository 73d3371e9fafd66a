/*
 * The `stoke` command: one file per verb, each a struct cli_verb that main.c dispatches
 * to. Verbs are the boundary: they print to stdout/stderr and turn errors into exit
 * codes; the modules below them (http, manifest, config...) only return errors.
 */
#ifndef STOKE_CLI_H
#define STOKE_CLI_H

#include <getopt.h>
#include <stdio.h>

enum cli_exit {
	CLI_EXIT_OK = 0,
	CLI_EXIT_REMOTE = 1,		/* the daemon or the function answered an error */
	CLI_EXIT_USAGE = 2,		/* bad arguments or unusable local input */
	CLI_EXIT_UNREACHABLE = 3,	/* no (complete) answer from the daemon */
};

struct cli_verb {
	const char *name;
	const char *args;		/* synopsis after the verb, e.g. "NAME [-f] [-n N]" */
	const char *summary;		/* one line for `stoke --help` */
	const char *options;		/* option lines for `stoke VERB --help` */
	const char *notes;		/* a paragraph after the options, or NULL */
	/* The "Exit status:" paragraph of its help; NULL for a client verb's (0 ok, 1 the
	 * daemon or function answered an error, 2 usage, 3 no daemon). */
	const char *exits;
	int client;			/* talks to a daemon, so takes --url, --token... */
	/* The verb's getopt_long tables; they include --help/-h, which main handles
	 * before run is called, wherever it appears. */
	const struct option *longopts;
	const char *shortopts;
	/* argv[0] is the verb's name; getopt starts afresh (optind is 0). */
	int (*run)(int argc, char **argv);
};

extern const struct cli_verb cli_verb_serve, cli_verb_deploy, cli_verb_invoke,
	cli_verb_ls, cli_verb_rm, cli_verb_logs, cli_verb_status, cli_verb_show,
	cli_verb_usage, cli_verb_advise, cli_verb_bench, cli_verb_gc;

/* Prints the verb's full help to out. */
void cli_help(const struct cli_verb *verb, FILE *out);

/* Prints "stoke VERB: <message>" and a pointer to --help; returns CLI_EXIT_USAGE. */
int cli_usage(const struct cli_verb *verb, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Reports what getopt_long returned as '?' or ':' (opterr is off, the optstring
 * starts with ':'); returns CLI_EXIT_USAGE. */
int cli_bad_option(const struct cli_verb *verb, int c, char **argv);

#endif
