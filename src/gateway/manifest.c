/* stoke.json: every field is checked, unknown fields are errors (a typo must not be
 * silently ignored), and whatever is left unset gets a documented default. */
#include "manifest.h"
#include "common/strbuf.h"
#include "common/typo.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define MF_WALL_ISOLATE_MAX_S 30
#define MF_UNSET UINT32_MAX

static int mf_fail(struct mf_error *err, const char *field, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int mf_fail(struct mf_error *err, const char *field, const char *fmt, ...)
{
	va_list ap;

	snprintf(err->field, sizeof(err->field), "%s", field);
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
	return -EINVAL;
}

int mf_valid_name(const char *name, size_t len)
{
	size_t i;

	if (len < 1 || len > 63 || name[0] == '-' || name[len - 1] == '-')
		return 0;
	for (i = 0; i < len; i++) {
		char c = name[i];

		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
			return 0;
	}
	return 1;
}

void mf_suggest_name(const char *name, char *out, size_t size)
{
	size_t n = 0, max = size - 1 < 63 ? size - 1 : 63;
	char c;

	for (; *name && n < max; name++) {
		c = (char)tolower((unsigned char)*name);
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')))
			c = '-';
		if (c == '-' && (!n || out[n - 1] == '-'))
			continue;
		out[n++] = c;
	}
	while (n && out[n - 1] == '-')
		n--;
	out[n] = '\0';
}

/* Other names people give the allowed values; one counts only where its target is
 * allowed (a runtime of "node" suggests js). */
static const char *mf_alias(const char *s, const char *const *words)
{
	static const char *const alias[][2] = {
		{ "node", "js" }, { "nodejs", "js" }, { "javascript", "js" },
		{ "typescript", "js" }, { "ts", "js" }, { "deno", "js" }, { "bun", "js" },
		{ "python", "python3" }, { "py", "python3" }, { "c", "native" },
		{ "elf", "native" }, { "binary", "native" }, { "v8", "isolate" },
		{ "microvm", "vm" }, { "kvm", "vm" },
	};
	size_t i, j;

	for (i = 0; i < sizeof(alias) / sizeof(alias[0]); i++) {
		if (strcasecmp(s, alias[i][0]))
			continue;
		for (j = 0; words[j]; j++)
			if (!strcmp(words[j], alias[i][1]))
				return words[j];
	}
	return NULL;
}

/* " (did you mean X?)" when s is another name for, or looks like a typo of, one of
 * words, else "". */
static const char *mf_did_you_mean(const char *s, const char *const *words, char *buf,
				   size_t size)
{
	const char *close = mf_alias(s, words);

	if (!close)
		close = typo_closest(s, words);

	if (!close)
		return "";
	snprintf(buf, size, " (did you mean %s?)", close);
	return buf;
}

/* "a, b, c" from a NULL-terminated list. */
static const char *mf_join(const char *const *words, char *buf, size_t size)
{
	size_t i, n = 0;

	buf[0] = '\0';
	for (i = 0; words[i] && n < size; i++)
		n += (size_t)snprintf(buf + n, size - n, "%s%s", i ? ", " : "", words[i]);
	return buf;
}

static int mf_string(const cJSON *item, const char *field, const char *const *allowed,
		     const char **out, struct mf_error *err)
{
	char list[128], hint[64];
	size_t i;

	if (!cJSON_IsString(item))
		return mf_fail(err, field, "%s must be a string", field);
	if (!allowed) {
		*out = item->valuestring;
		return 0;
	}
	for (i = 0; allowed[i]; i++) {
		if (!strcmp(item->valuestring, allowed[i])) {
			*out = allowed[i];
			return 0;
		}
	}
	return mf_fail(err, field, "%s must be one of %s, not \"%.100s\"%s", field,
		       mf_join(allowed, list, sizeof(list)), item->valuestring,
		       mf_did_you_mean(item->valuestring, allowed, hint, sizeof(hint)));
}

struct mf_limit {
	const char *key;
	size_t offset;
	uint32_t min, max, scale;
};

static const struct mf_limit mf_limits[] = {
	{ "cpu_ms", offsetof(struct fn_limits, cpu_ms), 1, 600000, 1 },
	{ "wall_s", offsetof(struct fn_limits, wall_ms), 1, 3600, 1000 },
	{ "memory_mb", offsetof(struct fn_limits, memory_mb), 16, 16384, 1 },
	{ "max_instances", offsetof(struct fn_limits, max_instances), 1, 10000, 1 },
	{ "concurrency", offsetof(struct fn_limits, concurrency), 1, 1000, 1 },
	{ "tmp_mb", offsetof(struct fn_limits, tmp_mb), 0, 4096, 1 },
	{ "queue", offsetof(struct fn_limits, queue), 0, 100000, 1 },
};
#define MF_NLIMITS (sizeof(mf_limits) / sizeof(mf_limits[0]))

static const char *const mf_limit_keys[] = {
	"cpu_ms", "wall_s", "memory_mb", "max_instances", "concurrency", "tmp_mb", "queue",
	NULL
};

static int mf_limit_value(const cJSON *item, const struct mf_limit *l, const char *field,
			  struct fn_limits *lim, struct mf_error *err)
{
	double v = item->valuedouble;
	char shown[64];

	if (cJSON_IsNumber(item) && v == floor(v) && v >= l->min && v <= l->max) {
		*(uint32_t *)((char *)lim + l->offset) = (uint32_t)v * l->scale;
		return 0;
	}
	if (cJSON_IsNumber(item))
		snprintf(shown, sizeof(shown), "%g", v);
	else
		snprintf(shown, sizeof(shown), "a %s", cJSON_IsString(item) ? "string" :
			 cJSON_IsBool(item) ? "boolean" : cJSON_IsNull(item) ? "null" :
			 cJSON_IsArray(item) ? "list" : "object");
	return mf_fail(err, field, "%s must be a whole number from %u to %u, not %s", field,
		       l->min, l->max, shown);
}

static int mf_parse_limit(const cJSON *item, struct fn_limits *lim, struct mf_error *err)
{
	char field[64], hint[64];
	size_t i;

	snprintf(field, sizeof(field), "limits.%s", item->string);
	for (i = 0; i < MF_NLIMITS; i++)
		if (!strcmp(item->string, mf_limits[i].key))
			return mf_limit_value(item, &mf_limits[i], field, lim, err);
	return mf_fail(err, field, "unknown field %s%s", field,
		       mf_did_you_mean(item->string, mf_limit_keys, hint, sizeof(hint)));
}

static int mf_parse_limits(const cJSON *obj, struct fn_limits *lim, struct mf_error *err)
{
	const cJSON *item;
	int ret;

	if (!cJSON_IsObject(obj))
		return mf_fail(err, "limits", "limits must be an object");
	cJSON_ArrayForEach(item, obj) {
		ret = mf_parse_limit(item, lim, err);
		if (ret)
			return ret;
	}
	return 0;
}

/* POSIX environment variable names as shells accept them: [A-Za-z_][A-Za-z0-9_]*. */
static int mf_env_name(const char *s)
{
	if (!*s || isdigit((unsigned char)*s))
		return 0;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && *s != '_')
			return 0;
	return 1;
}

