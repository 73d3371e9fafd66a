/* `stoke serve`: configuration, data directory, token, registry, tiers, then the loops. */
#include "daemon.h"
#include "gateway.h"
#include "common/fnlog.h"
#include "common/log.h"
#include "sched/meter.h"
#include "store/registry.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <libgen.h>
#include <limits.h>
#include <netdb.h>
#include <openssl/rand.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

struct gw *gw_global;

static char *daemon_default_data_dir(void)
{
	const char *xdg = getenv("XDG_DATA_HOME"), *home = getenv("HOME");
	char buf[PATH_MAX];

	if (xdg && *xdg)
		snprintf(buf, sizeof(buf), "%s/stoke", xdg);
	else if (home && *home)
		snprintf(buf, sizeof(buf), "%s/.local/share/stoke", home);
	else
		return NULL;
	return strdup(buf);
}

static char *daemon_default_rootfs_dir(void)
{
	const char *cache = getenv("STOKE_CACHE"), *home = getenv("HOME");
	char buf[PATH_MAX];

	if (cache && *cache)
		snprintf(buf, sizeof(buf), "%s/rootfs", cache);
	else
		snprintf(buf, sizeof(buf), "%s/.cache/stoke/rootfs", home ? home : "/root");
	return strdup(buf);
}

int daemon_config_defaults(struct daemon_config *cfg)
{
	if (!cfg->listen)
		cfg->listen = "127.0.0.1:8080";
	if (!cfg->domain)
		cfg->domain = "localhost";
	if (!cfg->data_dir && !(cfg->data_dir = daemon_default_data_dir()))
		return -ENOENT;
	if (!cfg->rootfs_dir)
		cfg->rootfs_dir = daemon_default_rootfs_dir();
	if (!cfg->max_body)
		cfg->max_body = 10u << 20;
	if (!cfg->max_deploy)
		cfg->max_deploy = 50u << 20;
	if (!cfg->shutdown_grace_ms)
		cfg->shutdown_grace_ms = 10000;
	if (!cfg->log_level)
		cfg->log_level = LOG_INFO;
	return 0;
}

/* Splits HOST:PORT or [HOST]:PORT into host and port; returns 0 or -EINVAL with why. */
static int daemon_split_listen(const char *listen, char *host, size_t hsize, long *port,
			       char *why, size_t size)
{
	const char *colon = strrchr(listen, ':'), *h = listen;
	size_t hlen;
	char *end;

	if (!colon && *listen && listen[strspn(listen, "0123456789")] == '\0') {
		snprintf(why, size, "'%s' is a port alone: write HOST:PORT, e.g. 127.0.0.1:%s "
			 "or [::1]:%s", listen, listen, listen);
		return -EINVAL;
	}
	if (!colon || (listen[0] != '[' && strchr(listen, ':') != colon)) {
		snprintf(why, size, "'%s' has no port: write HOST:PORT, e.g. 127.0.0.1:8080 "
			 "or [::1]:8080", listen);
		return -EINVAL;
	}
	hlen = (size_t)(colon - listen);
	if (listen[0] == '[') {
		if (hlen < 2 || colon[-1] != ']') {
			snprintf(why, size, "'%s': write an IPv6 address as [ADDRESS]:PORT, "
				 "e.g. [::1]:8080", listen);
			return -EINVAL;
		}
		h++;
		hlen -= 2;
	}
	errno = 0;
	*port = strtol(colon + 1, &end, 10);
	if (errno || end == colon + 1 || *end || *port < 1 || *port > 65535) {
		snprintf(why, size, "'%s': the port must be a number from 1 to 65535", listen);
		return -EINVAL;
	}
	if (!hlen || hlen >= hsize) {
		snprintf(why, size, "'%s' names no host: use 127.0.0.1:%ld for this machine "
			 "only, 0.0.0.0:%ld for every interface", listen, *port, *port);
		return -EINVAL;
	}
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	return 0;
}

int daemon_parse_listen(const char *listen, struct sockaddr_storage *ss, socklen_t *len,
			char *why, size_t size)
{
	struct addrinfo hints = { .ai_flags = AI_NUMERICSERV, .ai_socktype = SOCK_STREAM };
	struct addrinfo *list, *ai, *pick = NULL;
	char host[256], port[8];
	long num;
	int ret;

	ret = daemon_split_listen(listen, host, sizeof(host), &num, why, size);
	if (ret)
		return ret;
	snprintf(port, sizeof(port), "%ld", num);
	ret = getaddrinfo(host, port, &hints, &list);
	if (ret) {
		snprintf(why, size, "'%s': cannot resolve %s: %s", listen, host,
			 gai_strerror(ret));
		return -EINVAL;
	}
	for (ai = list; ai && !pick; ai = ai->ai_next)
		if (ai->ai_family == AF_INET)
			pick = ai;
	pick = pick ? pick : list;
	memcpy(ss, pick->ai_addr, pick->ai_addrlen);
	*len = pick->ai_addrlen;
	freeaddrinfo(list);
	return 0;
}

static int daemon_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

