/*
 * Internals of src/snap shared between its files (names with a snap__ prefix).
 * Tests include this header to reach the crash-simulation hooks.
 */
#ifndef STOKE_SNAP_INT_H
#define STOKE_SNAP_INT_H

#include "snap.h"

#include <stdarg.h>
#include <stdint.h>
#include <string.h>

struct ZSTD_CCtx_s;
struct ZSTD_DCtx_s;

struct snap_store {
	int root;		/* directory descriptors */
	int pages;
	int layers;
	int tmp;
	int images;
	int lock;		/* flock: shared by writers, exclusive for gc */
	int lock_depth;		/* nested snap__lock calls of this handle */
	struct ZSTD_CCtx_s *cctx;
	struct ZSTD_DCtx_s *dctx;
};

/* Fills err (if any) and returns -code. */
int snap__fail(struct snap_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

void snap__sha256(const void *data, size_t len, struct snap_id *out);
int snap__page_is_zero(const uint8_t *p);

int snap__write_all(int fd, const void *buf, size_t len);
int snap__pread_all(int fd, void *buf, size_t len, uint64_t off);
/* A number unique within this process (all threads), for temporary file names. */
unsigned snap__seq(void);
/* Reads a whole file at dirfd/name into a malloc'd buffer. */
int snap__read_file(int dirfd, const char *name, uint8_t **buf, size_t *len);
/*
 * Writes dirfd/name atomically: a temporary file beside it, fsync, rename, fsync of
 * the directory. Returns 0 or -errno (-ENOSPC, -EFBIG, -EDQUOT... from the write).
 */
int snap__atomic_write(int dirfd, const char *name, const void *buf, size_t len);
/* The same for a path. */
int snap__atomic_write_path(const char *path, const void *buf, size_t len);

int snap__lock(struct snap_store *s, int exclusive);
void snap__unlock(struct snap_store *s);
/* Stores one page under id unless present; *added is set when it was written. */
int snap__page_put(struct snap_store *s, const uint8_t *page, const struct snap_id *id,
		   int *added, uint64_t *bytes);
/* "ab/cdef..." relative to the pages directory. */
void snap__page_path(const struct snap_id *id, char out[68]);

/* Set of page ids (open addressing), for gc's mark phase. */
struct snap__idset {
	struct snap_id *slot;
	uint64_t cap;
	uint64_t n;
};

int snap__idset_add(struct snap__idset *set, const struct snap_id *id);
int snap__idset_has(const struct snap__idset *set, const struct snap_id *id);
void snap__idset_free(struct snap__idset *set);

/*
 * Writes images/<name> atomically: mem_bytes of memory holding the non-zero pages of
 * the sorted entries e (from the store, verified), holes elsewhere, then tail at
 * mem_bytes.
 */
int snap__image_write(struct snap_store *s, const char *name,
		      const struct snap_layer_entry *e, uint64_t n, uint64_t mem_bytes,
		      const void *tail, size_t tail_len, struct snap_err *err);
/* Every non-hole page of a chain, top layer first winning, sorted (malloc'd *e). */
int snap__flatten(struct snap_store *s, const struct snap_id *top,
		  struct snap_layer_entry **e, uint64_t *n, struct snap_err *err);
/* Opens images/<name> read-only; *size is its length. */
int snap__image_open_file(struct snap_store *s, const char *name, int *fd, uint64_t *size);

/* Called per piece of an image: fd holds memory [off, off + len) at file_off. */
typedef int (*snap__piece_fn)(int fd, uint64_t file_off, uint64_t off, uint64_t len,
			      void *arg);
/* Calls fn for each part of [off, off + len) in a top-layer run of a split image. */
int snap__image_runs(const struct snap_image *img, uint64_t off, uint64_t len,
		     snap__piece_fn fn, void *arg);
/* Calls fn for each part of [off, off + len), in order, with the file that holds it. */
int snap__image_pieces(const struct snap_image *img, uint64_t off, uint64_t len,
		       snap__piece_fn fn, void *arg);

/* Decodes and verifies a layer manifest whose SHA-256 must equal id. */
int snap__layer_decode(const uint8_t *buf, size_t len, const struct snap_id *id,
		       struct snap_layer *l, struct snap_err *err);

/*
 * Crash simulation for tests: called at named steps; a test's hook may abort() to
 * leave the store as a crash there would. NULL in production.
 */
enum snap__step { SNAP__STEP_PAGES_WRITTEN, SNAP__STEP_GC_DELETED };
extern void (*snap__hook)(enum snap__step step, uint64_t n);

static inline void snap__put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static inline void snap__put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint32_t snap__get32(const uint8_t *p)
{
	uint32_t v = 0;

	for (int i = 3; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

static inline uint64_t snap__get64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

#endif
