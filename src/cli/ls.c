/* `stoke ls`: the deployed functions as a table. */
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "output.h"

static const char *const cli_ls_keys[] = {
	"name", "version", "tier", "runtime", "entry", "deployed_at",
};
static const char *const cli_ls_titles[] = {
	"NAME", "VERSION", "TIER", "RUNTIME", "ENTRY", "DEPLOYED",
};
#define CLI_LS_COLS 6

/* One row; titles when fn is NULL. With widths NULL, prints; else only measures. */
static void cli_ls_row(const cJSON *fn, int *widths, const int *print_widths)
{
	char buf[256];
	int i, len;

	for (i = 0; i < CLI_LS_COLS; i++) {
		const cJSON *item = cJSON_GetObjectItemCaseSensitive(fn, cli_ls_keys[i]);
		const char *cell = !fn ? cli_ls_titles[i] :
				   i == CLI_LS_COLS - 1 ? cli_out_time(item, buf, sizeof(buf)) :
				   cli_out_scalar(item, buf, sizeof(buf));

		len = strlen(cell);
		if (widths && len > widths[i])
			widths[i] = len;
		if (print_widths && i < CLI_LS_COLS - 1)
			printf("%-*s  ", print_widths[i], cell);
		else if (print_widths)
			printf("%s\n", cell);
	}
}

static void cli_ls_table(const cJSON *fns)
{
	int widths[CLI_LS_COLS] = { 0 };
	const cJSON *fn;

	if (!cJSON_GetArraySize(fns)) {
		printf("no functions deployed\n");
		return;
	}
	cli_ls_row(NULL, widths, NULL);
	cJSON_ArrayForEach(fn, fns)
		cli_ls_row(fn, widths, NULL);
	cli_ls_row(NULL, NULL, widths);
	cJSON_ArrayForEach(fn, fns)
		cli_ls_row(fn, NULL, widths);
}

static int cli_ls_run(int argc, char **argv)
{
	static const struct option opts[] = { CLI_CLIENT_OPTIONS, { 0 } };
	struct cli_client c;
	cJSON *doc = NULL;
	int code = 0;

	cli_client_init(&c, &cli_verb_ls);
	if (cli_client_getopt(&c, argc, argv, ":h", opts, &code) == -2)
		return code;
	if (optind != argc)
		return cli_usage(c.verb, "takes no arguments");
	code = cli_client_open(&c);
	if (!code)
		code = cli_client_api(&c, "GET", "/_stoke/functions", NULL, &doc);
	if (!code && c.json)
		cli_out_json(doc);
	else if (!code)
		cli_ls_table(cJSON_GetObjectItemCaseSensitive(doc, "functions"));
	cJSON_Delete(doc);
	cli_client_close(&c);
	return code;
}

const struct cli_verb cli_verb_ls = {
	.name = "ls",
	.args = "[OPTIONS]",
	.summary = "List the deployed functions.",
	.client = 1,
	.run = cli_ls_run,
};
