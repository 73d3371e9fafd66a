/* What every verb but serve shares: the daemon options, the request and the error
 * reporting that maps failures onto exit codes. */
#ifndef STOKE_CLI_CLIENT_H
#define STOKE_CLI_CLIENT_H

#include <getopt.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "common/strbuf.h"
#include "config.h"
#include "http.h"
#include "url.h"

enum {
	CLI_OPT_URL = 0x100,
	CLI_OPT_TOKEN,
	CLI_OPT_DATA_DIR,
	CLI_OPT_JSON,
	CLI_OPT_TIMEOUT,
	CLI_OPT_VERB_BASE,	/* verbs number their own long-only options from here */
};

#define CLI_CLIENT_OPTIONS						\
	{ "url", required_argument, NULL, CLI_OPT_URL },		\
	{ "token", required_argument, NULL, CLI_OPT_TOKEN },		\
	{ "data-dir", required_argument, NULL, CLI_OPT_DATA_DIR },	\
	{ "json", no_argument, NULL, CLI_OPT_JSON },			\
	{ "timeout", required_argument, NULL, CLI_OPT_TIMEOUT },	\
	{ "help", no_argument, NULL, 'h' }

/* CLI_CLIENT_OPTIONS alone: the table of verbs that take no options of their own. */
extern const struct option cli_client_opts[];

struct cli_client {
	const struct cli_verb *verb;
	const char *url_flag, *token_flag, *data_dir_flag;
	int json;
	int timeout_ms;
	int anonymous;		/* never send the token: functions are user code */
	const char *name_flag;	/* the option that names the function (deploy: --name) */
	int name_in_file;	/* stoke.json named it: a name hint points there */
	const char *url_text;	/* the daemon URL as configured, for messages */
	struct cli_url url;
	char *token;
	struct cli_token_source token_source;	/* said when the daemon answers 401 */
};

void cli_client_init(struct cli_client *c, const struct cli_verb *verb);

/* Handles the options in CLI_CLIENT_OPTIONS. Returns 1 if opt was one of them, 0 if it
 * is the verb's own, -1 if the verb must stop now with *exit_code (the value was bad
 * and the reason printed). */
int cli_client_option(struct cli_client *c, int opt, const char *arg, int *exit_code);

/* getopt_long over the verb's tables that handles the daemon options itself (longopts
 * must include CLI_CLIENT_OPTIONS, shortopts start with ':'). Returns the verb's next
 * option, -1 after the last, or -2 when the verb must return *exit_code now. */
int cli_client_getopt(struct cli_client *c, int argc, char **argv, int *exit_code);

/*
 * Reports an error: "stoke: MESSAGE (field: F)" and a hint on stderr, and with --json
 * the object itself on stdout, on one line, so a script reading stdout always gets
 * JSON.
 * doc is {"error": kind, "message": text} with optional "field", "suggestion" and
 * "status" (the daemon's HTTP status, for errors the daemon answered).
 */
void cli_client_error(const struct cli_client *c, const cJSON *doc);

/* cli_client_error with {"error": kind, "message": the formatted text}. */
void cli_client_fail(const struct cli_client *c, const char *kind, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Resolves URL and token. Returns 0 or an exit code after printing why. */
int cli_client_open(struct cli_client *c);

/* Sends req; on a transport failure prints why and returns CLI_EXIT_UNREACHABLE. The
 * response may carry any status. */
int cli_client_send(struct cli_client *c, struct cli_http_req *req, struct cli_http_resp *resp);

/* Calls the management API (/_stoke/...): method, target, optional JSON body. On a 2xx
 * JSON answer stores it in *out and returns 0; otherwise prints the daemon's message and
 * returns the exit code. */
int cli_client_api(struct cli_client *c, const char *method, const char *target,
		   const struct strbuf *body, cJSON **out);

/* Appends s to sb percent-encoded as one path segment (a function name may be any
 * string the user typed; the daemon decides whether it is valid). */
void cli_client_escape(struct strbuf *sb, const char *s);

/* For verbs whose one argument is a function name (show, rm): parses the client options,
 * then calls METHOD /_stoke/functions/NAME. Returns the exit code; on 0, *out holds the
 * answer. The caller closes c. */
int cli_client_fn_call(struct cli_client *c, const struct cli_verb *verb, int argc,
		       char **argv, const char *method, cJSON **out);

/* The same for verbs without arguments (ls, status): GET target. */
int cli_client_get_call(struct cli_client *c, const struct cli_verb *verb, int argc,
			char **argv, const char *target, cJSON **out);
/* The same with another method (gc: POST), no body. */
int cli_client_call(struct cli_client *c, const struct cli_verb *verb, int argc, char **argv,
		    const char *method, const char *target, cJSON **out);

void cli_client_close(struct cli_client *c);

#endif
