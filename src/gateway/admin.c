/*
 * The admin API under /_stoke/, served by one admin thread so that deploys (file
 * writes, compilation, registry transactions) never stall the event loops. It is a
 * tier like the others: the loop thread hands it a struct inv and gets it back.
 */
#include "gateway.h"
#include "manifest.h"
#include "common/base64.h"
#include "common/log.h"
#include "common/typo.h"
#include "sched/meter.h"
#include "store/registry.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct admin_queue {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct inv **items;
	size_t head, count, cap;
	int stop;
	pthread_t tid;
};

static void admin_json(struct inv *inv, int status, cJSON *obj)
{
	static const char ctype[] = "application/json";
	char *text = obj ? cJSON_PrintUnformatted(obj) : NULL;

	cJSON_Delete(obj);
	if (!text) {
		inv_fail(inv, 500, "internal", "out of memory");
		return;
	}
	inv->resp.status = status;
	inv_resp_add_header(inv, "content-type", 12, ctype, sizeof(ctype) - 1);
	inv_resp_set_body(inv, text, strlen(text));
}

static void admin_field_error(struct inv *inv, const struct mf_error *err)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddStringToObject(o, "error", "invalid_manifest");
	cJSON_AddStringToObject(o, "field", err->field);
	cJSON_AddStringToObject(o, "message", err->message);
	if (err->suggestion[0])
		cJSON_AddStringToObject(o, "suggestion", err->suggestion);
	cJSON_AddStringToObject(o, "request_id", inv->request_id);
	admin_json(inv, 400, o);
}

/* ---- files of a deploy ---- */

/* A deployed file's path: relative, no "..", ".", or empty components. */
static int admin_valid_relpath(const char *p)
{
	const char *c = p;

	if (!*p || *p == '/' || strlen(p) > 1024)
		return 0;
	while (*c) {
		size_t n = strcspn(c, "/");

		if (n == 0 || (n == 1 && c[0] == '.') || (n == 2 && !strncmp(c, "..", 2)))
			return 0;
		c += n;
		if (*c == '/')
			c++;
		else
			break;
	}
	return p[strlen(p) - 1] != '/';
}

static int admin_write_file(const char *dir, const char *rel, const void *data, size_t len)
{
	char path[4200 + 1100];	/* a staging directory, then a path of up to 1024 */
	ssize_t n;
	int fd, ret;

	if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, rel) >= sizeof(path))
		return -ENAMETOOLONG;
	ret = gw_mkdir_parents(path, 0755);
	if (ret)
		return ret;
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	n = write(fd, data, len);
	ret = n == (ssize_t)len ? 0 : n < 0 ? -errno : -ENOSPC;
	if (close(fd) && !ret)
		ret = -errno;
	return ret;
}

static int admin_write_files(const cJSON *files, const char *dir, size_t limit,
			     struct mf_error *err)
{
	const cJSON *f;
	size_t total = 0;
	long n;
	char *buf;
	int ret;

	cJSON_ArrayForEach(f, files) {
		snprintf(err->field, sizeof(err->field), "files");
		if (!admin_valid_relpath(f->string) || !cJSON_IsString(f)) {
			snprintf(err->message, sizeof(err->message), "bad file entry \"%.200s\": "
				 "paths are relative without '..', contents base64", f->string);
			return -EINVAL;
		}
		buf = malloc(strlen(f->valuestring) / 4 * 3 + 3);
		if (!buf)
			return -ENOMEM;
		n = b64_decode(f->valuestring, strlen(f->valuestring), buf);
		total += n > 0 ? (size_t)n : 0;
		ret = n < 0 ? -EINVAL : total > limit ? -EFBIG :
		      admin_write_file(dir, f->string, buf, (size_t)n);
		free(buf);
		if (ret) {
			snprintf(err->message, sizeof(err->message), "file %.200s: %s",
				 f->string, ret == -EINVAL ? "contents are not valid base64" :
				 strerror(-ret));
			return ret;
		}
	}
	return 0;
}

/* ---- deploy ---- */

struct admin_deploy {
	char name[64];
	int64_t version;
	char dir[4096];
	char reasons[1024];
	struct fn *fn;
	struct mf_error err;
};

static cJSON *admin_reasons(const char *reasons)
{
	cJSON *arr = cJSON_CreateArray();
	char *copy = strdup(reasons), *line, *save = NULL;

	for (line = copy ? strtok_r(copy, "\n", &save) : NULL; line;
	     line = strtok_r(NULL, "\n", &save))
		cJSON_AddItemToArray(arr, cJSON_CreateString(line));
	free(copy);
	return arr;
}

