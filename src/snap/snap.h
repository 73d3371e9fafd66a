/*
 * Snapshots of process VMs: the snapshot file (vCPU state, VMM state, memory layer
 * list), the content-addressed page store shared by all functions, memory layers,
 * restore images and working sets. Layout on disk and how the VMM uses this:
 * docs/snapshots.md.
 *
 * Every function returns 0 (or a count) on success and a negative errno on failure;
 * when an error struct is passed, it receives the same code and a reason for people.
 * Nothing here logs. A store handle is used by one thread at a time; several
 * processes may share one store directory.
 */
#ifndef STOKE_SNAP_H
#define STOKE_SNAP_H

#include <stddef.h>
#include <stdint.h>

#define SNAP_PAGE		4096u
#define SNAP_FILE_VERSION	1u
#define SNAP_MAX_CHAIN		16	/* layers from top to base */

/* A SHA-256 digest: names pages and layers. All zero names the zero page. */
struct snap_id {
	uint8_t b[32];
};

/* Why a call failed: code is the negative errno it returned. */
struct snap_err {
	int code;
	char msg[240];
};

/*
 * Readies the hash (OpenSSL loads its SHA-256 provider on first use: about 1 ms here),
 * for processes that wait before they restore, such as generic VM shells.
 */
void snap_warm_up(void);

/* Hex form of an id: 64 characters and a NUL. */
void snap_id_hex(const struct snap_id *id, char out[65]);
/* Parses 64 hex characters; returns 0 or -EINVAL. */
int snap_id_parse(const char *hex, struct snap_id *id);
int snap_id_is_zero(const struct snap_id *id);

/*
 * Snapshot file. Sections are checksummed with SHA-256; the file is replaced
 * atomically (temporary file, fsync, rename, fsync of the directory).
 *
 * Reading rejects, each with its own errno:
 *   -ENODATA          truncated (shorter than the header or its recorded total length)
 *   -ENOEXEC          not a snapshot (bad magic)
 *   -EPROTONOSUPPORT  format version or a required flag this build does not know
 *   -EBADMSG          a checksum does not match (header or a named section)
 *   -EINVAL           malformed (sections out of bounds, overlapping, missing, trailing
 *                     bytes after the recorded length)
 */
struct snap_state {
	const void *vcpu;		/* vCPU registers and MSRs, opaque here */
	size_t vcpu_len;
	const void *vmm;		/* the VMM's per-VM state, opaque here */
	size_t vmm_len;
	uint64_t mem_bytes;		/* guest memory size */
	const struct snap_id *layers;	/* memory layer chain, top first */
	uint32_t nlayers;
	uint32_t flags;			/* SNAP_F_*; none defined yet */
};

/* A snapshot read back: st points into buf. */
struct snap_file {
	struct snap_state st;
	uint32_t version;
	void *buf;
	size_t len;
};

int snap_file_write(const char *path, const struct snap_state *st, struct snap_err *err);
int snap_file_read(const char *path, struct snap_file *f, struct snap_err *err);
void snap_file_release(struct snap_file *f);

/*
 * Page store: a directory holding pages by SHA-256 (zstd-compressed when that saves
 * space), layer manifests, and a cache of restore images (image_dir, NULL for
 * root/images; it should be on local disk).
 */
struct snap_store;

int snap_store_open(const char *root, const char *image_dir, struct snap_store **out,
		    struct snap_err *err);
void snap_store_close(struct snap_store *s);

/* What snap_store_gc did. */
struct snap_gc_stats {
	uint64_t layers;		/* manifests read */
	uint64_t referenced;		/* distinct pages they reference */
	uint64_t kept;
	uint64_t deleted;
	uint64_t tmp_removed;		/* leftovers of writers that died */
	uint64_t images_removed;	/* images and working sets of deleted layers */
	uint64_t layers_removed;	/* manifests no root reaches (snap_store_gc_roots) */
	uint64_t bytes_freed;		/* disk blocks of the pages and images deleted */
};

/*
 * Deletes every stored page no layer manifest references, the temporary files of
 * writers that died, and the images and working sets (<id>.*) of deleted layers. It
 * holds the store's lock exclusively, so no layer is being written meanwhile; it
 * deletes nothing if any manifest cannot be read and verified.
 */
int snap_store_gc(struct snap_store *s, struct snap_gc_stats *st, struct snap_err *err);
/*
 * The same, after deleting every layer manifest that no root reaches through parent
 * links (roots: the top layers of the snapshot files still in use; a root whose
 * manifest is missing is skipped). Nothing is deleted if any manifest is unreadable.
 */
int snap_store_gc_roots(struct snap_store *s, const struct snap_id *roots, size_t nroots,
			struct snap_gc_stats *st, struct snap_err *err);

/*
 * Layers. A layer lists (guest page number -> page id) for the pages that differ from
 * its parent (a base layer's parent is all-zero memory); its id is the SHA-256 of its
 * manifest, so equal layers have equal ids.
 */
