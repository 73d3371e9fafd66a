/* Human and machine renderings of the daemon's JSON answers. */
#ifndef STOKE_CLI_OUTPUT_H
#define STOKE_CLI_OUTPUT_H

#include <stddef.h>

#include <cjson/cJSON.h>

/* Prints item as indented JSON and a newline (what --json shows). */
void cli_out_json(const cJSON *item);

/* Formats a scalar for people into buf: strings bare, integers without a fraction,
 * null or a missing item as "-". Returns buf. */
const char *cli_out_scalar(const cJSON *item, char *buf, size_t size);

/* Formats a Unix time (seconds) as ISO 8601 UTC into buf; other items as a scalar. */
const char *cli_out_time(const cJSON *item, char *buf, size_t size);

/* Prints the fields of obj as "key: value" lines, nested objects indented below their
 * key, arrays comma-separated, "*_at" numbers as times. */
void cli_out_fields(const cJSON *obj, int indent);

/* The string field key of obj, or def. */
const char *cli_out_str(const cJSON *obj, const char *key, const char *def);

/* A table printed with its columns aligned: cells are added left to right, row after
 * row, then the whole table printed once its widths are known. */
#define CLI_OUT_TABLE_MAX_COLS 16

struct cli_out_table {
	int ncols;
	const char *right;	/* one char per column: 'r' aligns it right (numbers) */
	char **cells;
	size_t ncells, cap;
	int failed;		/* a cell could not be stored: the rows would shift */
};

/* ncols is at most CLI_OUT_TABLE_MAX_COLS. */
void cli_out_table_init(struct cli_out_table *t, int ncols, const char *right);

/* Adds the next cell. */
void cli_out_table_add(struct cli_out_table *t, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Prints every row, columns two spaces apart, no trailing blanks. Returns 0, or
 * -ENOMEM (printing nothing) when a cell was lost. */
int cli_out_table_print(const struct cli_out_table *t);

void cli_out_table_free(struct cli_out_table *t);

#endif