static cJSON *admin_fn_json(const struct gw *gw, const struct fn *fn, int64_t deployed_at)
{
	cJSON *o = cJSON_CreateObject(), *lim = cJSON_CreateObject(), *env;
	char url[512];
	size_t i;

	snprintf(url, sizeof(url), "http://%s/fn/%s/", gw->cfg->listen, fn->name);
	cJSON_AddStringToObject(o, "name", fn->name);
	cJSON_AddNumberToObject(o, "version", (double)fn->version);
	cJSON_AddStringToObject(o, "tier", gw->tiers[fn->tier].ops->name);
	cJSON_AddStringToObject(o, "runtime", fn->runtime);
	cJSON_AddStringToObject(o, "entry", fn->entry);
	cJSON_AddStringToObject(o, "url", url);
	cJSON_AddNumberToObject(o, "deployed_at", (double)deployed_at);
	cJSON_AddStringToObject(o, "isolation", fn->strict ? "strict" : "standard");
	cJSON_AddStringToObject(o, "state", fn->keep_state ? "keep" : "none");
	cJSON_AddNumberToObject(lim, "cpu_ms", fn->limits.cpu_ms);
	cJSON_AddNumberToObject(lim, "wall_s", fn->limits.wall_ms / 1000.0);
	cJSON_AddNumberToObject(lim, "memory_mb", fn->limits.memory_mb);
	cJSON_AddNumberToObject(lim, "max_instances", fn->limits.max_instances);
	cJSON_AddNumberToObject(lim, "concurrency", fn->limits.concurrency);
	cJSON_AddNumberToObject(lim, "tmp_mb", fn->limits.tmp_mb);
	cJSON_AddNumberToObject(lim, "queue", fn->limits.queue);
	cJSON_AddItemToObject(o, "limits", lim);
	env = cJSON_AddArrayToObject(o, "env");
	for (i = 0; i < fn->nenv; i++)	/* names only: values may be secrets */
		cJSON_AddItemToArray(env, cJSON_CreateString(fn->env[i].name));
	return o;
}

static int admin_prepare(struct gw *gw, struct admin_deploy *d, const cJSON *manifest)
{
	struct tier *t;
	int ret;

	ret = mf_parse(manifest, d->name, d->dir, &d->fn, d->reasons, sizeof(d->reasons),
		       &d->err);
	if (ret)
		return ret;
	d->fn->version = d->version;
	t = &gw->tiers[d->fn->tier];
	(void)gw_entry_make(gw, d->name);	/* without it, only the log lines are lost */
	ret = t->ops->prepare(t, d->fn, d->err.message, sizeof(d->err.message));
	if (ret) {
		snprintf(d->err.field, sizeof(d->err.field), "entry");
		if (!d->err.message[0])
			snprintf(d->err.message, sizeof(d->err.message), "%s", strerror(-ret));
	}
	return ret;
}

/* Writes the files to a temporary directory and renames it, so a version's directory
 * is either complete or absent. */
static int admin_stage(struct gw *gw, struct admin_deploy *d, const cJSON *files)
{
	char tmp[4200];
	int ret, tries = 0;

	/* A directory the registry does not know (kept because the registry was lost, see
	 * daemon_sweep) is not ours to overwrite: take the next version number. */
	do
		snprintf(d->dir, sizeof(d->dir), "%s/functions/%s/v%lld", gw->cfg->data_dir,
			 d->name, (long long)d->version);
	while (access(d->dir, F_OK) == 0 && ++tries < 1000 && ++d->version);
	snprintf(tmp, sizeof(tmp), "%s.tmp", d->dir);
	gw_rmtree(tmp);
	ret = gw_mkdir_parents(tmp, 0755);
	if (!ret && mkdir(tmp, 0755))
		ret = -errno;
	if (!ret)
		ret = admin_write_files(files, tmp, gw->cfg->max_deploy, &d->err);
	if (!ret && rename(tmp, d->dir))
		ret = -errno;
	if (ret) {
		if (!d->err.message[0])
			snprintf(d->err.message, sizeof(d->err.message), "cannot store files: %s",
				 strerror(-ret));
		gw_rmtree(tmp);
	}
	return ret;
}

static int admin_record(struct gw *gw, struct admin_deploy *d, const cJSON *manifest)
{
	char *text = manifest ? cJSON_PrintUnformatted(manifest) : strdup("{}");
	struct reg_row row = {
		.name = d->name, .version = d->version, .manifest = text,
		.tier = gw->tiers[d->fn->tier].ops->name, .runtime = d->fn->runtime,
		.entry = d->fn->entry, .dir = d->dir,
	};
	int ret = text ? reg_deploy(gw->reg, &row) : -ENOMEM;

	free(text);
	return ret;
}

static void admin_deploy_fail(struct inv *inv, struct admin_deploy *d, int ret)
{
	/* A full disk names the file it was writing, but it is the server's to fix. */
	int full = ret == -ENOSPC || ret == -EDQUOT;

	if (ret == -ECANCELED) {	/* a tier's build ended by the daemon stopping */
		inv_fail(inv, 503, "shutting_down", "the daemon stopped before the deploy was "
			 "done; nothing was deployed");
		return;
	}
	if (!full && (ret == -EINVAL || ret == -EFBIG || d->err.field[0])) {
		if (ret == -EFBIG) {
			inv_fail(inv, 413, "deploy_too_large", "%s", d->err.message);
			return;
		}
		admin_field_error(inv, &d->err);
		return;
	}
	log_error("deploy %s v%lld: %s", d->name, (long long)d->version,
		  d->err.message[0] ? d->err.message : strerror(-ret));
	inv_fail(inv, full ? 507 : 500, "deploy_failed", "%s%s", full ? "the data directory's "
		 "file system is full: " : "", d->err.message[0] ? d->err.message : strerror(-ret));
}

