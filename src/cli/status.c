/* `stoke status`: what the daemon reports about itself. */
#include "client.h"
#include "output.h"

/* Adds uptime as 0d01h02m03s above the raw uptime_s: seconds alone are hard to read. */
static void cli_status_uptime(const cJSON *doc)
{
	const cJSON *up = cJSON_GetObjectItemCaseSensitive(doc, "uptime_s");
	long s;

	if (!cJSON_IsNumber(up))
		return;
	s = (long)up->valuedouble;
	printf("uptime: %ldd%02ldh%02ldm%02lds\n", s / 86400, s / 3600 % 24, s / 60 % 60,
	       s % 60);
}

static int cli_status_run(int argc, char **argv)
{
	struct cli_client c;
	cJSON *doc = NULL;
	int code = cli_client_get_call(&c, &cli_verb_status, argc, argv, "/_stoke/status", &doc);

	if (!code && c.json) {
		cli_out_json(doc);
	} else if (!code) {
		printf("daemon: %s\n", c.url_text);
		cli_status_uptime(doc);
		cli_out_fields(doc, 0);
	}
	cJSON_Delete(doc);
	cli_client_close(&c);
	return code;
}

const struct cli_verb cli_verb_status = {
	.name = "status",
	.args = "[OPTIONS]",
	.summary = "Show the daemon's state: version, uptime, functions, requests.",
	.client = 1,
	.longopts = cli_client_opts,
	.shortopts = ":h",
	.run = cli_status_run,
};
