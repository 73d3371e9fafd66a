/* `stoke serve`: runs the daemon in the foreground. */
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/log.h"
#include "gateway/daemon.h"

enum {
	OPT_LISTEN = 0x100, OPT_DATA_DIR, OPT_DOMAIN, OPT_ROOTFS_DIR, OPT_MAX_BODY,
	OPT_MAX_DEPLOY, OPT_WORKERS, OPT_LOG_JSON, OPT_LOG_LEVEL,
};

/* Parses BYTES with an optional K, M or G suffix (powers of 1024). */
static int cli_serve_size(const char *s, size_t *out)
{
	unsigned long long v;
	int shift = 0;
	char *end;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s || s[0] == '-')
		return -EINVAL;
	if (*end == 'k' || *end == 'K')
		shift = 10;
	else if (*end == 'm' || *end == 'M')
		shift = 20;
	else if (*end == 'g' || *end == 'G')
		shift = 30;
	if (shift)
		end++;
	if (*end || !v || v > (SIZE_MAX >> shift))
		return -EINVAL;
	*out = (size_t)v << shift;
	return 0;
}

static int cli_serve_level(const char *s)
{
	static const char *const names[] = { "error", "warn", "info", "debug" };
	int i;

	for (i = 0; i < 4; i++)
		if (!strcmp(s, names[i]))
			return i;
	return -1;
}

static int cli_serve_workers(const char *s)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	return errno || end == s || *end || v < 0 || v > 4096 ? -1 : (int)v;
}

/* Refuses an address the daemon could not listen on before anything starts. */
static int cli_serve_listen(const char *arg)
{
	struct sockaddr_storage ss;
	char why[512];
	socklen_t len;

	if (daemon_parse_listen(arg, &ss, &len, why, sizeof(why)))
		return cli_usage(&cli_verb_serve, "--listen %s", why);
	return 0;
}

/* Applies one option to cfg; returns 0 or a usage exit code. *level is the explicit
 * --log-level, kept apart because LOG_ERROR is 0, the "unset" value of cfg. */
static int cli_serve_opt(struct daemon_config *cfg, int opt, const char *arg, int *level)
{
	const struct cli_verb *v = &cli_verb_serve;

	switch (opt) {
	case OPT_LISTEN:
		cfg->listen = arg;
		return cli_serve_listen(arg);
	case OPT_DATA_DIR:
		cfg->data_dir = arg;
		return 0;
	case OPT_DOMAIN:
		cfg->domain = arg;
		return 0;
	case OPT_ROOTFS_DIR:
		cfg->rootfs_dir = arg;
		return 0;
	case OPT_MAX_BODY:
		return cli_serve_size(arg, &cfg->max_body) ?
			cli_usage(v, "--max-body wants a size such as 1048576 or 10M") : 0;
	case OPT_MAX_DEPLOY:
		return cli_serve_size(arg, &cfg->max_deploy) ?
			cli_usage(v, "--max-deploy wants a size such as 50M") : 0;
	case OPT_WORKERS:
		cfg->workers = cli_serve_workers(arg);
		return cfg->workers < 0 ? cli_usage(v, "--workers wants 0..4096") : 0;
	case OPT_LOG_JSON:
		cfg->log_json = 1;
		return 0;
	case OPT_LOG_LEVEL:
		*level = cli_serve_level(arg);
		return *level < 0 ? cli_usage(v, "--log-level is error, warn, info or debug")
				  : 0;
	}
	return cli_usage(v, "unexpected option");
}