/*
 * cJSON ends strings at an escaped NUL, so "a.js\u0000../x" would silently become
 * "a.js". Such a deploy is refused before parsing: an escape is a backslash preceded
 * by an even number of backslashes.
 */
static int admin_has_nul_escape(const char *s, size_t len)
{
	size_t i, k;

	for (i = 0; i + 6 <= len; i++) {
		if (s[i] != '\\' || strncasecmp(s + i + 1, "u0000", 5))
			continue;
		for (k = 0; k < i && s[i - 1 - k] == '\\'; k++)
			;
		if (k % 2 == 0)
			return 1;
	}
	return 0;
}

/*
 * The body as one JSON value. cJSON stops at the end of the first value and ignores
 * what follows, so a second object or garbage after it would go unnoticed: only white
 * space may follow.
 */
static cJSON *admin_parse_whole(const char *text, size_t len)
{
	const char *end = NULL;
	cJSON *v = cJSON_ParseWithLengthOpts(text, len, &end, 0);

	while (v && end < text + len && strchr(" \t\r\n", *end) && *end)
		end++;
	if (v && end != text + len) {
		cJSON_Delete(v);
		return NULL;
	}
	return v;
}

/* The deploy body: {"manifest": {...}, "files": {"path": "<base64>"}}. */
static cJSON *admin_deploy_body(struct inv *inv, cJSON **manifest, cJSON **files)
{
	cJSON *body;

	if (admin_has_nul_escape(inv->req.body, inv->req.body_len)) {
		inv_fail(inv, 400, "invalid_request", "the deploy holds a NUL character (\\u0000),"
			 " which no file name or manifest string may contain");
		return NULL;
	}
	body = admin_parse_whole(inv->req.body, inv->req.body_len);
	*manifest = cJSON_GetObjectItemCaseSensitive(body, "manifest");
	*files = cJSON_GetObjectItemCaseSensitive(body, "files");
	if (cJSON_IsObject(body) && cJSON_IsObject(*files) &&
	    !(*manifest && cJSON_IsNull(*manifest)))
		return body;
	cJSON_Delete(body);
	inv_fail(inv, 400, "invalid_request", "the body must be JSON {\"manifest\": {...}, "
		 "\"files\": {\"path\": \"<base64>\"}}");
	return NULL;
}

static void admin_advise_answer(struct gw *gw, struct inv *inv, const struct admin_deploy *d)
{
	cJSON *out = cJSON_CreateObject();

	cJSON_AddStringToObject(out, "tier", gw->tiers[d->fn->tier].ops->name);
	cJSON_AddStringToObject(out, "runtime", d->fn->runtime);
	cJSON_AddStringToObject(out, "entry", d->fn->entry);
	cJSON_AddItemToObject(out, "reasons", admin_reasons(d->reasons));
	admin_json(inv, 200, out);
}

/* Makes the new version live and answers 201 with it. */
static void admin_deploy_answer(struct gw *gw, struct inv *inv, struct admin_deploy *d)
{
	int64_t now = (int64_t)time(NULL);
	cJSON *out = admin_fn_json(gw, d->fn, now);

	cJSON_AddItemToObject(out, "reasons", admin_reasons(d->reasons));
	log_info("deployed %s v%lld (%s, %s)", d->name, (long long)d->version,
		 gw->tiers[d->fn->tier].ops->name, d->fn->runtime);
	gw_fn_install(gw, d->name, d->fn, now);
	d->fn = NULL;	/* the table holds it now */
	admin_json(inv, 201, out);
}

/*
 * Deploy, or with advise_only, everything up to the choice of tier and nothing after:
 * stage the files, validate the manifest, compile, record, swap the live version.
 */
static void admin_deploy(struct gw *gw, struct inv *inv, const char *name, int advise_only)
{
	struct admin_deploy d = { 0 };
	cJSON *body, *manifest, *files;
	int ret;

	body = admin_deploy_body(inv, &manifest, &files);
	if (!body)
		return;
	snprintf(d.name, sizeof(d.name), "%s", name);
	ret = reg_next_version(gw->reg, name, &d.version);
	if (!ret)
		ret = admin_stage(gw, &d, files);
	if (!ret && advise_only)
		ret = mf_parse(manifest, d.name, d.dir, &d.fn, d.reasons, sizeof(d.reasons),
			       &d.err);
	else if (!ret)
		ret = admin_prepare(gw, &d, manifest);
	if (!ret && !advise_only)
		ret = admin_record(gw, &d, manifest);
	if (ret)
		admin_deploy_fail(inv, &d, ret);
	else if (advise_only)
		admin_advise_answer(gw, inv, &d);
	else
		admin_deploy_answer(gw, inv, &d);
	if (ret || advise_only) {
		gw_rmtree(d.dir);
		gw_fn_dir_prune(gw, d.name);	/* a name never deployed leaves no directory */
	}
	fn_unref(d.fn);
	cJSON_Delete(body);
}

/* ---- reading ---- */

static int admin_by_name(const void *a, const void *b)
{
	return strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(*(cJSON *const *)a, "name")),
		      cJSON_GetStringValue(cJSON_GetObjectItem(*(cJSON *const *)b, "name")));
}

