/*
 * Kept state (`state: keep`) in the VM tier, daemon side. A stateful function version
 * has a fixed number of instance slots (limits.max_instances, default 1); a request
 * goes to the slot its X-Stoke-Key header hashes to (no header: the key ""), and each
 * slot runs at most one VM, whose memory is the state. Requests for a slot wait in
 * its own queue and run one at a time, in arrival order.
 *
 * An idle slot's VM is not destroyed but dumped whole (stoke-vmm --state-dump, on a
 * FRAME_STATE_DUMP sent while the guest waits for a request) into a snapshot file of
 * the slot, DATA/vm-state/NAME/vVERSION/slot-N.snap, whose memory is a base layer in
 * the tier's page store; the slot's next request restores it. The files outlive the
 * daemon; a new version and `stoke rm` delete them. The tier (vm_tier.c) owns the
 * threads and locking: nothing here locks.
 */
#ifndef STOKE_VMM_VM_STATE_H
#define STOKE_VMM_VM_STATE_H

#include "vm_proc.h"
#include "snap/snap.h"

#include <pthread.h>
#include <stdint.h>

struct inv;
struct fn;

/* One queued invocation, or (slot set, inv NULL) a worker's turn at a slot's queue. */
struct vm_job {
	struct inv *inv;
	struct vm_slot *slot;
	struct vm_job *next;
};

struct vm_slot {
	uint32_t index;
	struct vm_job *head, *tail;	/* waiting invocations, oldest first */
	struct vm_job turn;	/* on the tier's queue while busy and requests wait */
	uint32_t queued;
	int busy;		/* a worker serves the queue, or the VM is being dumped */
	struct vm_proc *proc;	/* the live VM; idle while !busy */
	int has_state;		/* the snapshot file exists */
	struct snap_id layer;	/* its memory layer, when known */
	char file[4200];	/* slot-N.snap */
	char dump[4200];	/* slot-N.dump: where the VMM dumps */
};

struct vm_state {
	char dir[4096];		/* DATA/vm-state/NAME/vVERSION */
	char store[4200];	/* the tier's page store */
	uint32_t nslots;
	uint32_t queue_max;	/* waiting requests per slot (limits.queue) */
	int drop;		/* retired: the files go with the version */
	int dumping;		/* dumps running outside the tier's lock */
	struct vm_slot *slots;
};

/*
 * Sets up the slots of fn and finds the snapshot files a previous run left.
 * fresh: no other version of the function is loaded, so state directories of other
 * versions are leftovers and are removed. Returns 0 or -errno (message in err).
 */
int vm_state_init(struct vm_state *st, const struct fn *fn, const char *data_dir,
		  const char *store, int fresh, char *err, size_t errlen);
void vm_state_free(struct vm_state *st);
/* The slot an invocation belongs to: a hash of its X-Stoke-Key header. */
struct vm_slot *vm_state_slot(struct vm_state *st, const struct inv *inv);
/* The stoke-vmm options that let the daemon dump the slot's VM ("--state-dump=..."). */
void vm_state_dump_opt(const struct vm_slot *sl, char *out, size_t len);
/*
 * Checks the slot's snapshot file and memory layer before a restore (checksums, the
 * layer's pages, the image). Returns 0, or -errno with the reason in why.
 */
int vm_state_check(struct vm_state *st, struct vm_slot *sl, char *why, size_t len);
/*
 * Dumps the idle VM p of the slot and makes it the slot's snapshot; p is stopped
 * unless the VMM refused (-ENOTSUP: e.g. files in /tmp; p is then still usable).
 * *old gets the replaced layer (to delete) and *had_old whether there was one.
 * build_lock is the lock snapshot gc holds: it is held while the layer is built.
 */
int vm_state_save(struct vm_state *st, struct vm_slot *sl, struct vm_proc *p,
		  pthread_mutex_t *build_lock, struct snap_id *old, int *had_old,
		  char *why, size_t len);
/* Sets a damaged snapshot aside (slot-N.snap.corrupt): the slot starts fresh. */
void vm_state_discard(struct vm_slot *sl);
/*
 * Deletes every slot's files and the version's directory; fills layers (up to max)
 * with the layers to delete and returns how many.
 */
int vm_state_remove(struct vm_state *st, struct snap_id *layers, int max);

#endif