static int mf_parse_env(const cJSON *obj, struct fn *fn, struct mf_error *err)
{
	const cJSON *item;
	size_t n = 0;

	if (!cJSON_IsObject(obj))
		return mf_fail(err, "env", "env must be an object of strings");
	fn->env = calloc((size_t)cJSON_GetArraySize(obj) + 1, sizeof(*fn->env));
	if (!fn->env)
		return -ENOMEM;
	cJSON_ArrayForEach(item, obj) {
		struct kv *kv = &fn->env[n];

		if (!cJSON_IsString(item))
			return mf_fail(err, "env", "env.%s must be a string", item->string);
		if (!mf_env_name(item->string))
			return mf_fail(err, "env", "env name \"%.100s\" is not a valid environment "
				       "variable name: letters, digits and '_', not starting with a "
				       "digit", item->string);
		kv->name = strdup(item->string);
		kv->value = strdup(item->valuestring);
		fn->nenv = ++n;
		if (!kv->name || !kv->value)
			return -ENOMEM;
		kv->name_len = strlen(kv->name);
		kv->value_len = strlen(kv->value);
	}
	return 0;
}

/*
 * A micro-VM gets its environment on the VMM's command line (src/vmm/vm_proc.c), whose
 * argument table and string space are fixed: these limits leave room for the paths
 * beside them. Isolates take env as a JavaScript object and have no such bound.
 */
#define MF_VM_ENV_MAX 32
#define MF_VM_ENV_BYTES 4096