/*
 * A deployed version the daemon could not load when it started (its runtime is gone, a
 * snapshot cannot be made...): listed, so that it does not vanish while its requests
 * get 503, with the reason for its owner.
 */
static cJSON *admin_failed_json(const struct gw_entry *e)
{
	cJSON *o = cJSON_CreateObject();

	cJSON_AddStringToObject(o, "name", e->name);
	cJSON_AddNumberToObject(o, "version", (double)e->load_version);
	cJSON_AddNumberToObject(o, "deployed_at", (double)e->deployed_at);
	cJSON_AddStringToObject(o, "status", "failed");
	cJSON_AddStringToObject(o, "error", e->load_error);
	return o;
}

static size_t admin_count_listed(const struct gw *gw)
{
	const struct gw_entry *e;
	size_t i, n = 0;

	for (i = 0; i < gw->nbuckets; i++)
		for (e = gw->buckets[i]; e; e = e->next)
			n += e->fn || e->load_error;
	return n;
}

/* Live functions, and those that failed to load, sorted by name. */
static void admin_list(struct gw *gw, struct inv *inv)
{
	cJSON *o = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(o, "functions");
	cJSON **items = NULL;
	struct gw_entry *e;
	size_t i, n = 0;

	pthread_rwlock_rdlock(&gw->lock);
	items = calloc(admin_count_listed(gw) + 1, sizeof(*items));
	for (i = 0; items && i < gw->nbuckets; i++)
		for (e = gw->buckets[i]; e; e = e->next)
			if (e->fn)
				items[n++] = admin_fn_json(gw, e->fn, e->deployed_at);
			else if (e->load_error)
				items[n++] = admin_failed_json(e);
	pthread_rwlock_unlock(&gw->lock);
	if (!items) {
		cJSON_Delete(o);
		inv_fail(inv, 500, "internal", "out of memory");
		return;
	}
	qsort(items, n, sizeof(*items), admin_by_name);
	for (i = 0; i < n; i++)
		cJSON_AddItemToArray(arr, items[i]);
	free(items);
	admin_json(inv, 200, o);
}

/* 404 for a name nothing is deployed under, naming the deployed function it is probably
 * a typo of (the admin API is the operator's: other names are no secret there). */
static void admin_no_function(struct gw *gw, struct inv *inv, const char *name)
{
	const char **words, *close = NULL;
	char hint[96] = "";
	struct gw_entry *e;
	size_t i, n = 0;

	pthread_rwlock_rdlock(&gw->lock);
	words = calloc(admin_count_listed(gw) + 1, sizeof(*words));
	for (i = 0; words && i < gw->nbuckets; i++)
		for (e = gw->buckets[i]; e; e = e->next)
			if (e->fn || e->load_error)
				words[n++] = e->name;
	if (words)
		close = typo_closest(name, words);
	if (close)
		snprintf(hint, sizeof(hint), " (did you mean %s?)", close);
	pthread_rwlock_unlock(&gw->lock);
	free(words);
	inv_fail(inv, 404, "not_found", "no function named %s%s", name, hint);
}

static void admin_show(struct gw *gw, struct inv *inv, const char *name)
{
	struct gw_entry *e;
	struct fn *fn = gw_fn_lookup(gw, name, strlen(name), &e);
	cJSON *o = NULL, *st;
	int c;

	if (!fn) {
		pthread_rwlock_rdlock(&gw->lock);
		if (e && e->load_error)
			o = admin_failed_json(e);
		pthread_rwlock_unlock(&gw->lock);
		if (o)
			admin_json(inv, 200, o);
		else
			admin_no_function(gw, inv, name);
		return;
	}
	o = admin_fn_json(gw, fn, e->deployed_at);
	st = cJSON_AddObjectToObject(o, "stats");
	for (c = 1; c < 6; c++) {
		char key[8];

		snprintf(key, sizeof(key), "%dxx", c);
		cJSON_AddNumberToObject(st, key, (double)atomic_load(&e->stats.by_class[c]));
	}
	cJSON_AddNumberToObject(st, "cold_starts", (double)atomic_load(&e->stats.cold_starts));
	fn_unref(fn);
	admin_json(inv, 200, o);
}

static void admin_delete(struct gw *gw, struct inv *inv, const char *name)
{
	cJSON *o;
	int ret = reg_delete(gw->reg, name);

	if (ret == -ENOENT) {
		admin_no_function(gw, inv, name);
		return;
	}
	if (ret) {
		log_error("delete %s: registry: %s", name, strerror(-ret));
		inv_fail(inv, 500, "registry", "could not record the delete");
		return;
	}
	gw_fn_install(gw, name, NULL, 0);
	gw_fn_logs_clear(gw, name);
	log_info("deleted %s", name);
	o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "deleted", name);
	admin_json(inv, 200, o);
}

static long admin_query_num(const char *query, const char *key, long dflt)
{
	size_t klen = strlen(key);
	const char *p = query;

	while (p && *p) {
		if (!strncmp(p, key, klen) && p[klen] == '=')
			return strtol(p + klen + 1, NULL, 10);
		p = strchr(p, '&');
		p = p ? p + 1 : NULL;
	}
	return dflt;
}

