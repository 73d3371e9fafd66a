/*
 * The function manifest (stoke.json): validation, defaults and the choice of tier.
 * The manifest format is documented in the README ("The manifest").
 */
#ifndef STOKE_MANIFEST_H
#define STOKE_MANIFEST_H

#include "common/invoke.h"

struct cJSON;

/* What went wrong with a manifest, for a 400 answer that names the field. */
struct mf_error {
	char field[64];
	char message[512];
	char suggestion[64];	/* a valid value close to the refused one, or "" */
};

/* A DNS label: [a-z0-9-], 1-63 characters, no leading or trailing '-'. */
int mf_valid_name(const char *name, size_t len);

/* A valid name made from name (lower case, every other character a '-', no '-' at
 * either end, 63 characters at most) in out; "" when nothing of it is left. */
void mf_suggest_name(const char *name, char *out, size_t size);

/* The runtime an entry's extension implies when the manifest names none. */
struct mf_entry_ext {
	const char *ext;	/* ".js"... */
	const char *runtime;	/* "js", "python3" or "native" */
};

/* Every extension stoke tells a runtime from, ending with { NULL, NULL }. */
extern const struct mf_entry_ext mf_entry_exts[];

/* The runtime entry's extension implies: "native" for a name without one (a program),
 * NULL for an extension not in mf_entry_exts. */
const char *mf_entry_runtime(const char *entry);

/*
 * Builds a struct fn (refs = 1, version unset) from a manifest object for the files
 * already written to dir: fills defaults, picks the entry file when none is named, and
 * chooses the tier. reasons receives why that tier, one reason per line (for deploy
 * answers and `stoke advise`). Returns 0, or -EINVAL with err filled.
 */
int mf_parse(const struct cJSON *manifest, const char *name, const char *dir,
	     struct fn **out, char *reasons, size_t rlen, struct mf_error *err);

#endif
