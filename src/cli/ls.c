/* `stoke ls`: the deployed functions as a table. */
#include "client.h"
#include "output.h"

static const char *const cli_ls_keys[] = {
	"name", "version", "tier", "runtime", "entry", "deployed_at",
};
static const char *const cli_ls_titles[] = {
	"NAME", "VERSION", "TIER", "RUNTIME", "ENTRY", "DEPLOYED",
};
#define CLI_LS_COLS 6

/* Returns 0, or an exit code after saying why nothing was printed. */
static int cli_ls_table(const cJSON *fns)
{
	struct cli_out_table t;
	const cJSON *fn;
	char buf[256];
	int i, ret;

	if (!cJSON_GetArraySize(fns)) {
		printf("no functions deployed\n");
		return CLI_EXIT_OK;
	}
	cli_out_table_init(&t, CLI_LS_COLS, "llllll");
	for (i = 0; i < CLI_LS_COLS; i++)
		cli_out_table_add(&t, "%s", cli_ls_titles[i]);
	cJSON_ArrayForEach(fn, fns) {
		/* A version the daemon could not load at start: `stoke show` says why. */
		int failed = cJSON_IsString(cJSON_GetObjectItemCaseSensitive(fn, "status"));

		for (i = 0; i < CLI_LS_COLS; i++) {
			const cJSON *item = cJSON_GetObjectItemCaseSensitive(fn, cli_ls_keys[i]);

			if (failed && i == 2)
				cli_out_table_add(&t, "%s", "LOAD FAILED");
			else
				cli_out_table_add(&t, "%s", i == CLI_LS_COLS - 1 ?
						  cli_out_time(item, buf, sizeof(buf)) :
						  cli_out_scalar(item, buf, sizeof(buf)));
		}
	}
	ret = cli_out_table_print(&t);
	cli_out_table_free(&t);
	if (!ret)
		return CLI_EXIT_OK;
	fprintf(stderr, "stoke: out of memory printing the table\n");
	return CLI_EXIT_USAGE;
}

static int cli_ls_run(int argc, char **argv)
{
	struct cli_client c;
	cJSON *doc = NULL;
	int code = cli_client_get_call(&c, &cli_verb_ls, argc, argv, "/_stoke/functions", &doc);

	if (!code && c.json)
		cli_out_json(doc);
	else if (!code)
		code = cli_ls_table(cJSON_GetObjectItemCaseSensitive(doc, "functions"));
	cJSON_Delete(doc);
	cli_client_close(&c);
	return code;
}

const struct cli_verb cli_verb_ls = {
	.name = "ls",
	.args = "[OPTIONS]",
	.summary = "List the deployed functions.",
	.client = 1,
	.longopts = cli_client_opts,
	.shortopts = ":h",
	.run = cli_ls_run,
};
