/* `stoke gc`: the daemon frees snapshot layers, pages and images nothing uses. */
#include "client.h"
#include "output.h"

static double cli_gc_num(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

	return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

/* Two lines per tier: what went, and what stays (--json has every field). */
static void cli_gc_print(const cJSON *doc)
{
	const cJSON *t;

	cJSON_ArrayForEach(t, doc) {
		printf("%s: freed %.1f MiB: %.0f pages, %.0f layers, %.0f images, "
		       "%.0f snapshot files, %.0f temporary files\n", t->string,
		       cli_gc_num(t, "bytes_freed") / (1 << 20), cli_gc_num(t, "pages_removed"),
		       cli_gc_num(t, "layers_removed"), cli_gc_num(t, "images_removed"),
		       cli_gc_num(t, "snapshot_files_removed"), cli_gc_num(t, "tmp_removed"));
		printf("  kept: %.0f layers, %.0f pages (%.0f distinct pages referenced)\n",
		       cli_gc_num(t, "layers_kept"), cli_gc_num(t, "pages_kept"),
		       cli_gc_num(t, "pages_referenced"));
	}
}

static int cli_gc_run(int argc, char **argv)
{
	struct cli_client c;
	cJSON *doc = NULL;
	int code = cli_client_call(&c, &cli_verb_gc, argc, argv, "POST", "/_stoke/gc", &doc);

	if (!code && c.json)
		cli_out_json(doc);
	else if (!code)
		cli_gc_print(doc);
	cJSON_Delete(doc);
	cli_client_close(&c);
	return code;
}

const struct cli_verb cli_verb_gc = {
	.name = "gc",
	.args = "[OPTIONS]",
	.summary = "Free snapshot layers, pages and images no deployed function uses.",
	.client = 1,
	.longopts = cli_client_opts,
	.shortopts = ":h",
	.run = cli_gc_run,
};
