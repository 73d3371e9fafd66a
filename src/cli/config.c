#include "config.h"

#include <errno.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *cli_config_env(const char *name)
{
	const char *v = getenv(name);

	return v && *v ? v : NULL;
}

const char *cli_config_url(const char *flag)
{
	const char *env = cli_config_env("STOKE_URL");

	if (flag && *flag)
		return flag;
	return env ? env : CLI_DEFAULT_URL;
}

static const char *cli_config_home(void)
{
	const char *home = cli_config_env("HOME");
	struct passwd *pw;

	if (home)
		return home;
	pw = getpwuid(getuid());
	return pw && pw->pw_dir && *pw->pw_dir ? pw->pw_dir : NULL;
}

int cli_config_data_dir(const char *flag, char **out, struct cli_err *err)
{
	const char *env = cli_config_env("STOKE_DATA_DIR");
	const char *xdg = cli_config_env("XDG_DATA_HOME");
	const char *home;
	int n = 0;

	*out = NULL;
	if (flag && *flag)
		*out = strdup(flag);
	else if (env)
		*out = strdup(env);
	/* The XDG spec says relative values are invalid and must be ignored. */
	else if (xdg && xdg[0] == '/')
		n = asprintf(out, "%s/stoke", xdg);
	else if ((home = cli_config_home()))
		n = asprintf(out, "%s/.local/share/stoke", home);
	else
		return cli_err_set(err, -ENOENT, "no data directory: set --data-dir, "
				   "STOKE_DATA_DIR or HOME");
	if (n < 0)
		*out = NULL;
	if (!*out)
		return cli_err_set(err, -ENOMEM, "out of memory");
	return 0;
}

/* Reads the first line of path, without its line ending, into a malloc'd string. */
static int cli_config_read_line(const char *path, char **out, struct cli_err *err)
{
	size_t cap = 0, skip;
	ssize_t len;
	FILE *f;

	f = fopen(path, "re");
	if (!f) {
		if (errno == ENOENT)
			return 0;
		return cli_err_set(err, -errno, "cannot read %s: %s", path, strerror(errno));
	}
	len = getline(out, &cap, f);
	fclose(f);
	if (len < 0) {
		free(*out);
		*out = NULL;
		return 0;
	}
	/* Hand-edited token files gain spaces and CRLFs; a token never contains any. */
	while (len && strchr(" \t\r\n", (*out)[len - 1]))
		(*out)[--len] = '\0';
	skip = strspn(*out, " \t");
	memmove(*out, *out + skip, len - skip + 1);
	len -= skip;
	if (!len) {
		free(*out);
		*out = NULL;
	}
	return 0;
}

static void cli_config_source(struct cli_token_source *src, int found, const char *fmt,
			      const char *arg)
{
	if (!src)
		return;
	src->found = found;
	snprintf(src->text, sizeof(src->text), fmt, arg);
}

int cli_config_token(const char *flag, const char *data_dir_flag, char **out,
		     struct cli_token_source *src, struct cli_err *err)
{
	const char *env = cli_config_env("STOKE_TOKEN");
	char *dir, *path;
	int ret;

	*out = NULL;
	if ((flag && *flag) || env) {
		cli_config_source(src, 1, "%s", flag && *flag ? "--token" : "$STOKE_TOKEN");
		*out = strdup(flag && *flag ? flag : env);
		return *out ? 0 : cli_err_set(err, -ENOMEM, "out of memory");
	}
	/* Without any data directory there is simply no token file. */
	if (cli_config_data_dir(data_dir_flag, &dir, NULL)) {
		cli_config_source(src, 0, "%s", "there is no data directory (HOME is unset)");
		return 0;
	}
	if (asprintf(&path, "%s/token", dir) < 0) {
		free(dir);
		return cli_err_set(err, -ENOMEM, "out of memory");
	}
	ret = cli_config_read_line(path, out, err);
	cli_config_source(src, *out != NULL, *out ? "%s" : "there is no token file at %s",
			  path);
	free(path);
	free(dir);
	return ret;
}