static int mf_check_vm_env(const struct fn *fn, struct mf_error *err)
{
	size_t i, bytes = 0;

	for (i = 0; i < fn->nenv; i++)
		bytes += fn->env[i].name_len + fn->env[i].value_len;
	if (fn->nenv <= MF_VM_ENV_MAX && bytes <= MF_VM_ENV_BYTES)
		return 0;
	return mf_fail(err, "env", "env has %zu variables and %zu bytes of names and values; "
		       "a micro-VM takes at most %d variables and %d bytes", fn->nenv, bytes,
		       MF_VM_ENV_MAX, MF_VM_ENV_BYTES);
}

static const char *const mf_tiers[] = { "auto", "isolate", "vm", NULL };
static const char *const mf_runtimes[] = { "js", "python3", "native", NULL };
static const char *const mf_isolations[] = { "standard", "strict", NULL };
static const char *const mf_states[] = { "none", "keep", NULL };

struct mf_fields {
	const char *name, *tier, *runtime, *entry, *isolation, *state;
};

static const char *const mf_fields[] = {
	"name", "tier", "runtime", "entry", "isolation", "state", "limits", "env", NULL
};

static int mf_parse_field(const cJSON *item, struct fn *fn, struct mf_fields *f,
			  struct mf_error *err)
{
	const char *key = item->string;
	char hint[64];

	if (!strcmp(key, "name"))
		return mf_string(item, key, NULL, &f->name, err);
	if (!strcmp(key, "tier"))
		return mf_string(item, key, mf_tiers, &f->tier, err);
	if (!strcmp(key, "runtime"))
		return mf_string(item, key, mf_runtimes, &f->runtime, err);
	if (!strcmp(key, "entry"))
		return mf_string(item, key, NULL, &f->entry, err);
	if (!strcmp(key, "isolation"))
		return mf_string(item, key, mf_isolations, &f->isolation, err);
	if (!strcmp(key, "state"))
		return mf_string(item, key, mf_states, &f->state, err);
	if (!strcmp(key, "limits"))
		return mf_parse_limits(item, &fn->limits, err);
	if (!strcmp(key, "env"))
		return mf_parse_env(item, fn, err);
	return mf_fail(err, key, "unknown field %.100s%s", key,
		       mf_did_you_mean(key, mf_fields, hint, sizeof(hint)));
}

