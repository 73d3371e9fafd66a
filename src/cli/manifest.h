/*
 * What `stoke deploy` sends: the manifest (stoke.json as written, unknown fields
 * included, so the daemon can reject them by name; then the flags) and every regular
 * file of the function, base64-encoded under its path relative to the deployed
 * directory.
 */
#ifndef STOKE_CLI_MANIFEST_H
#define STOKE_CLI_MANIFEST_H

#include <stddef.h>

#include <cjson/cJSON.h>

#include "common/strbuf.h"
#include "err.h"

struct cli_manifest_opts {
	const char *path;	/* a directory or a single source file */
	const char *name;	/* flags; NULL keeps what stoke.json says */
	const char *tier;
	const char *runtime;
};

/* A file to send: read and encoded only when the body is built. */
struct cli_manifest_file {
	char *path;		/* where to read it */
	char *rel;		/* its name in the function, relative to the deployed directory */
	size_t size;		/* when the tree was walked */
};

struct cli_manifest {
	cJSON *manifest;
	const char *name;	/* the function's name, owned by manifest */
	int name_from_file;	/* stoke.json gave it (no --name) */
	struct cli_manifest_file *files;	/* sorted, so a tree always makes one body */
	size_t nfiles, cap;
	size_t bytes;		/* sum of the files' sizes before encoding */
	char **skipped;		/* what the walk left out, "rel (why)", to tell the user */
	size_t nskipped;
};

/*
 * Builds m from opts. The name, when neither stoke.json nor --name gives one, is the
 * directory's name or the file's name without its extension, lower-cased. A single file
 * also becomes the entry; a directory's entry is left to the daemon. Symbolic links are
 * followed to files and directories (wherever they point). Left out, and listed in
 * m->skipped: version control (.git, .hg, .svn, .bzr), a link back to a directory
 * being walked, and anything but files and directories (sockets, FIFOs, devices).
 * Returns 0 or a negative errno with err saying which file or field is at fault (a
 * link to nothing is an error that names it).
 */
int cli_manifest_build(const struct cli_manifest_opts *opts, struct cli_manifest *m,
		       struct cli_err *err);

/* The size in bytes of the body cli_manifest_body would build, from the files' sizes
 * when the tree was walked (file contents grow by 4/3 as base64), without reading
 * them: a deploy over the daemon's limit is refused before it is encoded. Returns 0
 * or -ENOMEM. */
int cli_manifest_body_size(const struct cli_manifest *m, size_t *size);

/* Reads the files and appends the request body, {"manifest":{...},"files":{...}}, to
 * out. Returns 0 or a negative errno with err naming the file at fault. */
int cli_manifest_body(const struct cli_manifest *m, struct strbuf *out, struct cli_err *err);

void cli_manifest_free(struct cli_manifest *m);

#endif