/* A string member from bytes that may hold NUL (cJSON's strings stop at one). */
static void admin_add_bytes(cJSON *obj, const char *key, const char *s, size_t len)
{
	struct strbuf sb = STRBUF_INIT;

	sb_json_str(&sb, s, len);
	if (!sb_failed(&sb))
		cJSON_AddRawToObject(obj, key, sb.buf);
	sb_free(&sb);
}

static void admin_logs(struct gw *gw, struct inv *inv, const char *name)
{
	long since = admin_query_num(inv->req.query, "since", 0);
	long limit = admin_query_num(inv->req.query, "limit", 100);
	struct gw_logring *r;
	struct gw_entry *e;
	cJSON *o, *arr;
	uint64_t seq, first;

	e = gw_entry_find(gw, name);	/* only the entry: logs outlive versions */
	if (!e) {
		admin_no_function(gw, inv, name);
		return;
	}
	r = &e->logs;
	o = cJSON_CreateObject();
	arr = cJSON_AddArrayToObject(o, "lines");
	limit = limit < 1 ? 1 : limit > GW_LOG_RING ? GW_LOG_RING : limit;
	pthread_mutex_lock(&r->lock);
	first = r->next_seq > GW_LOG_RING ? r->next_seq - GW_LOG_RING : 1;
	if (first < r->first_seq)
		first = r->first_seq;
	/* Without since: the newest `limit` lines. */
	seq = since > 0 ? (uint64_t)since : r->next_seq - (uint64_t)limit;
	if (since <= 0 && r->next_seq <= (uint64_t)limit)
		seq = 1;
	for (seq = seq < first ? first : seq; r->lines && seq < r->next_seq && limit-- > 0;
	     seq++) {
		const struct gw_logline *l = &r->lines[seq % GW_LOG_RING];
		cJSON *line = cJSON_CreateObject();

		cJSON_AddNumberToObject(line, "seq", (double)l->seq);
		cJSON_AddStringToObject(line, "ts", l->ts);
		cJSON_AddStringToObject(line, "request_id", l->request_id);
		cJSON_AddStringToObject(line, "stream", l->stream);
		admin_add_bytes(line, "msg", l->msg, l->len);
		cJSON_AddItemToArray(arr, line);
	}
	pthread_mutex_unlock(&r->lock);
	cJSON_AddNumberToObject(o, "next", (double)seq);
	admin_json(inv, 200, o);
}

/* What /_stoke/health says, in the status too: `stoke status` shows it. */
static void admin_health(struct gw *gw, cJSON *o)
{
	struct gw_health h;

	gw_health_get(gw, &h);
	cJSON_AddBoolToObject(o, "accepting", h.accepting);
	if (h.reason)
		cJSON_AddStringToObject(o, "reason", h.reason);
	cJSON_AddNumberToObject(o, "mem_available_mb", (double)h.mem_available_mb);
	cJSON_AddNumberToObject(o, "min_free_mb", (double)h.min_free_mb);
}

static void admin_status(struct gw *gw, struct inv *inv)
{
	cJSON *o = cJSON_CreateObject(), *tiers = cJSON_CreateArray();
	int i;

	cJSON_AddStringToObject(o, "version", STOKE_VERSION);
	cJSON_AddNumberToObject(o, "uptime_s", (double)(gw_now_ns() - gw->started_ns) / 1e9);
	cJSON_AddStringToObject(o, "listen", gw->cfg->listen);
	cJSON_AddStringToObject(o, "data_dir", gw->cfg->data_dir);
	cJSON_AddNumberToObject(o, "functions", (double)gw->nlive);
	cJSON_AddNumberToObject(o, "requests_total", (double)atomic_load(&gw->requests));
	cJSON_AddNumberToObject(o, "inflight", (double)gw_inflight_others(gw));
	admin_health(gw, o);
	cJSON_AddNumberToObject(o, "max_body_bytes", (double)gw->cfg->max_body);
	cJSON_AddNumberToObject(o, "max_deploy_bytes", (double)gw->cfg->max_deploy);
	for (i = 0; i < TIER_COUNT; i++)
		cJSON_AddItemToArray(tiers, cJSON_CreateString(gw->tiers[i].ops->name));
	cJSON_AddItemToObject(o, "tiers", tiers);
	admin_json(inv, 200, o);
}

static void admin_metrics(struct gw *gw, struct inv *inv)
{
	static const char ctype[] = "text/plain; version=0.0.4";
	struct strbuf sb = STRBUF_INIT;
	size_t len;
	char *text;

	gw_metrics_render(gw, &sb);
	text = sb_detach(&sb, &len);
	if (!text) {
		inv_fail(inv, 500, "internal", "out of memory");
		return;
	}
	inv->resp.status = 200;
	inv_resp_add_header(inv, "content-type", 12, ctype, sizeof(ctype) - 1);
	inv_resp_set_body(inv, text, len);
}

/* ---- garbage collection ---- */

