/* `stoke show NAME`: one function's metadata. */
#include "client.h"
#include "output.h"

static int cli_show_run(int argc, char **argv)
{
	struct cli_client c;
	cJSON *doc = NULL;
	int code = cli_client_fn_call(&c, &cli_verb_show, argc, argv, "GET", &doc);

	if (!code && c.json)
		cli_out_json(doc);
	else if (!code)
		cli_out_fields(doc, 0);
	cJSON_Delete(doc);
	cli_client_close(&c);
	return code;
}

const struct cli_verb cli_verb_show = {
	.name = "show",
	.args = "NAME [OPTIONS]",
	.summary = "Show a deployed function.",
	.client = 1,
	.longopts = cli_client_opts,
	.shortopts = ":h",
	.run = cli_show_run,
};
