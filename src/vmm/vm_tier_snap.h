/*
 * Snapshots in the VM tier (daemon side). At deploy of a python3 function version, a
 * VM boots with --snapshot-dump and is stopped once it waits for its first request;
 * the dump becomes a layer in the tier's page store and a snapshot file. Cold starts
 * then restore from it instead of booting. The first restored VM records its working
 * set, which later restores prefetch. Everything here is best effort: without a
 * snapshot a cold start boots, as it always did.
 */
#ifndef STOKE_VMM_VM_TIER_SNAP_H
#define STOKE_VMM_VM_TIER_SNAP_H

#include "vm_proc.h"
#include "snap/snap.h"

#include <stdatomic.h>

/* Layer kinds counted by the layer cache statistics, and the image cache. */
enum vm_layer_kind { VM_LAYER_BASE, VM_LAYER_RUNTIME, VM_LAYER_FUNCTION, VM_LAYER_IMAGE,
		     VM_LAYER_KINDS };

/* Cache statistics of snapshot building (stoke_snapshot_* metrics). */
struct vm_snap_stats {
	atomic_ullong hit[VM_LAYER_KINDS];	/* found already built */
	atomic_ullong miss[VM_LAYER_KINDS];	/* built now */
	atomic_ullong bytes[VM_LAYER_KINDS];	/* stored for new pages (after zstd) */
	atomic_ullong damaged;			/* runtime chains found damaged */
	atomic_ullong gc_runs, gc_freed_bytes;
};

struct vm_tier_snap {
	int ready;		/* the snapshot file exists and was built by us */
	char file[1024];	/* snapshot file */
	char dump[1024];	/* the VMM's dump, removed once built */
	char ws_raw[1024];	/* working set as the recording VM left it */
	char ws[1024];		/* the store's working-set file for the image */
	char store[1024];
	struct snap_id top;	/* the snapshot's memory layer */
	struct vm_launch record;	/* restore and record the working set */
	struct vm_launch plain;		/* restore */
	struct vm_launch prefetch;	/* restore and prefetch the working set */
	struct vm_launch shell;		/* the same, and touch it before the request */
	atomic_int recording;	/* a VM was started to record the working set */
	atomic_int ws_ready;	/* the working set is in the store */
	char image[1200];	/* the restore image of top */
	struct vm_snap_stats *stats;	/* counts image cache hits of restores, or NULL */
	/* Set by the owner before a take (which keeps it): once it reads non-zero, the
	 * build ends with -ECANCELED (the daemon stops; an import may run for seconds). */
	const atomic_int *cancel;
};

/*
 * The runtime snapshot of one runtime and memory size: the base layer (the program
 * loaded) and the runtime layer (python3 started, standard library imported, waiting
 * for a function), built once and kept across daemon restarts in dir/runtimes/.
 */
struct vm_tier_rt {
	char key[96];
	char file[1100];
	char store[1100];
};

/*
 * Finds the runtime snapshot fn_launch's runtime needs, checking that its chain and
 * image are whole, or builds it (boots the runtime once: seconds). A damaged one is
 * removed, so the next deploy rebuilds it, and -EBADMSG is returned: the caller's
 * version boots cold. Returns 0 or -errno with the reason in why.
 */
int vm_tier_rt_get(struct vm_tier_rt *rt, const struct vm_launch *fn_launch, const char *dir,
		   const char *vmm_path, struct vm_snap_stats *st, char *why, size_t len);
/*
 * Takes a version's snapshot on a runtime snapshot: restores rt, sends the load frame
 * (the function's entry and environment), and stores only what the import changed as
 * the function layer. Fails as vm_tier_snap_take.
 */
int vm_tier_snap_take_on(struct vm_tier_snap *s, const struct vm_tier_rt *rt,
			 const struct vm_launch *launch, const char *dir, const char *key,
			 const struct vm_logto *to, const char *vmm_path, struct vm_snap_stats *st,
			 char *why, size_t len);

/*
 * Takes the snapshot of a version (boots it once, up to its first read; seconds).
 * dir holds the store and the snapshot files; key names this version uniquely. What
 * the guest prints meanwhile (the import, before_snapshot) goes to `to`.
 * Returns 0, or -errno with the reason in why (the version then boots cold).
 */
int vm_tier_snap_take(struct vm_tier_snap *s, const struct vm_launch *boot, const char *dir,
		      const char *key, const struct vm_logto *to, const char *vmm_path,
		      char *why, size_t len);
/*
 * Waits (at most 30 s) until the VMM p wrote a whole dump to the file dump, logging
 * its output to `to` (NULL: dropped) meanwhile. Returns 0, -ENOTSUP when the VMM took
 * none, -ECHILD when it exited first (its last stderr in p->tail), -ECANCELED once
 * *cancel (if given) is set, or -ETIMEDOUT.
 */
int vm_tier_snap_wait_dump(struct vm_proc *p, const char *dump, const struct vm_logto *to,
			   const atomic_int *cancel);
/*
 * The launch for a cold start: a restore when a snapshot is ready, else NULL. Counts
 * whether the restore image is in the image cache (else stoke-vmm assembles it).
 */
const struct vm_launch *vm_tier_snap_launch(struct vm_tier_snap *s);
/*
 * The launch for a VM parked ahead of requests (a shell): a restore that takes its
 * working set's page faults before it waits; NULL until the working set is recorded.
 */
const struct vm_launch *vm_tier_snap_shell_launch(struct vm_tier_snap *s);
/* Moves a recorded working set into the store once the recording VM wrote it. */
void vm_tier_snap_tick(struct vm_tier_snap *s);
/*
 * Removes the version's snapshot files; returns 1 when it had a layer, which the
 * caller then deletes with vm_tier_snap_collect (off the event loop: it locks the store).
 */
int vm_tier_snap_remove(struct vm_tier_snap *s);
/*
 * Garbage collection of dir's store: every snapshot file under dir (versions' and
 * runtimes') and every saved state under state_dir is a root; layers no root reaches
 * are deleted, then the pages no layer references, and the images of deleted layers.
 * Deleted first: version snapshot files that dead daemons left (their key names a
 * process that is gone) and runtime snapshots whose key is not among rt_keys (the
 * nkeys runtimes this daemon's versions were built on; a new VMM binary or bootstrap
 * makes new keys). Callers hold the lock that layer builds hold.
 */
int vm_tier_snap_collect(const char *dir, const char *state_dir, char (*rt_keys)[96],
			 int nkeys, struct snap_gc_stats *gs, uint64_t *files_removed,
			 char *why, size_t len);

#endif
