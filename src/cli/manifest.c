#include "manifest.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/base64.h"

/* Deeper trees are almost certainly a mistake (a deploy of $HOME, a bind-mount loop). */
#define CLI_MANIFEST_MAX_DEPTH 32

/* Reads the whole file at path into a malloc'd buffer. */
static int cli_manifest_slurp(const char *path, char **data, size_t *len,
			      struct cli_err *err)
{
	struct strbuf sb = STRBUF_INIT;
	char buf[65536];
	ssize_t n;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return cli_err_set(err, -errno, "cannot open %s: %s", path, strerror(errno));
	while ((n = read(fd, buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR))
		if (n > 0)
			sb_add(&sb, buf, n);
	if (n < 0) {
		cli_err_set(err, -errno, "cannot read %s: %s", path, strerror(errno));
		close(fd);
		sb_free(&sb);
		return err ? err->code : -EIO;
	}
	close(fd);
	sb_add(&sb, "", 0);
	*data = sb_detach(&sb, len);
	return *data ? 0 : cli_err_set(err, -ENOMEM, "out of memory reading %s", path);
}

/* "invalid JSON near line L, column C" for the byte where cJSON gave up, which may be
 * a character or so past the mistake (columns count bytes, from 1). */
static int cli_manifest_json_error(const char *path, const char *text, size_t len,
				   struct cli_err *err)
{
	const char *bad = cJSON_GetErrorPtr(), *p;
	size_t line = 1, col = 1;

	if (!bad || bad < text || bad > text + len)
		return cli_err_set(err, -EINVAL, "%s: invalid JSON", path);
	for (p = text; p < bad; p++) {
		col = *p == '\n' ? 1 : col + 1;
		line += *p == '\n';
	}
	return cli_err_set(err, -EINVAL, "%s: invalid JSON near line %zu, column %zu", path,
			   line, col);
}

static int cli_manifest_read_json(const char *path, cJSON **out, struct cli_err *err)
{
	size_t len;
	char *text;
	int ret;

	ret = cli_manifest_slurp(path, &text, &len, err);
	if (ret)
		return ret;
	*out = cJSON_ParseWithLength(text, len);
	if (!*out) {
		ret = cli_manifest_json_error(path, text, len, err);
	} else if (!cJSON_IsObject(*out)) {
		ret = cli_err_set(err, -EINVAL, "%s: the manifest must be a JSON object", path);
		cJSON_Delete(*out);
		*out = NULL;
	}
	free(text);
	return ret;
}

/* Starts from dir/stoke.json when there is one, else from an empty manifest. */
static int cli_manifest_load(const char *dir, cJSON **out, struct cli_err *err)
{
	char path[PATH_MAX];

	if (snprintf(path, sizeof(path), "%s/stoke.json", dir) >= (int)sizeof(path))
		return cli_err_set(err, -ENAMETOOLONG, "%s: path too long", dir);
	if (access(path, F_OK) == 0)
		return cli_manifest_read_json(path, out, err);
	*out = cJSON_CreateObject();
	return *out ? 0 : cli_err_set(err, -ENOMEM, "out of memory");
}

static int cli_manifest_set(cJSON *obj, const char *key, const char *value)
{
	cJSON *item;

	if (!value)
		return 0;
	item = cJSON_CreateString(value);
	if (!item)
		return -ENOMEM;
	if (cJSON_GetObjectItemCaseSensitive(obj, key))
		cJSON_ReplaceItemInObjectCaseSensitive(obj, key, item);
	else
		cJSON_AddItemToObject(obj, key, item);
	return 0;
}

/* The last component of path ("." and trailing slashes resolved for directories). */
static int cli_manifest_base(const char *path, int is_dir, char *out, size_t size,
			     struct cli_err *err)
{
	char real[PATH_MAX];
	const char *base;

	if (is_dir) {
		if (!realpath(path, real))
			return cli_err_set(err, -errno, "%s: %s", path, strerror(errno));
		path = real;
	}
	base = strrchr(path, '/');
	base = base ? base + 1 : path;
	if (!*base || strlen(base) >= size)
		return cli_err_set(err, -EINVAL, "cannot derive a function name from '%s'; "
				   "use --name", path);
	strcpy(out, base);
	return 0;
}

/* The name when nothing gives one: the directory's name, or the file's without its
 * extension, lower-cased (the daemon accepts DNS labels only, and checks them). */
static int cli_manifest_default_name(const char *path, int is_dir, cJSON *manifest,
				     struct cli_err *err)
{
	char name[NAME_MAX + 1], *dot, *p;
	int ret;

