#include "output.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void cli_out_json(const cJSON *item)
{
	char *text = cJSON_Print(item);

	if (text) {
		puts(text);
		free(text);
	}
}

const char *cli_out_scalar(const cJSON *item, char *buf, size_t size)
{
	double v;

	if (cJSON_IsString(item))
		snprintf(buf, size, "%s", item->valuestring);
	else if (cJSON_IsBool(item))
		snprintf(buf, size, "%s", cJSON_IsTrue(item) ? "true" : "false");
	else if (cJSON_IsNumber(item)) {
		v = item->valuedouble;
		/* cJSON stores numbers as doubles; show integral ones without ".0". */
		if (v == floor(v) && fabs(v) < 1e15)
			snprintf(buf, size, "%.0f", v);
		else
			snprintf(buf, size, "%g", v);
	} else
		snprintf(buf, size, "-");
	return buf;
}

const char *cli_out_str(const cJSON *obj, const char *key, const char *def)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);

	return cJSON_IsString(item) ? item->valuestring : def;
}

const char *cli_out_time(const cJSON *item, char *buf, size_t size)
{
	struct tm tm;
	time_t t;

	if (!cJSON_IsNumber(item))
		return cli_out_scalar(item, buf, size);
	t = (time_t)item->valuedouble;
	if (!gmtime_r(&t, &tm) || !strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm))
		return cli_out_scalar(item, buf, size);
	return buf;
}

/* The daemon's "*_at" fields are Unix times. */
static int cli_out_is_time(const cJSON *item)
{
	size_t len = item->string ? strlen(item->string) : 0;

	return cJSON_IsNumber(item) && len > 3 && !strcmp(item->string + len - 3, "_at");
}

static void cli_out_array(const cJSON *arr)
{
	const cJSON *item;
	char buf[256];
	int first = 1;

	if (!cJSON_GetArraySize(arr))
		printf("-");
	cJSON_ArrayForEach(item, arr) {
		if (cJSON_IsObject(item) || cJSON_IsArray(item)) {
			char *text = cJSON_PrintUnformatted(item);

			printf("%s%s", first ? "" : ", ", text ? text : "?");
			free(text);
		} else {
			printf("%s%s", first ? "" : ", ",
			       cli_out_scalar(item, buf, sizeof(buf)));
		}
		first = 0;
	}
	putchar('\n');
}

void cli_out_fields(const cJSON *obj, int indent)
{
	const cJSON *item;
	char buf[1024];

	cJSON_ArrayForEach(item, obj) {
		printf("%*s%s:", indent, "", item->string ? item->string : "?");
		if (cJSON_IsObject(item)) {
			putchar('\n');
			cli_out_fields(item, indent + 2);
		} else if (cJSON_IsArray(item)) {
			putchar(' ');
			cli_out_array(item);
		} else if (cli_out_is_time(item)) {
			printf(" %s\n", cli_out_time(item, buf, sizeof(buf)));
		} else {
			printf(" %s\n", cli_out_scalar(item, buf, sizeof(buf)));
		}
	}
}

void cli_out_table_init(struct cli_out_table *t, int ncols, const char *right)
{
	memset(t, 0, sizeof(*t));
	t->ncols = ncols;
	t->right = right;
}

void cli_out_table_add(struct cli_out_table *t, const char *fmt, ...)
{
	char *cell, **grown;
	va_list ap;
	int ret;

	if (t->ncells == t->cap) {
		grown = realloc(t->cells, (t->cap ? t->cap * 2 : 32) * sizeof(*grown));
		if (!grown) {
			t->failed = 1;
			return;
		}
		t->cells = grown;
		t->cap = t->cap ? t->cap * 2 : 32;
	}
	va_start(ap, fmt);
	ret = vasprintf(&cell, fmt, ap);
	va_end(ap);
	if (ret < 0)
		t->failed = 1;
	else
		t->cells[t->ncells++] = cell;
}

int cli_out_table_print(const struct cli_out_table *t)
{
	int widths[CLI_OUT_TABLE_MAX_COLS] = { 0 }, col, len;
	const char *cell;
	size_t i;

	if (t->failed || t->ncols < 1 || t->ncols > CLI_OUT_TABLE_MAX_COLS)
		return -ENOMEM;
	for (i = 0; i < t->ncells; i++) {
		len = strlen(t->cells[i]);
		if (len > widths[i % t->ncols])
			widths[i % t->ncols] = len;
	}
	for (i = 0; i < t->ncells; i++) {
		col = i % t->ncols;
		cell = t->cells[i];
		if (col == t->ncols - 1 && t->right[col] != 'r')
			printf("%s\n", cell);
		else if (t->right[col] == 'r')
			printf("%*s%s", widths[col], cell, col == t->ncols - 1 ? "\n" : "  ");
		else
			printf("%-*s  ", widths[col], cell);
	}
	return 0;
}

void cli_out_table_free(struct cli_out_table *t)
{
	size_t i;

	for (i = 0; i < t->ncells; i++)
		free(t->cells[i]);
	free(t->cells);
	memset(t, 0, sizeof(*t));
}
