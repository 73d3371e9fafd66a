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

#endif