	ret = cli_manifest_base(path, is_dir, name, sizeof(name), err);
	if (ret)
		return ret;
	dot = strrchr(name, '.');
	if (!is_dir && dot && dot != name)
		*dot = '\0';
	for (p = name; *p; p++)
		*p = tolower((unsigned char)*p);
	return cli_manifest_set(manifest, "name", name) ?
		cli_err_set(err, -ENOMEM, "out of memory") : 0;
}

static int cli_manifest_fields(const struct cli_manifest_opts *opts, int is_dir,
			       struct cli_manifest *m, struct cli_err *err)
{
	char base[NAME_MAX + 1];
	cJSON *name;
	int ret;

	m->name_from_file = !opts->name &&
			    cJSON_GetObjectItemCaseSensitive(m->manifest, "name") != NULL;
	if (cli_manifest_set(m->manifest, "name", opts->name) ||
	    cli_manifest_set(m->manifest, "tier", opts->tier) ||
	    cli_manifest_set(m->manifest, "runtime", opts->runtime))
		return cli_err_set(err, -ENOMEM, "out of memory");
	if (!cJSON_GetObjectItemCaseSensitive(m->manifest, "name")) {
		ret = cli_manifest_default_name(opts->path, is_dir, m->manifest, err);
		if (ret)
			return ret;
	}
	name = cJSON_GetObjectItemCaseSensitive(m->manifest, "name");
	if (!cJSON_IsString(name))
		return cli_err_set(err, -EINVAL, "stoke.json: \"name\" must be a string");
	m->name = name->valuestring;
	if (is_dir || cJSON_GetObjectItemCaseSensitive(m->manifest, "entry"))
		return 0;
	ret = cli_manifest_base(opts->path, 0, base, sizeof(base), err);
	if (!ret && cli_manifest_set(m->manifest, "entry", base))
		ret = cli_err_set(err, -ENOMEM, "out of memory");
	return ret;
}

/* Appends the base64 of data to sb a batch at a time (a multiple of 3 bytes, so the
 * pieces join into one encoding): a large file never needs a second full-size copy. */
static void cli_manifest_b64(struct strbuf *sb, const char *data, size_t len)
{
	char chunk[4 * 256 + 1];
	size_t n;

	while (len) {
		n = len < 3 * 256 ? len : 3 * 256;
		b64_encode(data, n, chunk);
		sb_add(sb, chunk, b64_encoded_len(n) - 1);
		data += n;
		len -= n;
	}
}

/* Appends "rel":"<base64 of the file's content>" to out. */
static int cli_manifest_encode_file(const struct cli_manifest_file *f, struct strbuf *out,
				    struct cli_err *err)
{
	size_t len;
	char *data;
	int ret;

	ret = cli_manifest_slurp(f->path, &data, &len, err);
	if (ret)
		return ret;
	sb_json_str(out, f->rel, strlen(f->rel));
	sb_adds(out, ":\"");
	cli_manifest_b64(out, data, len);
	sb_adds(out, "\"");
	free(data);
	return sb_failed(out) ? cli_err_set(err, -ENOMEM, "out of memory") : 0;
}

/* Records a file to send; its contents are read only when the body is built, so that
 * the body's size is known first. */
static int cli_manifest_add_file(struct cli_manifest *m, const char *path, const char *rel,
				 size_t size, struct cli_err *err)
{
	struct cli_manifest_file *f;

	if (m->nfiles == m->cap) {
		size_t cap = m->cap ? m->cap * 2 : 16;

		f = realloc(m->files, cap * sizeof(*f));
		if (!f)
			return cli_err_set(err, -ENOMEM, "out of memory");
		m->files = f;
		m->cap = cap;
	}
	f = &m->files[m->nfiles];
	f->path = strdup(path);
	f->rel = strdup(rel);
	f->size = size;
	if (!f->path || !f->rel) {
		free(f->path);
		free(f->rel);
		return cli_err_set(err, -ENOMEM, "out of memory");
	}
	m->nfiles++;
	m->bytes += size;
	return 0;
}

/* Records something the deploy leaves out, "rel (why)", for the verb to say. */
static int cli_manifest_skip(struct cli_manifest *m, const char *rel, const char *why,
			     struct cli_err *err)
{
	char **list = realloc(m->skipped, (m->nskipped + 1) * sizeof(*list));