/* Removes dir and what it holds; symbolic links are removed, never followed. */
void gw_rmtree(const char *dir)
{
	nftw(dir, daemon_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int gw_mkdir_parents(const char *path, mode_t mode)
{
	char buf[PATH_MAX], *s;

	if ((size_t)snprintf(buf, sizeof(buf), "%s", path) >= sizeof(buf))
		return -ENAMETOOLONG;
	for (s = strchr(buf + 1, '/'); s; s = strchr(s + 1, '/')) {
		*s = '\0';
		if (mkdir(buf, mode) && errno != EEXIST)
			return -errno;
		*s = '/';
	}
	return 0;
}

static int daemon_mkdir_p(const char *dir)
{
	int ret = gw_mkdir_parents(dir, 0700);

	return ret || !mkdir(dir, 0700) || errno == EEXIST ? ret : -errno;
}

/* The admin token: created once (0600) and kept, so CLIs keep working across restarts. */
static int daemon_token(const char *data_dir, char token[65])
{
	unsigned char raw[32];
	char path[PATH_MAX];
	ssize_t n;
	int fd, i;

	snprintf(path, sizeof(path), "%s/token", data_dir);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		n = read(fd, token, 64);
		close(fd);
		while (n > 0 && (token[n - 1] == '\n' || token[n - 1] == ' '))
			n--;
		token[n > 0 ? n : 0] = '\0';
		return n > 0 ? 0 : -EINVAL;
	}
	if (RAND_bytes(raw, sizeof(raw)) != 1)
		return -EIO;
	for (i = 0; i < 32; i++)
		snprintf(token + 2 * i, 3, "%02x", raw[i]);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	n = write(fd, token, 64);
	close(fd);
	return n == 64 ? 0 : -EIO;
}

/* stoke-vmm sits beside stoke when installed, in ../vmm/ in the build tree. */
static void daemon_find_vmm(struct gw *gw)
{
	static const char *const rel[] = { "stoke-vmm", "../vmm/stoke-vmm" };
	const char *env = getenv("STOKE_VMM");
	char exe[PATH_MAX - 32];
	ssize_t n;
	size_t i;

	if (env && *env) {
		snprintf(gw->vmm_path, sizeof(gw->vmm_path), "%s", env);
		return;
	}
	n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	exe[n > 0 ? n : 0] = '\0';
	dirname(exe);
	for (i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
		snprintf(gw->vmm_path, sizeof(gw->vmm_path), "%s/%s", exe, rel[i]);
		if (!access(gw->vmm_path, X_OK))
			return;
	}
}

/* Idle instances of each tier may hold STOKE_MEMORY_BUDGET_MB, by default a quarter of
 * the machine's memory. */
static uint64_t daemon_memory_budget(void)
{
	long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
	const char *env = getenv("STOKE_MEMORY_BUDGET_MB");

	if (env && *env)
		return strtoull(env, NULL, 10) << 20;
	if (pages <= 0 || size <= 0)
		return 1ull << 30;
	return (uint64_t)pages * (uint64_t)size / 4;
}

static int daemon_start_tiers(struct gw *gw)
{
	static const struct tier_ops *const ops[TIER_COUNT] = {
		[TIER_ISOLATE] = &iso_tier_ops, [TIER_VM] = &vm_tier_ops,
	};
	int i, ret;

	for (i = 0; i < TIER_COUNT; i++) {
		struct tier *t = &gw->tiers[i];

		t->ops = ops[i];
		t->data_dir = gw->cfg->data_dir;
		t->rootfs_dir = gw->cfg->rootfs_dir;
		t->vmm_path = gw->vmm_path;
		t->nworkers = gw->cfg->workers;
		t->memory_budget = daemon_memory_budget();
		ret = t->ops->start(t);
		if (ret) {
			log_error("cannot start the %s tier: %s", t->ops->name, strerror(-ret));
			return ret;
		}
	}
	gw->admin.ops = &gw_admin_ops;
	gw->admin_read.ops = &gw_admin_ops;
	ret = gw->admin.ops->start(&gw->admin);
	return ret ? ret : gw->admin_read.ops->start(&gw->admin_read);
}

static void daemon_stop_tiers(struct gw *gw)
{
	int i;

	/* A deploy still building holds the admin thread, which is joined first. */
	for (i = 0; i < TIER_COUNT; i++)
		if (gw->tiers[i].ops && gw->tiers[i].priv && gw->tiers[i].ops->cancel)
			gw->tiers[i].ops->cancel(&gw->tiers[i]);
	if (gw->admin.priv)
		gw->admin.ops->stop(&gw->admin);
	if (gw->admin_read.priv)
		gw->admin_read.ops->stop(&gw->admin_read);
	for (i = 0; i < TIER_COUNT; i++)
		if (gw->tiers[i].ops && gw->tiers[i].priv)
			gw->tiers[i].ops->stop(&gw->tiers[i]);
}

/* One daemon per data directory: two would race on the registry and the files. */
static int daemon_lock(const char *data_dir)
{
	char path[PATH_MAX];
	int fd;

	snprintf(path, sizeof(path), "%s/lock", data_dir);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		log_error("cannot open %s: %s", path, strerror(errno));
		return -errno;
	}
	if (flock(fd, LOCK_EX | LOCK_NB)) {
		log_error("another stoke serve is using the data directory %s", data_dir);
		close(fd);
		return -EBUSY;
	}
	return 0;	/* held (fd left open) until the process exits */
}

