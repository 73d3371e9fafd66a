/* `stoke rm NAME`: deletes a function, all its versions and its logs. */
#include "client.h"
#include "output.h"

static int cli_rm_run(int argc, char **argv)
{
	struct cli_client c;
	cJSON *doc = NULL;
	int code = cli_client_fn_call(&c, &cli_verb_rm, argc, argv, "DELETE", &doc);

	if (!code && c.json)
		cli_out_json(doc);
	else if (!code)
		printf("deleted %s\n", cli_out_str(doc, "deleted", argv[optind]));
	cJSON_Delete(doc);
	cli_client_close(&c);
	return code;
}

const struct cli_verb cli_verb_rm = {
	.name = "rm",
	.args = "NAME [OPTIONS]",
	.summary = "Delete a deployed function.",
	.client = 1,
	.longopts = cli_client_opts,
	.shortopts = ":h",
	.run = cli_rm_run,
};