/* POST /_stoke/gc: each tier frees what no deployed version needs; {"TIER": {...}}. */
static void admin_gc(struct gw *gw, struct inv *inv)
{
	cJSON *o = cJSON_CreateObject(), *part;
	struct strbuf sb;
	char err[512];
	int i, ret;

	for (i = 0; i < TIER_COUNT; i++) {
		struct tier *t = &gw->tiers[i];

		if (!t->ops->gc)
			continue;
		sb = (struct strbuf)STRBUF_INIT;
		err[0] = '\0';
		ret = t->ops->gc(t, &sb, err, sizeof(err));
		part = ret || sb_failed(&sb) ? NULL : cJSON_ParseWithLength(sb.buf, sb.len);
		sb_free(&sb);
		if (!part) {
			cJSON_Delete(o);
			log_error("gc of the %s tier failed: %s", t->ops->name,
				  err[0] ? err : strerror(ret ? -ret : ENOMEM));
			inv_fail(inv, 500, "gc", "gc of the %s tier failed: %s", t->ops->name,
				 err[0] ? err : strerror(ret ? -ret : ENOMEM));
			return;
		}
		cJSON_AddItemToObject(o, t->ops->name, part);
	}
	admin_json(inv, 200, o);
}

/* ---- usage and cost ---- */

/*
 * List prices the estimates use unless <data-dir>/prices.json overrides them (same
 * shape as the "prices" object of the answer). AWS Lambda x86 in us-east-1 and
 * Cloudflare Workers Standard, as published on 2025-01-01.
 */
static const char admin_default_prices[] =
	"{\"lambda\":{\"per_million_requests\":0.20,\"per_gb_s\":0.0000166667,"
	"\"as_of\":\"2025-01-01\"},"
	"\"workers\":{\"per_million_requests\":0.30,\"per_million_cpu_ms\":0.02,"
	"\"as_of\":\"2025-01-01\"}}";

static cJSON *admin_prices(struct gw *gw)
{
	char path[4096];
	cJSON *p = NULL;
	FILE *f;

	snprintf(path, sizeof(path), "%s/prices.json", gw->cfg->data_dir);
	f = fopen(path, "r");
	if (f) {
		char buf[4096];
		size_t n = fread(buf, 1, sizeof(buf) - 1, f);

		buf[n] = '\0';
		fclose(f);
		p = cJSON_Parse(buf);
		if (!cJSON_IsObject(p)) {
			log_warn("%s is not a JSON object; using the default prices", path);
			cJSON_Delete(p);
			p = NULL;
		}
	}
	return p ? p : cJSON_Parse(admin_default_prices);
}