/* The registry is the only record of what is deployed: say what to do about it. */
static void daemon_registry_error(const struct daemon_config *cfg, const char *verb,
				  const char *why)
{
	log_error("cannot %s the registry %s/registry.db: %s. Restore it from a backup, or "
		  "move it aside to start with no functions (the deployed files under "
		  "%s/functions are kept either way)", verb, cfg->data_dir, why, cfg->data_dir);
}

static int daemon_open(struct gw *gw)
{
	const struct daemon_config *cfg = gw->cfg;
	char path[PATH_MAX], why[256];
	int ret;

	ret = daemon_mkdir_p(cfg->data_dir);
	if (ret) {
		log_error("cannot create data directory %s: %s", cfg->data_dir, strerror(-ret));
		return ret;
	}
	ret = daemon_lock(cfg->data_dir);
	if (ret)
		return ret;
	ret = daemon_token(cfg->data_dir, gw->token);
	if (ret) {
		log_error("cannot read or create %s/token: %s", cfg->data_dir, strerror(-ret));
		return ret;
	}
	snprintf(path, sizeof(path), "%s/registry.db", cfg->data_dir);
	ret = reg_open(path, &gw->reg, why, sizeof(why));
	if (ret) {
		daemon_registry_error(cfg, "open", why);
		return ret;
	}
	ret = meter_start(path, &gw->meter);
	if (ret)
		log_error("cannot start metering into %s", path);
	return ret;
}

static void daemon_block_signals(void)
{
	sigset_t set;

	signal(SIGPIPE, SIG_IGN);
	/* Every thread inherits this mask; the main thread takes them with sigwait(). */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
}

static void daemon_h2o_config(struct gw *gw)
{
	const struct daemon_config *cfg = gw->cfg;

	h2o_config_init(&gw->h2o);
	gw->h2o.server_name = h2o_iovec_init(H2O_STRLIT("stoke"));
	/* h2o refuses larger bodies itself (answered as JSON by the fallback filter in
	 * route.c); stoke applies the per-route limit. One byte more, since h2o refuses a
	 * chunked body that reaches the limit rather than passes it. */
	gw->h2o.max_request_entity_size = (cfg->max_body > cfg->max_deploy ? cfg->max_body :
					   cfg->max_deploy) + 1;
}

static int daemon_nthreads(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n < 1 ? 1 : n > 8 ? 8 : (int)n;
}

/*
 * A registry created by this start next to deployed files was emptied or removed while
 * the daemon was stopped: every version directory would look unused, and the sweep
 * would delete all deployed code. Those files stay for the operator to restore from.
 */
static int daemon_dir_is_empty(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	int empty = 1;

	while (d && empty && (e = readdir(d)))
		empty = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..");
	if (d)
		closedir(d);
	return empty;
}

static void daemon_sweep(struct gw *gw)
{
	char top[4200];

	snprintf(top, sizeof(top), "%s/functions", gw->cfg->data_dir);
	if (!reg_is_new(gw->reg) || daemon_dir_is_empty(top)) {
		gw_sweep_versions(gw);
		return;
	}
	log_warn("the registry %s/registry.db is new (it was missing or empty), but %s holds "
		 "deployed files: serving no functions, and leaving those files for a registry "
		 "restored from a backup (remove %s to start empty)", gw->cfg->data_dir, top, top);
}

int daemon_run(const struct daemon_config *cfg)
{
	struct gw *gw = calloc(1, sizeof(*gw));
	int ret;

	if (!gw)
		return -ENOMEM;
	log_setup((enum log_level)cfg->log_level, cfg->log_json);
	daemon_block_signals();
	gw->cfg = cfg;
	gw->started_ns = gw_now_ns();
	gw->nthreads = daemon_nthreads();
	gw->min_free_mb = getenv("STOKE_MIN_FREE_MB") ? strtoull(getenv("STOKE_MIN_FREE_MB"),
								NULL, 10) : 256;
	gw_global = gw;
	fn_set_release_hook(gw_fn_release);
	fnlog_set_sink(gw_fnlog_sink);
	daemon_find_vmm(gw);
	daemon_h2o_config(gw);
	ret = gw_table_init(gw);
	if (!ret)
		ret = daemon_open(gw);
	if (!ret)
		ret = daemon_start_tiers(gw);
	if (!ret && (ret = gw_admin_load(gw)))
		daemon_registry_error(cfg, "read", ret == -EIO ? reg_error(gw->reg) :
				      strerror(-ret));
	if (!ret)
		daemon_sweep(gw);
	if (!ret)
		ret = gw_run(gw);
	daemon_stop_tiers(gw);
	meter_stop(gw->meter);
	reg_close(gw->reg);
	if (!ret)
		log_info("stopped");
	return ret;
}
