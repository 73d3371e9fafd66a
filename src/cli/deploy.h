/* What `stoke deploy` and `stoke advise` share: the same options and PATH, the same
 * request body, sent to a different place. */
#ifndef STOKE_CLI_DEPLOY_H
#define STOKE_CLI_DEPLOY_H

#include "client.h"
#include "manifest.h"

#define CLI_DEPLOY_OPTIONS						\
	"  --name N            function name (default: stoke.json's, else the directory's\n" \
	"                      or file's name, lower-cased, without extension)\n"	\
	"  --tier T            auto, isolate or vm (overrides stoke.json)\n"		\
	"  --runtime R         e.g. js or python3 (overrides stoke.json)\n"

/* The options of deploy and advise. */
extern const struct option cli_deploy_opts[];

/* Called with the daemon's 2xx answer and the function's name as sent. */
typedef void cli_deploy_print_fn(const struct cli_client *c, const cJSON *doc,
				 const char *name);

/* Parses the options (the daemon's and --name, --tier, --runtime) and the one PATH into
 * mo. Returns 0, or -1 with *code the exit code (help printed, or a usage error). */
int cli_deploy_args(struct cli_client *c, int argc, char **argv,
		    struct cli_manifest_opts *mo, int *code);

/* Builds the body from mo and sends it as method to /_stoke/functions/NAME followed by
 * suffix (e.g. "/advise"); prints a 2xx answer with print. Returns the exit code. */
int cli_deploy_send(struct cli_client *c, const struct cli_manifest_opts *mo,
		    const char *method, const char *suffix, cli_deploy_print_fn *print);

#endif
