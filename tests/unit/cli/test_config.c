/* Where the client finds the daemon and its token: flag, then environment, then the
 * token file in the data directory, itself chosen by flag, STOKE_DATA_DIR, XDG_DATA_HOME
 * or HOME. */
#include <errno.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "cli/config.h"

static char root[256];

static void put_token(const char *dir, const char *content)
{
	char path[512], cmd[600];
	FILE *f;

	snprintf(cmd, sizeof(cmd), "mkdir -p '%s/%s'", root, dir);
	if (system(cmd))
		exit(2);
	snprintf(path, sizeof(path), "%s/%s/token", root, dir);
	f = fopen(path, "w");
	if (!f)
		exit(2);
	fputs(content, f);
	fclose(f);
}

static char *in_root(const char *rel)
{
	static char path[4][512];
	static int i;

	i = (i + 1) % 4;
	snprintf(path[i], sizeof(path[i]), "%s/%s", root, rel);
	return path[i];
}

static struct cli_token_source source;	/* the last token() call's */

/* Returns the token found (static storage) or "(none)". */
static const char *token(const char *flag, const char *dir_flag)
{
	static char buf[256];
	char *t = NULL;
	int ret = cli_config_token(flag, dir_flag, &t, &source, NULL);

	snprintf(buf, sizeof(buf), "%s", ret ? "(error)" : t ? t : "(none)");
	CHECK_INT(source.found, t != NULL);
	free(t);
	return buf;
}

static void test_token_order(void)
{
	put_token("flagdir", "from-flag-dir\n");
	put_token("envdir", "from-env-dir\r\n");
	put_token("xdg/stoke", "  from-xdg  \n");
	put_token("home/.local/share/stoke", "from-home");

	setenv("HOME", in_root("home"), 1);
	unsetenv("XDG_DATA_HOME");
	unsetenv("STOKE_DATA_DIR");
	unsetenv("STOKE_TOKEN");
	CHECK_STR(token(NULL, NULL), "from-home");
	CHECK_STR(source.text, in_root("home/.local/share/stoke/token"));

	setenv("XDG_DATA_HOME", in_root("xdg"), 1);
	CHECK_STR(token(NULL, NULL), "from-xdg");

	setenv("STOKE_DATA_DIR", in_root("envdir"), 1);
	CHECK_STR(token(NULL, NULL), "from-env-dir");

	CHECK_STR(token(NULL, in_root("flagdir")), "from-flag-dir");

	setenv("STOKE_TOKEN", "from-env", 1);
	CHECK_STR(token(NULL, in_root("flagdir")), "from-env");
	CHECK_STR(source.text, "$STOKE_TOKEN");

	CHECK_STR(token("from-flag", in_root("flagdir")), "from-flag");
	CHECK_STR(source.text, "--token");

	/* Empty values count as unset. */
	setenv("STOKE_TOKEN", "", 1);
	CHECK_STR(token("", NULL), "from-env-dir");
	setenv("STOKE_DATA_DIR", "", 1);
	CHECK_STR(token(NULL, NULL), "from-xdg");

	/* XDG_DATA_HOME must be absolute to count. */
	setenv("XDG_DATA_HOME", "relative/dir", 1);
	CHECK_STR(token(NULL, NULL), "from-home");

	/* No file anywhere: no token, and no error either. */
	CHECK_STR(token(NULL, in_root("nowhere")), "(none)");
	CHECK(strstr(source.text, "there is no token file at ") == source.text &&
	      !strcmp(source.text + 26, in_root("nowhere/token")));
	put_token("blank", "\n");
	CHECK_STR(token(NULL, in_root("blank")), "(none)");
}

static void test_data_dir(void)
{
	char *dir = NULL;

	unsetenv("STOKE_DATA_DIR");
	unsetenv("XDG_DATA_HOME");
	setenv("HOME", "/home/someone", 1);
	CHECK_INT(cli_config_data_dir(NULL, &dir, NULL), 0);
	CHECK_STR(dir, "/home/someone/.local/share/stoke");
	free(dir);
	setenv("XDG_DATA_HOME", "/xdg", 1);
	CHECK_INT(cli_config_data_dir(NULL, &dir, NULL), 0);
	CHECK_STR(dir, "/xdg/stoke");
	free(dir);
	CHECK_INT(cli_config_data_dir("/flag", &dir, NULL), 0);
	CHECK_STR(dir, "/flag");
	free(dir);
}

static void test_url(void)
{
	unsetenv("STOKE_URL");
	CHECK_STR(cli_config_url(NULL), "http://127.0.0.1:8080");
	setenv("STOKE_URL", "http://127.0.0.1:9", 1);
	CHECK_STR(cli_config_url(NULL), "http://127.0.0.1:9");
	CHECK_STR(cli_config_url("http://[::1]:7"), "http://[::1]:7");
	setenv("STOKE_URL", "", 1);
	CHECK_STR(cli_config_url(""), "http://127.0.0.1:8080");
}

int main(void)
{
	const char *tmp = getenv("TMPDIR");
	char cmd[300];

	snprintf(root, sizeof(root), "%s/stoke-cli-config-XXXXXX", tmp ? tmp : "/tmp");
	if (!mkdtemp(root))
		return 2;
	test_token_order();
	test_data_dir();
	test_url();
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
	if (system(cmd))
		fprintf(stderr, "could not remove %s\n", root);
	return check_done("test_config");
}
