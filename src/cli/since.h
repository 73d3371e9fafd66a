/*
 * The WHEN of `stoke usage --since WHEN`: Unix seconds (1764547200), a UTC date with an
 * optional time (2026-12-01, 2026-12-01T08:30, 2026-12-01T08:30:15Z) or an age counted
 * back from now (90s, 30m, 1h, 7d, 2w).
 */
#ifndef STOKE_CLI_SINCE_H
#define STOKE_CLI_SINCE_H

#include <time.h>

#include "err.h"

/* Parses text into Unix seconds, relative forms counted back from now. Returns 0, or
 * -EINVAL (unknown form, impossible date) or -ERANGE (before 1970, too far) with err
 * saying why. */
int cli_since_parse(const char *text, time_t now, long long *out, struct cli_err *err);

#endif
