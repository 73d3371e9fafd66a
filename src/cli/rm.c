/* `stoke rm NAME`: deletes a function, all its versions and its logs. */
#include "client.h"
#include "output.h"

static int cli_rm_run(int argc, char **argv)
{
	static const struct option opts[] = { CLI_CLIENT_OPTIONS, { 0 } };
	struct strbuf target = STRBUF_INIT;
	struct cli_client c;
	cJSON *doc = NULL;
	int code = 0;

	cli_client_init(&c, &cli_verb_rm);
	if (cli_client_getopt(&c, argc, argv, ":h", opts, &code) == -2)
		return code;
	if (argc - optind != 1)
		return cli_usage(c.verb, "wants exactly one function name");
	code = cli_client_open(&c);
	sb_adds(&target, "/_stoke/functions/");
	cli_client_escape(&target, argv[optind]);
	if (!code)
		code = cli_client_api(&c, "DELETE", target.buf, NULL, &doc);
	if (!code && c.json)
		cli_out_json(doc);
	else if (!code)
		printf("deleted %s\n", cli_out_str(doc, "deleted", argv[optind]));
	cJSON_Delete(doc);
	sb_free(&target);
	cli_client_close(&c);
	return code;
}

const struct cli_verb cli_verb_rm = {
	.name = "rm",
	.args = "NAME [OPTIONS]",
	.summary = "Delete a deployed function.",
	.client = 1,
	.run = cli_rm_run,
};
