/* `stoke advise PATH`: which tier and runtime a deploy of PATH would get, and why,
 * without deploying it. */
#include "deploy.h"
#include "output.h"

static void cli_advise_print(const struct cli_client *c, const cJSON *doc, const char *name)
{
	const cJSON *reason;

	if (c->json) {
		cli_out_json(doc);
		return;
	}
	printf("tier: %s\n", cli_out_str(doc, "tier", "?"));
	printf("runtime: %s\n", cli_out_str(doc, "runtime", "?"));
	printf("entry: %s\n", cli_out_str(doc, "entry", "?"));
	cJSON_ArrayForEach(reason, cJSON_GetObjectItemCaseSensitive(doc, "reasons"))
		if (cJSON_IsString(reason))
			printf("  - %s\n", reason->valuestring);
}

static int cli_advise_run(int argc, char **argv)
{
	struct cli_manifest_opts mo = { 0 };
	struct cli_client c;
	int code = 0;

	cli_client_init(&c, &cli_verb_advise);
	c.name_flag = "--name";
	if (cli_deploy_args(&c, argc, argv, &mo, &code))
		return code;
	code = cli_client_open(&c);
	if (!code)
		code = cli_deploy_send(&c, &mo, "POST", "/advise", cli_advise_print);
	cli_client_close(&c);
	return code;
}

const struct cli_verb cli_verb_advise = {
	.name = "advise",
	.args = "PATH [OPTIONS]",
	.summary = "Show the tier and runtime a deploy of PATH would get, and why.",
	.options = CLI_DEPLOY_OPTIONS,
	.client = 1,
	.longopts = cli_deploy_opts,
	.shortopts = ":h",
	.run = cli_advise_run,
};