static int mf_file_exists(const char *dir, const char *rel)
{
	char path[4096];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s", dir, rel);
	return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Entry files tried, in order, when the manifest names none. */
static const char *const mf_default_entries[] = {
	"index.js", "index.mjs", "index.ts", "worker.js", "main.js",
	"handler.py", "main.py", "index.py", "main", "handler", NULL
};

#define MF_HINT_FILES 32

/*
 * The entry a refused deploy probably meant, into hint ("" when none): the source file
 * at the top of dir (one whose extension names a runtime) that entry is a typo of, or,
 * without an entry, the only one there is (app.py, lambda_function.py, server.js are
 * not among the default entries). Only the first MF_HINT_FILES are looked at.
 */
static void mf_entry_hint(const char *dir, const char *entry, char *hint, size_t size)
{
	char names[MF_HINT_FILES][64];	/* longer names do not fit a suggestion */
	const char *words[MF_HINT_FILES + 1], *close;
	struct dirent *de;
	DIR *d = opendir(dir);
	size_t n = 0;

	*hint = '\0';
	if (!d)
		return;
	while (n < MF_HINT_FILES && (de = readdir(d))) {
		if (de->d_name[0] == '.' || strlen(de->d_name) >= sizeof(names[n]) ||
		    !mf_entry_runtime(de->d_name) || !mf_file_exists(dir, de->d_name))
			continue;
		snprintf(names[n], sizeof(names[n]), "%s", de->d_name);
		words[n] = names[n];
		n++;
	}
	closedir(d);
	words[n] = NULL;
	close = entry ? typo_closest(entry, words) : n == 1 ? words[0] : NULL;
	if (close)
		snprintf(hint, size, "%s", close);
}

/* An entry file that is not there: named, with the file it was probably meant to be. */
static int mf_no_entry(const char *entry, const char *dir, struct mf_error *err)
{
	char hint[64];

	mf_entry_hint(dir, entry, hint, sizeof(hint));
	if (entry)
		mf_fail(err, "entry", "entry file %s is not among the deployed files%s%s%s",
			entry, *hint ? " (did you mean " : "", hint, *hint ? "?)" : "");
	else
		mf_fail(err, "entry", "no entry file: name one with \"entry\"%s%s%s or deploy "
			"index.js, index.ts or handler.py", *hint ? " (" : "", hint,
			*hint ? " is the only source file here)" : "");
	snprintf(err->suggestion, sizeof(err->suggestion), "%s", hint);
	return -EINVAL;
}

static int mf_pick_entry(struct fn *fn, const char *entry, const char *dir,
			 struct mf_error *err)
{
	size_t i;

	if (entry) {
		if (!*entry || entry[0] == '/' || strstr(entry, ".."))
			return mf_fail(err, "entry", "entry must be a relative path inside "
				       "the function");
		if (!mf_file_exists(dir, entry))
			return mf_no_entry(entry, dir, err);
		snprintf(fn->entry, sizeof(fn->entry), "%s", entry);
		return 0;
	}
	for (i = 0; mf_default_entries[i]; i++) {
		if (mf_file_exists(dir, mf_default_entries[i])) {
			snprintf(fn->entry, sizeof(fn->entry), "%s", mf_default_entries[i]);
			return 0;
		}
	}
	return mf_no_entry(NULL, dir, err);
}

const struct mf_entry_ext mf_entry_exts[] = {
	{ ".js", "js" }, { ".mjs", "js" }, { ".ts", "js" }, { ".mts", "js" },
	{ ".wasm", "js" }, { ".py", "python3" }, { ".c", "native" }, { NULL, NULL },
};

const char *mf_entry_runtime(const char *entry)
{
	const char *base = strrchr(entry, '/'), *dot;
	size_t i;

	base = base ? base + 1 : entry;
	dot = strrchr(base, '.');
	if (!dot || dot == base)
		return "native";	/* no extension: a program */
	for (i = 0; mf_entry_exts[i].ext; i++)
		if (!strcmp(dot, mf_entry_exts[i].ext))
			return mf_entry_exts[i].runtime;
	return NULL;
}

static int mf_is_js_entry(const char *entry)
{
	const char *runtime = mf_entry_runtime(entry);

	return runtime && !strcmp(runtime, "js");
}

/* An unknown extension stays native, as before: the VM tier then checks for an ELF
 * program (stoke deploy says so before sending, naming the extensions). */
static const char *mf_default_runtime(const struct fn *fn)
{
	const char *runtime = mf_entry_runtime(fn->entry);

	return runtime ? runtime : "native";
}

/* Each rule that sends a function to a micro-VM, with the reason it gives. */
static int mf_vm_reasons(const struct fn *fn, struct strbuf *why)
{
	int n = 0;

	if (strcmp(fn->runtime, "js")) {
		sb_printf(why, "runtime %s runs only in a micro-VM\n", fn->runtime);
		n++;
	}
	if (fn->limits.wall_ms > MF_WALL_ISOLATE_MAX_S * 1000) {
		sb_printf(why, "wall-time limit %u s is over the isolate tier's %d s\n",
			  fn->limits.wall_ms / 1000, MF_WALL_ISOLATE_MAX_S);
		n++;
	}
	if (fn->strict) {
		sb_adds(why, "isolation strict asks for a hardware-isolated micro-VM\n");
		n++;
	}
	if (fn->keep_state) {
		sb_adds(why, "state keep needs memory kept across requests (micro-VM)\n");
		n++;
	}
	return n;
}

/*
 * The micro-VM tier has no JavaScript runtime yet, so JavaScript that needs a micro-VM
 * (a long wall time, strict isolation, kept state) cannot be placed anywhere: say so at
 * deploy and in advice alike, naming the rule. field is the one to change: "tier" when
 * that was asked for, else "runtime".
 */
static int mf_js_needs_vm(const char *field, const char *why, struct mf_error *err)
{
	int ret = mf_fail(err, field, "JavaScript runs only in the isolate tier (the "
			  "micro-VM tier has no JavaScript runtime yet), but %s", why);

	err->message[strcspn(err->message, "\n")] = '\0';
	return ret;
}

static int mf_choose_tier(struct fn *fn, const char *tier, char *reasons, size_t rlen,
			  struct mf_error *err)
{
	struct strbuf why = STRBUF_INIT;
	int vm = mf_vm_reasons(fn, &why);
	int js = !strcmp(fn->runtime, "js");
	int ret = 0;

	if (!strcmp(tier, "isolate") && vm) {
		ret = mf_fail(err, "tier", "tier isolate cannot run this function: %s",
			      why.buf);
		err->message[strcspn(err->message, "\n")] = '\0';
	} else if (js && vm) {
		ret = mf_js_needs_vm("runtime", why.buf, err);
	} else if (js && !strcmp(tier, "vm")) {
		ret = mf_js_needs_vm("tier", "tier vm was asked for", err);
	} else if (!strcmp(tier, "auto")) {
		fn->tier = vm ? TIER_VM : TIER_ISOLATE;
		if (!vm)
			sb_printf(&why, "%s needs no native code: a V8 isolate starts fastest "
				  "and uses least memory\n", fn->entry);
	} else {
		fn->tier = !strcmp(tier, "vm") ? TIER_VM : TIER_ISOLATE;
		sb_printf(&why, "tier %s was asked for\n", tier);
	}
	snprintf(reasons, rlen, "%s", why.buf ? why.buf : "");
	sb_free(&why);
	return ret;
}

/* A stateful function runs one instance (one state) unless it asks for more. */
static void mf_default_limits(struct fn_limits *l, enum fn_tier tier, int keep_state)
{
	if (!l->cpu_ms)
		l->cpu_ms = 50;
	if (!l->wall_ms)
		l->wall_ms = 30000;
	if (!l->memory_mb)
		l->memory_mb = tier == TIER_VM ? 256 : 128;
	if (!l->max_instances)
		l->max_instances = keep_state ? 1 : 16;
	if (!l->concurrency)
		l->concurrency = 1;
	if (l->tmp_mb == MF_UNSET)
		l->tmp_mb = 64;
	if (l->queue == MF_UNSET)
		l->queue = 1024;
}

static int mf_finish(struct fn *fn, const struct mf_fields *f, const char *dir,
		     char *reasons, size_t rlen, struct mf_error *err)
{
	int ret;

	ret = mf_pick_entry(fn, f->entry, dir, err);
	if (ret)
		return ret;
	snprintf(fn->runtime, sizeof(fn->runtime), "%s",
		 f->runtime ? f->runtime : mf_default_runtime(fn));
	if (!strcmp(fn->runtime, "js") && !mf_is_js_entry(fn->entry))
		return mf_fail(err, "runtime", "runtime js needs a .js, .mjs, .ts or .wasm "
			       "entry, not %s", fn->entry);
	fn->strict = f->isolation && !strcmp(f->isolation, "strict");
	fn->keep_state = f->state && !strcmp(f->state, "keep");
	ret = mf_choose_tier(fn, f->tier ? f->tier : "auto", reasons, rlen, err);
	if (ret)
		return ret;
	mf_default_limits(&fn->limits, fn->tier, fn->keep_state);
	if (fn->tier == TIER_VM && fn->limits.concurrency > 1)
		return mf_fail(err, "limits.concurrency", "limits.concurrency %u is not possible "
			       "in a micro-VM: its guest is one single-threaded process that "
			       "serves one request at a time; raise limits.max_instances instead",
			       fn->limits.concurrency);
	ret = fn->tier == TIER_VM ? mf_check_vm_env(fn, err) : 0;
	if (ret)
		return ret;
	fn->dir = strdup(dir);
	return fn->dir ? 0 : -ENOMEM;
}

int mf_parse(const cJSON *manifest, const char *name, const char *dir,
	     struct fn **out, char *reasons, size_t rlen, struct mf_error *err)
{
	struct mf_fields f = { 0 };
	const cJSON *item;
	struct fn *fn;
	int ret = 0;

	memset(err, 0, sizeof(*err));
	if (manifest && !cJSON_IsObject(manifest))
		return mf_fail(err, "manifest", "the manifest must be a JSON object");
	fn = calloc(1, sizeof(*fn));
	if (!fn)
		return -ENOMEM;
	atomic_init(&fn->refs, 1);
	fn->limits.queue = MF_UNSET;	/* 0 is valid for these two */
	fn->limits.tmp_mb = MF_UNSET;
	snprintf(fn->name, sizeof(fn->name), "%s", name);
	for (item = manifest ? manifest->child : NULL; item && !ret; item = item->next)
		ret = mf_parse_field(item, fn, &f, err);
	if (!ret && f.name && strcmp(f.name, name))
		ret = mf_fail(err, "name", "manifest name \"%s\" differs from the deployed "
			      "name \"%s\"", f.name, name);
	if (!ret)
		ret = mf_finish(fn, &f, dir, reasons, rlen, err);
	if (ret) {
		fn_unref(fn);
		return ret;
	}
	*out = fn;
	return 0;
}
