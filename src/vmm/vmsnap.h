/*
 * Snapshots of a process VM (docs/snapshots.md, "How the VMM uses it").
 *
 * Taking one: with --snapshot-dump, the VMM stops at the guest's first read of the
 * channel (the runtime waiting for its first request) and writes a *dump*: the vCPU
 * state, its own per-VM state and the guest pages it has touched, into a file opened
 * before the jail. It then serves the request as usual. The daemon (or
 * `stoke-vmm --build-snapshot`) turns the dump into a memory layer in the page store
 * and a snapshot file (vmsnap_build). The jailed VMM thus never writes to the store.
 *
 * Restoring: with --restore, everything that reads files (snapshot file, restore
 * image, working set, descriptors the guest had open) happens before the jail; the
 * vCPU state is set after it, and the pending read is finished with the request.
 */
#ifndef STOKE_VMM_VMSNAP_H
#define STOKE_VMM_VMSNAP_H

#include "snap/snap.h"

#include <stddef.h>
#include <stdint.h>

struct vm;

#define VMSNAP_DUMP_MAGIC	"STOKDUMP"
#define VMSNAP_DUMP_VERSION	2u
/* flags: the dump is a VM restored from layer `parent`, its bitmap the pages since. */
#define VMSNAP_DUMP_PARENT	1u
/* Written at 0 instead when no dump could be taken, so nobody waits for one. */
#define VMSNAP_DUMP_NONE	"STOKNONE"

/*
 * Dump file (host-local, little-endian, read only by vmsnap_build): this header at 0,
 * then the vCPU blob, the VMM blob and the dirty bitmap (one bit per page), then guest
 * memory at mem_off as a sparse image (only dirty pages written). The magic is
 * written last, so a dump cut short by a crash is never taken for a whole one.
 */
struct vmsnap_dump_hdr {
	char magic[8];
	uint32_t version;
	uint32_t reserved;
	uint64_t mem_bytes;
	uint64_t vcpu_off, vcpu_len;
	uint64_t vmm_off, vmm_len;
	uint64_t bitmap_off, bitmap_len;
	uint64_t mem_off;
	uint32_t flags;		/* VMSNAP_DUMP_* */
	uint32_t reserved2;
	uint8_t parent[32];	/* top layer of the chain the VM was restored from */
};

/* Working-set record the VMM leaves for the daemon (converted by vmsnap_ws_commit). */
struct vmsnap_ws_hdr {
	char magic[8];		/* "STOKWSRW" */
	uint8_t image[32];	/* id of the image the VM was restored from */
	uint64_t pages;
	uint64_t nranges;	/* then nranges pairs of u64 (first page, count) */
	uint64_t nwritten;	/* then as many pairs: the pages the VM wrote */
};

/* In the VMM (vmsnap.c). Return 0 or -errno; *why gets a reason for the operator. */

/*
 * Starts reading the working set of the image a restore will map (readahead, not
 * waited for), first thing in the process: an image that left the page cache then
 * comes in while the jail and the VM are set up, not after. Best effort. On a thread,
 * or with apart in a child process (for a VMM whose jail fork is already behind it).
 */
struct vm_config;
void vmsnap_preload(const struct vm_config *cfg, int apart);
/*
 * For a generic shell, while it is parked: forks the process that will do the preload
 * (apart) once the launch names the working set, so the launch pays neither the fork
 * nor the opening of the working set and image. Best effort.
 */
void vmsnap_preload_fork(void);
/* Opens what taking or restoring needs while the host file system is still there. */
int vmsnap_open(struct vm *vm, char *why, size_t len);
/*
 * Restores guest memory and VMM state from cfg->snap_restore (before the jail).
 * On failure nothing of the VM was changed unless *mapped is set: the caller may
 * then boot the program instead.
 */
int vmsnap_restore_memory(struct vm *vm, int *mapped, char *why, size_t len);
/* Sets the vCPU state and the clocks (after the jail); then run vm_resume. */
int vmsnap_restore_vcpu(struct vm *vm, char *why, size_t len);
/*
 * Starts mapping the restored working set (copying the pages the guest will write, and
 * waiting for the preload's I/O) on a thread beside the guest. Called as late as a
 * thread can still be made: after the jail's privilege drop (glibc's setresuid makes
 * every thread take a signal, which one inside a long madvise would delay by
 * milliseconds), just before its seccomp filter (jail_config.before_filter: the filter
 * is synchronized onto the thread too), or before resuming when unjailed. The thread
 * only calls madvise on guest memory and never sees guest input. arg: the struct vm.
 */
void vmsnap_populate(void *arg);
/*
 * Waits for the restore's populate thread (it maps the working set while the guest
 * starts). The run loop calls it at every exit, and every call below that reads
 * pagemap or changes guest memory calls it first. Cheap when there is none.
 */
void vmsnap_settle(struct vm *vm);
/*
 * chan_read hook: takes the dump at the first read of the channel (on a restored VM:
 * the first read after its first response, so a runtime restored to import a
 * function is dumped once that function is loaded).
 */
void vmsnap_at_read(struct vm *vm);
/*
 * chan_read hook (--state-dump): dumps the whole VM, booted or restored, while the
 * guest waits for its next request, as a dump vmsnap_build turns into a base layer.
 * Writes VMSNAP_DUMP_NONE and returns -errno when it cannot (-ENOTEMPTY: files in /tmp,
 * which a dump does not keep); the VM then serves on.
 */
int vmsnap_dump_state(struct vm *vm);
/* After the program is loaded, before it runs: the base dump (--snapshot-base-dump). */
void vmsnap_at_load(struct vm *vm);
/* gmem_zero hook: a restored VM's range got fresh anonymous memory (zero pages). */
void vmsnap_zeroed(struct vm *vm, uint64_t addr, uint64_t len);
/* chan_write hook: records the working set after a restored VM's first response. */
void vmsnap_after_response(struct vm *vm);
void vmsnap_close(struct vm *vm);

/* Daemon side (vmsnap_build.c), also `stoke-vmm --build-snapshot`. */

/* What a build did, layer by layer (top first), for metrics and benchmarks. */
struct vmsnap_build_info {
	struct snap_layer_info layer[2];	/* [0] the dump's layer, [1] a base under it */
	int nlayers;
	int image_built;	/* the restore image was assembled (not in the cache) */
	double layer_ms, image_ms;
};

/*
 * Builds a memory layer in the store at store_dir from a dump (a base layer, or a layer
 * on the chain the dumped VM was restored from), assembles its restore image and
 * writes the snapshot file out. The dump is left in place.
 */
int vmsnap_build(const char *dump, const char *store_dir, const char *out, char *why,
		 size_t len);
int vmsnap_build_info(const char *dump, const char *store_dir, const char *out,
		      struct vmsnap_build_info *info, char *why, size_t len);
/*
 * The runtime chain of a booted VM: base_dump (taken when the program was loaded)
 * becomes the base layer, dump (taken at the first channel read) the layer on it of
 * the pages that differ; the snapshot file out names both.
 */
int vmsnap_build_runtime(const char *base_dump, const char *dump, const char *store_dir,
			 const char *out, struct vmsnap_build_info *info, char *why,
			 size_t len);
/* Writes the working set the VMM recorded (raw) as images/<image id>.ws in the store. */
int vmsnap_ws_commit(const char *raw, const char *store_dir, char *why, size_t len);
/* Path of the working set of the image a snapshot file names (for --snap-ws). */
int vmsnap_ws_path(const char *snap_file, const char *store_dir, char *out, size_t len);

#endif
