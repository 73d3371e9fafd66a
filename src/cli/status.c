/* `stoke status`: what the daemon reports about itself. */
#include "client.h"
#include "output.h"

/* Uptime as 0d01h02m03s instead of the raw uptime_s: seconds alone are hard to read. */
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

/* A daemon that refuses function requests says so first: health is still "ok". */
static void cli_status_accepting(const cJSON *doc)
{
	const cJSON *accepting = cJSON_GetObjectItemCaseSensitive(doc, "accepting");
	char avail[32], floor[32];

	if (!cJSON_IsFalse(accepting))
		return;
	cli_out_scalar(cJSON_GetObjectItemCaseSensitive(doc, "mem_available_mb"), avail,
		       sizeof(avail));
	cli_out_scalar(cJSON_GetObjectItemCaseSensitive(doc, "min_free_mb"), floor,
		       sizeof(floor));
	printf("NOT ACCEPTING function requests (%s): the host has %s MiB available, under "
	       "the %s MiB floor (STOKE_MIN_FREE_MB); they get 503\n",
	       cli_out_str(doc, "reason", "?"), avail, floor);
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
		cli_status_accepting(doc);
		cli_status_uptime(doc);
		cJSON_DeleteItemFromObjectCaseSensitive(doc, "uptime_s");	/* shown above */
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