static double admin_price(const cJSON *prices, const char *vendor, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(prices, vendor);

	v = cJSON_GetObjectItemCaseSensitive(v, key);
	return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

struct admin_usage {
	cJSON *rows;
	const cJSON *prices;
	double total[2];
};

static int admin_usage_row(void *arg, const struct meter_usage *u)
{
	struct admin_usage *a = arg;
	cJSON *o = cJSON_CreateObject();
	double req_m = (double)u->invocations / 1e6;
	double lambda = req_m * admin_price(a->prices, "lambda", "per_million_requests") +
			u->gb_s * admin_price(a->prices, "lambda", "per_gb_s");
	double workers = req_m * admin_price(a->prices, "workers", "per_million_requests") +
			 u->cpu_ms / 1e6 * admin_price(a->prices, "workers", "per_million_cpu_ms");

	cJSON_AddStringToObject(o, "function", u->function);
	cJSON_AddStringToObject(o, "tier", u->tier);
	cJSON_AddNumberToObject(o, "invocations", (double)u->invocations);
	cJSON_AddNumberToObject(o, "cold_starts", (double)u->cold);
	cJSON_AddNumberToObject(o, "errors", (double)u->errors);
	cJSON_AddNumberToObject(o, "wall_ms", u->wall_ms);
	cJSON_AddNumberToObject(o, "cpu_ms", u->cpu_ms);
	cJSON_AddNumberToObject(o, "gb_s", u->gb_s);
	cJSON_AddNumberToObject(o, "peak_memory_mb_max", u->peak_mb_max);
	cJSON_AddNumberToObject(o, "peak_memory_mb_avg", u->peak_mb_avg);
	cJSON_AddNumberToObject(o, "cost_lambda_usd", lambda);
	cJSON_AddNumberToObject(o, "cost_workers_usd", workers);
	cJSON_AddItemToArray(a->rows, o);
	a->total[0] += lambda;
	a->total[1] += workers;
	return 0;
}

static void admin_usage(struct gw *gw, struct inv *inv)
{
	char function[64] = "";
	const char *q = strstr(inv->req.query, "function=");
	struct admin_usage a = { 0 };
	cJSON *o;
	int ret;

	if (q && (q == inv->req.query || q[-1] == '&'))
		snprintf(function, sizeof(function), "%.*s", (int)strcspn(q + 9, "&"), q + 9);
	meter_flush(gw->meter);	/* answer with every invocation finished so far */
	o = cJSON_CreateObject();
	a.rows = cJSON_AddArrayToObject(o, "usage");
	a.prices = admin_prices(gw);
	ret = meter_usage(gw->meter, function[0] ? function : NULL,
			  admin_query_num(inv->req.query, "since", 0), admin_usage_row, &a);
	cJSON_AddNumberToObject(o, "cost_lambda_usd", a.total[0]);
	cJSON_AddNumberToObject(o, "cost_workers_usd", a.total[1]);
	cJSON_AddItemToObject(o, "prices", (cJSON *)a.prices);
	if (ret) {
		cJSON_Delete(o);
		log_error("usage query failed: %s", strerror(-ret));
		inv_fail(inv, 500, "registry", "could not read usage");
		return;
	}
	admin_json(inv, 200, o);
}

/* ---- dispatch ---- */

static int admin_is(const struct inv *inv, const char *method)
{
	return !strcmp(inv->req.method, method);
}

/* Splits /_stoke/functions/NAME[/logs]; returns 0 when path is not of that shape. */
static int admin_fn_path(const char *path, char *name, size_t len, const char **sub)
{
	static const char prefix[] = "/_stoke/functions/";
	const char *p = path + sizeof(prefix) - 1, *slash;
	size_t n;

	if (strncmp(path, prefix, sizeof(prefix) - 1))
		return 0;
	slash = strchr(p, '/');
	n = slash ? (size_t)(slash - p) : strlen(p);
	if (n >= len)	/* too long to be a name: validation will say so */
		n = len - 1;
	memcpy(name, p, n);
	name[n] = '\0';
	*sub = slash ? slash : "";
	return 1;
}

static void admin_fn_route(struct gw *gw, struct inv *inv, const char *name, const char *sub)
{
	int write = admin_is(inv, "PUT") || admin_is(inv, "POST");

	if (!mf_valid_name(name, strlen(name))) {
		struct mf_error err = { .field = "name" };

		mf_suggest_name(name, err.suggestion, sizeof(err.suggestion));
		snprintf(err.message, sizeof(err.message), "\"%s\" is not a valid function name: "
			 "use 1-63 characters of a-z, 0-9 and '-', not starting or ending with "
			 "'-'%s%s%s", name, err.suggestion[0] ? " (\"" : "", err.suggestion,
			 err.suggestion[0] ? "\" is)" : "");
		admin_field_error(inv, &err);
	} else if (!*sub && write) {
		admin_deploy(gw, inv, name, 0);
	} else if (!*sub && admin_is(inv, "GET")) {
		admin_show(gw, inv, name);
	} else if (!*sub && admin_is(inv, "DELETE")) {
		admin_delete(gw, inv, name);
	} else if (!strcmp(sub, "/logs") && admin_is(inv, "GET")) {
		admin_logs(gw, inv, name);
	} else if (!strcmp(sub, "/advise") && write) {
		admin_deploy(gw, inv, name, 1);
	} else {
		inv_fail(inv, 405, "method_not_allowed", "%s %s is not an admin call",
			 inv->req.method, inv->req.path);
	}
}

/* The read-only admin calls: one path, GET only. */
static const struct {
	const char *path;
	void (*handle)(struct gw *gw, struct inv *inv);
} admin_reads[] = {
	{ "/_stoke/status", admin_status },
	{ "/_stoke/metrics", admin_metrics },
	{ "/_stoke/functions", admin_list },
	{ "/_stoke/usage", admin_usage },
};

static void admin_handle(struct gw *gw, struct inv *inv)
{
	const char *path = inv->req.path, *sub;
	char name[128];
	size_t i;

	for (i = 0; i < sizeof(admin_reads) / sizeof(admin_reads[0]); i++) {
		if (strcmp(path, admin_reads[i].path))
			continue;
		if (admin_is(inv, "GET"))
			admin_reads[i].handle(gw, inv);
		else
			inv_fail(inv, 405, "method_not_allowed", "%s takes GET, not %s", path,
				 inv->req.method);
		return;
	}
	if (!strcmp(path, "/_stoke/gc")) {
		if (admin_is(inv, "POST"))
			admin_gc(gw, inv);
		else
			inv_fail(inv, 405, "method_not_allowed", "%s takes POST, not %s", path,
				 inv->req.method);
	} else if (admin_fn_path(path, name, sizeof(name), &sub)) {
		admin_fn_route(gw, inv, name, sub);
	} else {
		inv_fail(inv, 404, "not_found", "no admin call %s %s", inv->req.method, path);
	}
}

static void *admin_main(void *arg)
{
	struct tier *t = arg;
	struct admin_queue *q = t->priv;
	struct inv *inv;

	for (;;) {
		pthread_mutex_lock(&q->lock);
		while (!q->count && !q->stop)
			pthread_cond_wait(&q->cond, &q->lock);
		if (!q->count) {
			pthread_mutex_unlock(&q->lock);
			return NULL;
		}
		inv = q->items[q->head];
		q->head = (q->head + 1) % q->cap;
		q->count--;
		pthread_mutex_unlock(&q->lock);
		admin_handle(gw_global, inv);
		inv_done(inv);
	}
}

static int admin_start(struct tier *t)
{
	struct admin_queue *q = calloc(1, sizeof(*q));

	if (!q)
		return -ENOMEM;
	q->cap = 1024;
	q->items = calloc(q->cap, sizeof(*q->items));
	if (!q->items) {
		free(q);
		return -ENOMEM;
	}
	pthread_mutex_init(&q->lock, NULL);
	pthread_cond_init(&q->cond, NULL);
	t->priv = q;
	return -pthread_create(&q->tid, NULL, admin_main, t);
}

static void admin_invoke(struct tier *t, struct inv *inv)
{
	struct admin_queue *q = t->priv;
	int full;

	pthread_mutex_lock(&q->lock);
	full = q->count == q->cap;
	if (!full) {
		q->items[(q->head + q->count) % q->cap] = inv;
		q->count++;
		pthread_cond_signal(&q->cond);
	}
	pthread_mutex_unlock(&q->lock);
	if (full) {
		inv_fail(inv, 503, "busy", "too many admin requests queued; retry shortly");
		inv_done(inv);
	}
}

static void admin_stop(struct tier *t)
{
	struct admin_queue *q = t->priv;

	if (!q)
		return;
	pthread_mutex_lock(&q->lock);
	q->stop = 1;
	pthread_cond_signal(&q->cond);
	pthread_mutex_unlock(&q->lock);
	pthread_join(q->tid, NULL);
	free(q->items);
	free(q);
	t->priv = NULL;
}

const struct tier_ops gw_admin_ops = {
	.name = "admin",
	.start = admin_start,
	.invoke = admin_invoke,
	.stop = admin_stop,
};

/* ---- loading at start ---- */

/* What loading the registry at start did, for its log line. */
struct admin_load {
	struct gw *gw;
	unsigned loaded, failed;
};

static int admin_load_row(void *arg, const struct reg_row *row)
{
	struct admin_load *l = arg;
	struct gw *gw = l->gw;
	struct admin_deploy d = { .version = row->version };
	cJSON *manifest = cJSON_Parse(row->manifest);
	struct gw_entry *e;
	int ret;

	snprintf(d.name, sizeof(d.name), "%s", row->name);
	snprintf(d.dir, sizeof(d.dir), "%s", row->dir);
	log_debug("loading %s v%lld", row->name, (long long)row->version);
	ret = admin_prepare(gw, &d, manifest);
	cJSON_Delete(manifest);
	if (!ret) {
		gw_fn_install(gw, row->name, d.fn, row->deployed_at);
		l->loaded++;
		return 0;
	}
	fn_unref(d.fn);
	l->failed++;
	log_error("cannot load %s v%lld: %s", row->name, (long long)row->version,
		  d.err.message);
	pthread_rwlock_wrlock(&gw->lock);
	e = gw_entry_get(gw, row->name, strlen(row->name), 1);
	if (e) {
		free(e->load_error);
		e->load_error = strdup(d.err.message);
		e->load_version = row->version;
		e->deployed_at = row->deployed_at;
	}
	pthread_rwlock_unlock(&gw->lock);
	return 0;
}

/* Before listening: every deployed version is prepared again (compiled, snapshotted
 * where no snapshot survives), which takes a while with many micro-VM functions. */
int gw_admin_load(struct gw *gw)
{
	struct admin_load l = { .gw = gw };
	uint64_t t0 = gw_now_ns();
	int ret;

	log_info("loading the deployed functions");
	ret = reg_each(gw->reg, admin_load_row, &l);
	log_info("loaded %u functions in %.1f s%s", l.loaded, (gw_now_ns() - t0) / 1e9,
		 l.failed ? " (some could not be loaded: see above)" : "");
	return ret;
}

/* Whether functions/NAME/VER is the live version, or the one that failed to load (it
 * stays listed with its error). By version number, not path: the data directory may
 * be spelled another way than when the version was stored. */
static int admin_version_kept(struct gw *gw, const char *name, const char *ver)
{
	struct gw_entry *e;
	char want[32] = "";

	pthread_rwlock_rdlock(&gw->lock);
	e = gw_entry_get(gw, name, strlen(name), 0);
	if (e && e->fn)
		snprintf(want, sizeof(want), "v%lld", (long long)e->fn->version);
	else if (e && e->load_error)
		snprintf(want, sizeof(want), "v%lld", (long long)e->load_version);
	pthread_rwlock_unlock(&gw->lock);
	return want[0] && !strcmp(want, ver);
}

static void admin_sweep_function(struct gw *gw, const char *top, const char *name)
{
	char dir[4400], path[4700];
	struct dirent *v;
	DIR *d;

	snprintf(dir, sizeof(dir), "%s/%s", top, name);
	d = opendir(dir);
	if (!d)
		return;
	while ((v = readdir(d))) {
		if (!strcmp(v->d_name, ".") || !strcmp(v->d_name, ".."))
			continue;
		if (admin_version_kept(gw, name, v->d_name))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, v->d_name);
		log_info("removing %s: no deployed function uses it", path);
		gw_rmtree(path);
	}
	closedir(d);
	gw_fn_dir_prune(gw, name);
}

/*
 * At start, once the registry is loaded and before anything is served: version
 * directories no function uses are leftovers (versions replaced or deleted under a
 * daemon that was killed before their last request ended, a deploy cut short) and
 * go. Versions replaced while the daemon runs go when their last request ends.
 */
void gw_sweep_versions(struct gw *gw)
{
	char top[4200];
	struct dirent *f;
	DIR *d;

	snprintf(top, sizeof(top), "%s/functions", gw->cfg->data_dir);
	d = opendir(top);
	if (!d)
		return;
	while ((f = readdir(d)))
		if (f->d_name[0] != '.' && mf_valid_name(f->d_name, strlen(f->d_name)))
			admin_sweep_function(gw, top, f->d_name);
	closedir(d);
}