	if (!list)
		return cli_err_set(err, -ENOMEM, "out of memory");
	m->skipped = list;
	if (asprintf(&list[m->nskipped], "%s (%s)", rel, why) < 0)
		return cli_err_set(err, -ENOMEM, "out of memory");
	m->nskipped++;
	return 0;
}

/* Version-control metadata: the one thing a deploy leaves out by name (.git is a file
 * in a worktree or a submodule, a directory elsewhere). */
static int cli_manifest_is_vcs(const char *name)
{
	static const char *const vcs[] = { ".git", ".hg", ".svn", ".bzr", NULL };
	size_t i;

	for (i = 0; vcs[i]; i++)
		if (!strcmp(name, vcs[i]))
			return 1;
	return 0;
}

/* A symbolic link to nothing: names the link and where it points. */
static int cli_manifest_dangling(const char *full, struct cli_err *err)
{
	char target[PATH_MAX];
	ssize_t n = readlink(full, target, sizeof(target) - 1);
	int e = errno;

	if (n < 0)
		return cli_err_set(err, -e, "%s: %s", full, strerror(e));
	target[n] = '\0';
	return cli_err_set(err, -ENOENT, "%s is a symbolic link to %s, which does not exist: "
			   "fix or remove the link", full, target);
}

/* The directories from the deployed one down to the one being read, by device and
 * inode: a link back to one of them would be walked forever. */
struct cli_manifest_path {
	dev_t dev[CLI_MANIFEST_MAX_DEPTH + 2];
	ino_t ino[CLI_MANIFEST_MAX_DEPTH + 2];
	int depth;
};

static int cli_manifest_walk(struct cli_manifest *m, const char *root, const char *rel,
			     struct cli_manifest_path *up, struct cli_err *err);

/* Adds one directory entry: regular files are sent and directories walked, through
 * symbolic links too; version control, loops and special files are left out. */
static int cli_manifest_entry(struct cli_manifest *m, const char *root, const char *rel,
			      const char *name, struct cli_manifest_path *up,
			      struct cli_err *err)
{
	char child[PATH_MAX], full[PATH_MAX];
	struct stat st;

	if (snprintf(child, sizeof(child), "%s%s%s", rel, *rel ? "/" : "", name) >=
	    (int)sizeof(child) ||
	    snprintf(full, sizeof(full), "%s/%s", root, child) >= (int)sizeof(full))
		return cli_err_set(err, -ENAMETOOLONG, "%s/%s: path too long", root, child);
	if (cli_manifest_is_vcs(name))
		return cli_manifest_skip(m, child, "version control", err);
	if (stat(full, &st) < 0) {
		int e = errno;

		if (e == ENOENT && lstat(full, &st) == 0 && S_ISLNK(st.st_mode))
			return cli_manifest_dangling(full, err);
		if (e == ELOOP)
			return cli_err_set(err, -e, "%s: symbolic links that point at each other",
					   full);
		return cli_err_set(err, -e, "%s: %s", full, strerror(e));
	}
	if (S_ISDIR(st.st_mode))
		return cli_manifest_walk(m, root, child, up, err);
	if (S_ISREG(st.st_mode))
		return cli_manifest_add_file(m, full, child, (size_t)st.st_size, err);
	return cli_manifest_skip(m, child, "not a regular file", err);
}

/* Whether dir is one of the directories being walked (a link made a loop). */
static int cli_manifest_on_path(const struct cli_manifest_path *up, const struct stat *st)
{
	int i;

	for (i = 0; i < up->depth; i++)
		if (up->dev[i] == st->st_dev && up->ino[i] == st->st_ino)
			return 1;
	return 0;
}

static int cli_manifest_walk(struct cli_manifest *m, const char *root, const char *rel,
			     struct cli_manifest_path *up, struct cli_err *err)
{
	char dir[PATH_MAX];
	struct dirent **list;
	struct stat st;
	int i, n, ret = 0;

	if (up->depth > CLI_MANIFEST_MAX_DEPTH)
		return cli_err_set(err, -ELOOP, "%s/%s: directories nested too deeply", root,
				   rel);
	snprintf(dir, sizeof(dir), "%s%s%s", root, *rel ? "/" : "", rel);
	if (stat(dir, &st) < 0)
		return cli_err_set(err, -errno, "%s: %s", dir, strerror(errno));
	if (cli_manifest_on_path(up, &st))
		return cli_manifest_skip(m, rel, "a link back to a directory that contains it",
					 err);
	up->dev[up->depth] = st.st_dev;
	up->ino[up->depth++] = st.st_ino;
	/* Sorted, so the same tree always makes the same request. */
	n = scandir(dir, &list, NULL, alphasort);
	if (n < 0)
		ret = cli_err_set(err, -errno, "%s: %s", dir, strerror(errno));
	for (i = 0; i < n; i++) {
		const char *name = list[i]->d_name;

		if (!ret && strcmp(name, ".") && strcmp(name, ".."))
			ret = cli_manifest_entry(m, root, rel, name, up, err);
		free(list[i]);
	}
	if (n >= 0)
		free(list);
	up->depth--;
	return ret;
}

static int cli_manifest_collect(const char *path, const struct stat *st, int is_dir,
				struct cli_manifest *m, struct cli_err *err)
{
	struct cli_manifest_path up = { .depth = 0 };
	char base[NAME_MAX + 1];
	int ret;


