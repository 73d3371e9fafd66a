/*
 * The registry: which functions exist, their versions and which version is live,
 * in SQLite (WAL mode) in the data directory, so a restarted daemon serves exactly
 * what was deployed. One connection, used from the daemon's admin thread only.
 */
#ifndef STOKE_REGISTRY_H
#define STOKE_REGISTRY_H

#include <stddef.h>
#include <stdint.h>

struct reg;

struct reg_row {
	const char *name;
	int64_t version;
	const char *manifest;	/* the manifest as deployed, JSON */
	const char *tier;
	const char *runtime;
	const char *entry;
	const char *dir;
	int64_t deployed_at;	/* Unix seconds */
};

/* Opens (creating if needed) the registry at path. Returns 0, or -errno/-EIO with
 * SQLite's reason in why. */
int reg_open(const char *path, struct reg **out, char *why, size_t len);
/* SQLite's reason for the last call that failed. */
const char *reg_error(struct reg *reg);
void reg_close(struct reg *reg);
/* Whether reg_open created the tables: the file was missing or empty. */
int reg_is_new(const struct reg *reg);
/* The version number a new deploy of name gets: one more than any before, deleted
 * ones included, so a version number never means two different things. */
int reg_next_version(struct reg *reg, const char *name, int64_t *version);
/* Records a version and makes it the live one, atomically. */
int reg_deploy(struct reg *reg, const struct reg_row *row);
/* Makes name unrouted; its version history stays. -ENOENT if it was not live. */
int reg_delete(struct reg *reg, const char *name);
/* Calls each() for every live function, by name; stops early on a non-zero return. */
int reg_each(struct reg *reg, int (*each)(void *arg, const struct reg_row *row), void *arg);
/* The live row of one function; -ENOENT when there is none. */
int reg_get(struct reg *reg, const char *name,
	    int (*each)(void *arg, const struct reg_row *row), void *arg);

#endif
