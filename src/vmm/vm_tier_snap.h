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
};

/*
 * Takes the snapshot of a version (boots it once, up to its first read; seconds).
 * dir holds the store and the snapshot files; key names this version uniquely.
 * Returns 0, or -errno with the reason in why (the version then boots cold).
 */
int vm_tier_snap_take(struct vm_tier_snap *s, const struct vm_launch *boot, const char *dir,
		      const char *key, const char *vmm_path, char *why, size_t len);
/* The launch for a cold start: a restore when a snapshot is ready, else NULL. */
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
/* Deletes layers of removed versions and collects the store's unreferenced pages. */
int vm_tier_snap_collect(const char *store, const struct snap_id *layers, int n);

#endif