	if (is_dir)
		ret = cli_manifest_walk(m, path, "", &up, err);
	else
		ret = cli_manifest_base(path, 0, base, sizeof(base), err) ?:
		      cli_manifest_add_file(m, path, base, (size_t)st->st_size, err);
	if (!ret && !m->nfiles)
		ret = cli_err_set(err, -ENOENT, "%s: no files to deploy", path);
	return ret;
}

int cli_manifest_build(const struct cli_manifest_opts *opts, struct cli_manifest *m,
		       struct cli_err *err)
{
	struct stat st;
	int ret, is_dir;

	memset(m, 0, sizeof(*m));
	if (stat(opts->path, &st) < 0) {
		int e = errno;

		if (e == ENOENT && lstat(opts->path, &st) == 0 && S_ISLNK(st.st_mode))
			return cli_manifest_dangling(opts->path, err);
		return cli_err_set(err, -e, "%s: %s", opts->path, strerror(e));
	}
	is_dir = S_ISDIR(st.st_mode);
	if (!is_dir && !S_ISREG(st.st_mode))
		return cli_err_set(err, -EINVAL, "%s: not a directory or a regular file",
				   opts->path);
	if (is_dir)
		ret = cli_manifest_load(opts->path, &m->manifest, err);
	else if (!(m->manifest = cJSON_CreateObject()))
		ret = cli_err_set(err, -ENOMEM, "out of memory");
	else
		ret = 0;
	if (!ret)
		ret = cli_manifest_fields(opts, is_dir, m, err);
	if (!ret)
		ret = cli_manifest_collect(opts->path, &st, is_dir, m, err);
	if (ret)
		cli_manifest_free(m);
	return ret;
}

/* {"manifest":{...},"files":{ : everything before the first file. */
static int cli_manifest_head(const struct cli_manifest *m, struct strbuf *out)
{
	char *manifest = cJSON_PrintUnformatted(m->manifest);

	if (!manifest)
		return -ENOMEM;
	sb_printf(out, "{\"manifest\":%s,\"files\":{", manifest);
	free(manifest);
	return sb_failed(out) ? -ENOMEM : 0;
}

int cli_manifest_body_size(const struct cli_manifest *m, size_t *size)
{
	struct strbuf sb = STRBUF_INIT;
	size_t i, n;
	int ret = cli_manifest_head(m, &sb);

	/* Per file "rel":"<base64>", commas between, then }} to close: what
	 * cli_manifest_body writes, counted without reading a byte of the files. */
	n = sb.len + 2;
	for (i = 0; !ret && i < m->nfiles; i++) {
		sb.len = 0;
		sb_json_str(&sb, m->files[i].rel, strlen(m->files[i].rel));
		n += sb.len + 3 + b64_encoded_len(m->files[i].size) - 1 + (i ? 1 : 0);
	}
	if (!ret && sb_failed(&sb))
		ret = -ENOMEM;
	sb_free(&sb);
	*size = n;
	return ret;
}

int cli_manifest_body(const struct cli_manifest *m, struct strbuf *out, struct cli_err *err)
{
	size_t i;
	int ret;

	if (cli_manifest_head(m, out))
		return cli_err_set(err, -ENOMEM, "out of memory");
	for (i = 0; i < m->nfiles; i++) {
		if (i)
			sb_adds(out, ",");
		ret = cli_manifest_encode_file(&m->files[i], out, err);
		if (ret)
			return ret;
	}
	sb_adds(out, "}}");
	return sb_failed(out) ? cli_err_set(err, -ENOMEM, "out of memory") : 0;
}

void cli_manifest_free(struct cli_manifest *m)
{
	size_t i;

	cJSON_Delete(m->manifest);
	for (i = 0; i < m->nfiles; i++) {
		free(m->files[i].path);
		free(m->files[i].rel);
	}
	free(m->files);
	for (i = 0; i < m->nskipped; i++)
		free(m->skipped[i]);
	free(m->skipped);
	memset(m, 0, sizeof(*m));
}