struct snap_layer_src {
	const uint8_t *mem;		/* guest memory image */
	uint64_t mem_bytes;		/* page multiple; equal to the parent's */
	const struct snap_id *parent;	/* NULL for a base layer */
	/*
	 * Pages that may differ from the parent, one bit per page (bit g % 64 of word
	 * g / 64); NULL compares every page. Pages outside it are taken as unchanged.
	 */
	const uint64_t *dirty;
	/* The parent's memory to compare with, or NULL: the parent's image is used. */
	const uint8_t *parent_mem;
};

struct snap_layer_info {
	struct snap_id id;
	uint64_t pages;			/* entries in the layer */
	uint64_t pages_new;		/* stored now */
	uint64_t pages_dup;		/* already in the store */
	uint64_t pages_zero;		/* became zero: stored as the zero id */
	uint64_t bytes_new;		/* bytes written for new pages (after compression) */
	uint64_t compared;		/* pages compared with the parent */
	int existed;			/* an equal manifest was already stored (a cache hit) */
};

struct snap_layer_entry {
	uint64_t gpn;
	struct snap_id page;
};

struct snap_layer {
	struct snap_id id;
	struct snap_id parent;
	int has_parent;
	uint64_t mem_bytes;
	uint64_t n;
	struct snap_layer_entry *e;	/* sorted by gpn */
};

int snap_layer_build(struct snap_store *s, const struct snap_layer_src *src,
		     struct snap_layer_info *info, struct snap_err *err);
int snap_layer_read(struct snap_store *s, const struct snap_id *id, struct snap_layer *l,
		    struct snap_err *err);
void snap_layer_release(struct snap_layer *l);
/* Fills ids with the chain from id down to its base; returns its length. */
int snap_layer_chain(struct snap_store *s, const struct snap_id *id,
		     struct snap_id ids[SNAP_MAX_CHAIN], struct snap_err *err);
/* Removes a manifest; -EBUSY while another layer names it as parent. */
int snap_layer_delete(struct snap_store *s, const struct snap_id *id, struct snap_err *err);
/* Reads one stored page (verified against its id) into out. */
int snap_page_read(struct snap_store *s, const struct snap_id *id, void *out,
		   struct snap_err *err);

/* A run of guest pages. */
struct snap_range {
	uint64_t gpn;
	uint64_t count;
};

/* A run of a split image's top-layer pages: guest pages, and where the file has them. */
struct snap_image_run {
	uint64_t gpn;
	uint64_t count;
	uint64_t file_page;
};

/*
 * Restore images: a layer chain assembled into one uncompressed file of mem_bytes
 * (zero pages are holes), cached in the image directory under the top layer's id.
 * Map it MAP_PRIVATE: clean pages are then shared by every VM through the page cache.
 *
 * A split image (snap_image_open_chain, chains of three or more layers: a function on
 * a runtime) is the parent chain's image, shared by every layer on that parent, with
 * the top layer's own pages in a file of their own mapped over it run by run.
 */
struct snap_image {
	int fd;				/* read-only; the parent's image when split */
	uint64_t size;
	struct snap_id id;		/* the top layer */
	int built;			/* assembled by this call (not found in the cache) */
	int damaged;			/* -errno: why a cached top-layer file was rebuilt */
	int top_fd;			/* split: the top layer's pages, else -1 */
	uint32_t nruns;			/* split: the top layer's runs of pages, sorted */
	struct snap_image_run *runs;
	struct snap_id parent;		/* split: whose image fd is */
};

/*
 * A split image's top-layer file also holds the parent's pages in the gaps of at most
 * this many pages between the layer's own: each run costs a restore one mmap (about
 * 5 us here) and splits the guest mapping, which slowed a restored Python's first
 * response by 1-2 ms with 176 runs; with gaps up to 4 filled, 74 runs remain and a
 * hello function's file holds 192 of the runtime's pages besides its 389 own.
 */
#define SNAP_SPLIT_GAP	4

int snap_image_open(struct snap_store *s, const struct snap_id *top, struct snap_image *img,
		    struct snap_err *err);
/*
 * The form a restore maps for a chain (ids top first, as a snapshot file lists them):
 * split for three layers or more, else the chain's image. A cached top-layer file is
 * checked (length, trailer checksum, ids) and assembled again from the store when it
 * is missing or damaged (img->damaged says why).
 */
int snap_image_open_chain(struct snap_store *s, const struct snap_id *chain, uint32_t n,
			  struct snap_image *img, struct snap_err *err);
/*
 * The cached restore form of a top layer, split or not, without assembling anything
 * (for reading ahead before the snapshot file is read): -ENOENT if neither is cached.
 */
int snap_image_find(struct snap_store *s, const struct snap_id *top, struct snap_image *img);
void snap_image_close(struct snap_image *img);
/*
 * Maps [off, off + len) of the image copy-on-write at addr, replacing what was there
 * (MAP_FIXED): addr lies inside the VM's memory slot, which stays registered. A split
 * image takes one mmap for the parent's image and one per top-layer run.
 */
int snap_image_map(const struct snap_image *img, void *addr, uint64_t len, uint64_t off,
		   struct snap_err *err);
