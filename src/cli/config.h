/*
 * How a client verb finds the daemon and its token. Each setting comes from the first
 * of: the command-line flag, the environment, a file or default. Empty values count as
 * unset, so `STOKE_TOKEN= stoke ls` falls through to the token file.
 */
#ifndef STOKE_CLI_CONFIG_H
#define STOKE_CLI_CONFIG_H

#include "err.h"

#define CLI_DEFAULT_URL "http://127.0.0.1:8080"

/* --url, else $STOKE_URL, else CLI_DEFAULT_URL. */
const char *cli_config_url(const char *flag);

/* --data-dir, else $STOKE_DATA_DIR, else $XDG_DATA_HOME/stoke (when absolute), else
 * ~/.local/share/stoke: the daemon's own default. Returns 0 and a malloc'd path, or
 * -ENOENT when no home directory is known. */
int cli_config_data_dir(const char *flag, char **out, struct cli_err *err);

/* Where a token came from, said to the user when the daemon refuses it. */
struct cli_token_source {
	int found;
	/* "--token", "$STOKE_TOKEN" or the token file's path; without a token, why:
	 * "there is no token file at PATH" */
	char text[600];
};

/* --token, else $STOKE_TOKEN, else the first line of <data-dir>/token. Returns 0 with a
 * malloc'd token, or with NULL when none exists (the daemon then answers 401), or a
 * negative errno when the token file exists but cannot be read. src (may be NULL)
 * receives where the token came from or where stoke looked. */
int cli_config_token(const char *flag, const char *data_dir_flag, char **out,
		     struct cli_token_source *src, struct cli_err *err);

#endif