static const struct option cli_serve_opts[] = {
	{ "listen", required_argument, NULL, OPT_LISTEN },
	{ "data-dir", required_argument, NULL, OPT_DATA_DIR },
	{ "domain", required_argument, NULL, OPT_DOMAIN },
	{ "rootfs-dir", required_argument, NULL, OPT_ROOTFS_DIR },
	{ "max-body", required_argument, NULL, OPT_MAX_BODY },
	{ "max-deploy", required_argument, NULL, OPT_MAX_DEPLOY },
	{ "workers", required_argument, NULL, OPT_WORKERS },
	{ "log-json", no_argument, NULL, OPT_LOG_JSON },
	{ "log-level", required_argument, NULL, OPT_LOG_LEVEL },
	{ "help", no_argument, NULL, 'h' },
	{ 0 },
};

static int cli_serve_args(int argc, char **argv, struct daemon_config *cfg, int *level)
{
	int opt, code;

	while ((opt = getopt_long(argc, argv, ":h", cli_serve_opts, NULL)) != -1) {
		if (opt == '?' || opt == ':')
			return cli_bad_option(&cli_verb_serve, opt, argv);
		code = cli_serve_opt(cfg, opt, optarg, level);
		if (code)
			return code;
	}
	if (optind != argc)
		return cli_usage(&cli_verb_serve, "takes no arguments");
	return 0;
}

/* The daemon logged what failed; for the failures a user fixes with an option, which
 * option. (A taken address: the daemon's own message names --listen.) */
static void cli_serve_explain(const struct daemon_config *cfg, int ret)
{
	if (ret == -EBUSY)
		log_error("the stoke serve that holds %s/lock already serves it: use that one, "
			  "stop it, or pass another --data-dir", cfg->data_dir);
}

static int cli_serve_run(int argc, char **argv)
{
	struct daemon_config cfg = { 0 };
	const char *env = getenv("STOKE_DATA_DIR");
	int ret, level = -1;

	ret = cli_serve_args(argc, argv, &cfg, &level);
	if (ret)
		return ret;
	/* The client verbs honour STOKE_DATA_DIR; so must the daemon, or the two would look
	 * for the token in different places. */
	if (!cfg.data_dir && env && *env)
		cfg.data_dir = env;
	ret = daemon_config_defaults(&cfg);
	if (ret) {
		fprintf(stderr, "stoke serve: %s (no home directory? pass --data-dir)\n",
			strerror(-ret));
		return CLI_EXIT_USAGE;
	}
	if (level >= 0)
		cfg.log_level = level;
	ret = daemon_run(&cfg);
	cli_serve_explain(&cfg, ret);
	return ret ? CLI_EXIT_REMOTE : CLI_EXIT_OK;
}

const struct cli_verb cli_verb_serve = {
	.name = "serve",
	.args = "[OPTIONS]",
	.summary = "Run the daemon in the foreground until SIGTERM or Ctrl-C.",
	.options =
		"  --listen HOST:PORT  where to serve HTTP (default 127.0.0.1:8080); HOST is\n"
		"                      an address ([::1] for IPv6) or a name such as\n"
		"                      localhost, PORT 1-65535\n"
		"  --data-dir DIR      registry, functions, token (default $STOKE_DATA_DIR,\n"
		"                      else $XDG_DATA_HOME/stoke or ~/.local/share/stoke)\n"
		"  --domain D          NAME.D routes to function NAME (default localhost)\n"
		"  --rootfs-dir DIR    runtime root file systems (default $STOKE_CACHE/rootfs)\n"
		"  --max-body BYTES    request body limit, K/M/G suffixes allowed (default 10M)\n"
		"  --max-deploy BYTES  deploy size limit (default 50M)\n"
		"  --workers N         isolate worker threads (default 0: one per core)\n"
		"  --log-json          log one JSON object per line\n"
		"  --log-level L       error, warn, info (default) or debug\n",
	.exits =
		"\nExit status: 0 the daemon stopped on SIGTERM or Ctrl-C, 1 it could not start\n"
		"or run (it logs why: an address in use, a data directory another stoke serve\n"
		"holds...), 2 usage error.\n",
	.longopts = cli_serve_opts,
	.shortopts = ":h",
	.run = cli_serve_run,
};
