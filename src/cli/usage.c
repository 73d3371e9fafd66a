/* `stoke usage [NAME]`: invocations, compute and what they would cost on AWS Lambda and
 * Cloudflare Workers, per function and tier. */
#include <time.h>

#include "client.h"
#include "output.h"
#include "since.h"

enum { OPT_SINCE = CLI_OPT_VERB_BASE };

struct cli_usage {
	const char *name;	/* NULL: every function */
	const char *since_text;
	long long since;	/* Unix seconds; -1 when --since was not given */
};

/* How the total row combines a column: sum, highest, or mean weighted by invocations. */
enum cli_usage_agg { CLI_USAGE_SUM, CLI_USAGE_MAX, CLI_USAGE_MEAN };

/* The numeric columns, in table order, and their formats. */
static const struct {
	const char *key, *title, *fmt;
	enum cli_usage_agg agg;
} cli_usage_nums[] = {
	{ "invocations", "INVOCATIONS", "%.0f", CLI_USAGE_SUM },
	{ "cold_starts", "COLD", "%.0f", CLI_USAGE_SUM },
	{ "errors", "ERRORS", "%.0f", CLI_USAGE_SUM },
	{ "gb_s", "GB-S", "%.6f", CLI_USAGE_SUM },
	{ "cpu_ms", "CPU-MS", "%.1f", CLI_USAGE_SUM },
	/* Memory high-water per invocation: isolate heap, or the VM's resident set. */
	{ "peak_memory_mb_max", "PEAK-MB", "%.1f", CLI_USAGE_MAX },
	{ "peak_memory_mb_avg", "AVG-PEAK-MB", "%.1f", CLI_USAGE_MEAN },
	/* A function's cost is often micro-dollars: enough places to see it. */
	{ "cost_lambda_usd", "AS LAMBDA", "$%.8f", CLI_USAGE_SUM },
	{ "cost_workers_usd", "AS WORKERS", "$%.8f", CLI_USAGE_SUM },
};
#define CLI_USAGE_NUMS (sizeof(cli_usage_nums) / sizeof(cli_usage_nums[0]))

static const struct option cli_usage_opts[] = {
	CLI_CLIENT_OPTIONS,
	{ "since", required_argument, NULL, OPT_SINCE },
	{ 0 },
};

static int cli_usage_args(struct cli_client *c, int argc, char **argv, struct cli_usage *u,
			  int *code)
{
	struct cli_err err = { 0 };
	int opt;

	u->since = -1;
	while ((opt = cli_client_getopt(c, argc, argv, code)) >= 0)
		if (opt == OPT_SINCE)
			u->since_text = optarg;
	if (opt == -2)
		return -1;
	if (argc - optind > 1) {
		*code = cli_usage(c->verb, "takes at most one function name");
		return -1;
	}
	u->name = optind < argc ? argv[optind] : NULL;
	if (u->since_text && cli_since_parse(u->since_text, time(NULL), &u->since, &err)) {
		*code = cli_usage(c->verb, "--since: %s", err.msg);
		return -1;
	}
	return 0;
}

static double cli_usage_num(const cJSON *obj, const char *key)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);

	return cJSON_IsNumber(item) ? item->valuedouble : 0;
}

/* Adds one row's value of column i into the totals. */
static void cli_usage_total(double *sums, size_t i, double v, double invocations)
{
	if (cli_usage_nums[i].agg == CLI_USAGE_MAX)
		sums[i] = v > sums[i] ? v : sums[i];
	else
		sums[i] += cli_usage_nums[i].agg == CLI_USAGE_MEAN ? v * invocations : v;
}

/* One row per function and tier, then the totals (costs as the daemon summed them). */
static void cli_usage_rows(struct cli_out_table *t, const cJSON *doc)
{
	double sums[CLI_USAGE_NUMS] = { 0 };
	const cJSON *row;
	size_t i;

	cli_out_table_add(t, "FUNCTION");
	cli_out_table_add(t, "TIER");
	for (i = 0; i < CLI_USAGE_NUMS; i++)
		cli_out_table_add(t, "%s", cli_usage_nums[i].title);
	cJSON_ArrayForEach(row, cJSON_GetObjectItemCaseSensitive(doc, "usage")) {
		cli_out_table_add(t, "%s", cli_out_str(row, "function", "?"));
		cli_out_table_add(t, "%s", cli_out_str(row, "tier", "?"));
		for (i = 0; i < CLI_USAGE_NUMS; i++) {
			cli_usage_total(sums, i, cli_usage_num(row, cli_usage_nums[i].key),
					cli_usage_num(row, "invocations"));
			cli_out_table_add(t, cli_usage_nums[i].fmt,
					  cli_usage_num(row, cli_usage_nums[i].key));
		}
	}
	for (i = 0; i < CLI_USAGE_NUMS; i++)
		if (cli_usage_nums[i].agg == CLI_USAGE_MEAN && sums[0] > 0)
			sums[i] /= sums[0];
	sums[CLI_USAGE_NUMS - 2] = cli_usage_num(doc, "cost_lambda_usd");
	sums[CLI_USAGE_NUMS - 1] = cli_usage_num(doc, "cost_workers_usd");
	cli_out_table_add(t, "total");
	cli_out_table_add(t, "%s", "");
	for (i = 0; i < CLI_USAGE_NUMS; i++)
		cli_out_table_add(t, cli_usage_nums[i].fmt, sums[i]);
}