/* Reads [off, off + len) of the image's memory (from both files when split). */
int snap_image_read(const struct snap_image *img, void *buf, uint64_t len, uint64_t off);

/*
 * Pages a mapping has private copies of (written since it was mapped MAP_PRIVATE, or
 * ever touched in an anonymous mapping), from /proc/self/pagemap: the dirty bitmap for
 * snap_layer_build. pagemap_fd is an open /proc/self/pagemap, or -1 to open it here.
 */
int snap_dirty_from_pagemap(int pagemap_fd, const void *addr, uint64_t len,
			    uint64_t *bitmap);

/* Working set: the image pages a restored VM touched, as sorted page ranges. */
struct snap_ws {
	struct snap_id image;		/* the image it was recorded on */
	uint64_t pages;
	uint32_t nranges;
	struct snap_range *r;
	/* The subset the VM wrote (private copies), which a restore may copy ahead. */
	uint32_t nwritten;
	struct snap_range *w;
};

/*
 * Records the pages of [addr, addr + len) present in this process's page tables, and
 * as written those that are private copies (anonymous) rather than file pages.
 */
int snap_ws_from_pagemap(int pagemap_fd, const void *addr, uint64_t len,
			 const struct snap_id *image, struct snap_ws *ws);
/* Builds a working set from a bitmap of touched pages (none written). */
int snap_ws_from_bitmap(const uint64_t *bitmap, uint64_t npages,
			const struct snap_id *image, struct snap_ws *ws);
int snap_ws_write(const char *path, const struct snap_ws *ws, struct snap_err *err);
int snap_ws_read(const char *path, struct snap_ws *ws, struct snap_err *err);
void snap_ws_release(struct snap_ws *ws);

/* How snap_ws_prefetch brings pages into the page cache (see docs/snapshots.md). */
enum snap_fill {
	SNAP_FILL_NONE,
	SNAP_FILL_READAHEAD,		/* readahead(2) on the image file */
	SNAP_FILL_FADVISE,		/* posix_fadvise(WILLNEED) */
	SNAP_FILL_PREAD,		/* pread into a scratch buffer (synchronous) */
	SNAP_FILL_MADVISE,		/* madvise(WILLNEED) on the mapping */
	SNAP_FILL_MAP_SHARED,		/* mmap(MAP_SHARED | MAP_POPULATE) of each range */
};

#define SNAP_PF_MAP	1u	/* then MADV_POPULATE_READ the ranges into the mapping */
/*
 * Copy the written ranges into the mapping now (MADV_POPULATE_WRITE): the private
 * copies the guest's first writes would make, so each such page costs a virtualized
 * guest one write fault instead of a read fault and then a write fault.
 */
#define SNAP_PF_WRITTEN	2u
/*
 * Read the working set's dense, unwritten 2 MiB regions (snap_ws_huge_plan) as whole
 * huge page-cache folios, and advise the mapping there so that a fault maps each with
 * one PMD, still shared (a guest then faults once per region instead of per page).
 */
#define SNAP_PF_HUGE	4u
/* What this machine measured fastest from an evicted cache (bench/snapshot). */
#define SNAP_FILL_DEFAULT	SNAP_FILL_READAHEAD
#define SNAP_PF_DEFAULT		SNAP_PF_MAP

/*
 * Brings the working set's pages of img into the page cache in one ascending pass and,
 * with SNAP_PF_MAP, into the page tables of mem (the image mapped MAP_PRIVATE at mem),
 * read-only, so they stay shared with every other VM mapping the image. mem may be
 * NULL (fill only, e.g. on a thread before the mapping exists); SNAP_PF_HUGE needs mem
 * 2 MiB aligned (otherwise it is ignored). With SNAP_FILL_NONE nothing is read (a
 * fill-only call did it) and huge regions are left for the guest's faults to map.
 */
int snap_ws_prefetch(const struct snap_image *img, const struct snap_ws *ws, uint8_t *mem,
		     enum snap_fill fill, unsigned flags, struct snap_err *err);

#define SNAP_HUGE		(2ULL << 20)
#define SNAP_HUGE_MAX		8
/*
 * A 2 MiB region is read whole only when at least this many working-set pages lie in
 * it: reading 2 MiB from an evicted image costs about as much disk time (1.5-2 ms here)
 * as 64-100 guest page faults (20-25 us each).
 */
#define SNAP_HUGE_MIN_PAGES	64

/* The 2 MiB regions (numbers: offset / SNAP_HUGE) that SNAP_PF_HUGE reads whole. */
struct snap_huge_plan {
	uint32_t n;
	uint64_t region[SNAP_HUGE_MAX];
};

/*
 * Regions of the image (size bytes) holding at least SNAP_HUGE_MIN_PAGES pages of the
 * working set and none of its written pages (a write would split the mapping), in
 * ascending order, at most SNAP_HUGE_MAX.
 */
void snap_ws_huge_plan(const struct snap_ws *ws, uint64_t size, struct snap_huge_plan *plan);

#endif