/* One vendor's prices: "AWS Lambda as of 2025-01-01 ($0.2/M requests + ...)". */
static void cli_usage_price(const cJSON *prices, const char *vendor, const char *title,
			    const char *unit_key, const char *unit)
{
	const cJSON *p = cJSON_GetObjectItemCaseSensitive(prices, vendor);

	printf("%s as of %s ($%g/M requests + $%g/%s)", title, cli_out_str(p, "as_of", "?"),
	       cli_usage_num(p, "per_million_requests"), cli_usage_num(p, unit_key), unit);
}

/*
 * No usage for a name: a function deleted long ago, or a typo. Usage history outlives
 * deletions, so only the daemon knows which: ask it, and let its 404 (with "did you
 * mean") speak. The answer stays "nothing recorded" either way.
 */
static void cli_usage_check_name(struct cli_client *c, const char *name)
{
	struct strbuf target = STRBUF_INIT;
	cJSON *doc = NULL;

	sb_adds(&target, "/_stoke/functions/");
	cli_client_escape(&target, name);
	if (!sb_failed(&target))
		(void)cli_client_api(c, "GET", target.buf, NULL, &doc);
	cJSON_Delete(doc);
	sb_free(&target);
}

static int cli_usage_print(struct cli_client *c, const struct cli_usage *u, const cJSON *doc)
{
	const cJSON *prices = cJSON_GetObjectItemCaseSensitive(doc, "prices");
	struct cli_out_table t;
	char when[64];
	int ret;

	if (u->since >= 0) {
		cJSON *t0 = cJSON_CreateNumber((double)u->since);

		printf("since %s\n", cli_out_time(t0, when, sizeof(when)));
		cJSON_Delete(t0);
	}
	if (!cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(doc, "usage"))) {
		printf("no invocations recorded%s%s\n", u->name ? " for " : "",
		       u->name ? u->name : "");
		fflush(stdout);
		if (u->name)
			cli_usage_check_name(c, u->name);
		return CLI_EXIT_OK;
	}
	cli_out_table_init(&t, 2 + CLI_USAGE_NUMS, "llrrrrrrrrr");
	cli_usage_rows(&t, doc);
	ret = cli_out_table_print(&t);
	cli_out_table_free(&t);
	if (ret) {
		fprintf(stderr, "stoke: out of memory printing the table\n");
		return CLI_EXIT_USAGE;
	}
	printf("estimated at list prices: ");
	cli_usage_price(prices, "lambda", "AWS Lambda", "per_gb_s", "GB-s");
	printf(",\n  ");
	cli_usage_price(prices, "workers", "Cloudflare Workers", "per_million_cpu_ms",
			"M CPU-ms");
	printf("\n");
	return CLI_EXIT_OK;
}

static int cli_usage_call(struct cli_client *c, const struct cli_usage *u)
{
	struct strbuf target = STRBUF_INIT;
	cJSON *doc = NULL;
	char sep = '?';
	int code;

	sb_adds(&target, "/_stoke/usage");
	if (u->name) {
		sb_adds(&target, "?function=");
		cli_client_escape(&target, u->name);
		sep = '&';
	}
	if (u->since >= 0)
		sb_printf(&target, "%csince=%lld", sep, u->since);
	if (sb_failed(&target)) {
		fprintf(stderr, "stoke: out of memory building the request\n");
		code = CLI_EXIT_USAGE;
	} else {
		code = cli_client_api(c, "GET", target.buf, NULL, &doc);
	}
	if (!code && c->json)
		cli_out_json(doc);
	else if (!code)
		code = cli_usage_print(c, u, doc);
	cJSON_Delete(doc);
	sb_free(&target);
	return code;
}

static int cli_usage_run(int argc, char **argv)
{
	struct cli_usage u = { 0 };
	struct cli_client c;
	int code = 0;

	cli_client_init(&c, &cli_verb_usage);
	if (cli_usage_args(&c, argc, argv, &u, &code))
		return code;
	code = cli_client_open(&c);
	if (!code)
		code = cli_usage_call(&c, &u);
	cli_client_close(&c);
	return code;
}

const struct cli_verb cli_verb_usage = {
	.name = "usage",
	.args = "[NAME] [OPTIONS]",
	.summary = "Show invocations, compute and their estimated cost on Lambda and Workers.",
	.options =
		"  --since WHEN        only usage from WHEN on: Unix seconds, a UTC date\n"
		"                      (2026-12-01, 2026-12-01T08:30) or an age (30m, 1h, 7d)\n",
	.client = 1,
	.longopts = cli_usage_opts,
	.shortopts = ":h",
	.run = cli_usage_run,
};
