/*
 * stoke-vmm: one process runs one process VM. A Linux x86-64 program runs in guest user
 * mode; each of its system calls and faults leaves the guest in one exit and is served
 * here. All per-VM state lives in struct vm so that a snapshot can later save and
 * restore it as a unit.
 */
#ifndef STOKE_VMM_VM_H
#define STOKE_VMM_VM_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define VM_PAGE		4096UL
#define VM_NR_FDS	256
#define VM_NR_SYSCALLS	512
/* Guest descriptor of the invocation channel (docs/channel-abi.md). */
#define VM_CHANNEL_FD	3

struct kvm_run;
struct vmsnap_state;

enum vfd_kind { VFD_FREE = 0, VFD_HOST, VFD_STDIN, VFD_STDOUT, VFD_STDERR, VFD_CHANNEL };

/* One guest file descriptor. VFD_HOST descriptors own host fd `host`. */
struct vfd {
	enum vfd_kind kind;
	int host;
	int cloexec;
	int flags;		/* open(2) flags as given (access mode, O_APPEND...) */
	char *path;		/* guest path, for directory-relative lookups */
};

/* Guest mount points layered over the root file system. */
enum vm_mount { VM_MNT_ROOT, VM_MNT_TASK, VM_MNT_RUNTIME, VM_MNT_TMP, VM_MNT_COUNT };

struct vm_config {
	const char *rootfs;	/* host directory: the guest's / */
	const char *task_dir;	/* host directory shown at /var/task, or NULL */
	const char *runtime_dir; /* host directory shown at /var/runtime, or NULL */
	const char *tmp_dir;	/* host directory shown at /tmp, or NULL for none */
	uint64_t mem_bytes;
	uint64_t tmp_bytes;
	uint32_t wall_ms;	/* per request; 0 for no limit */
	int channel_fd;		/* host end of the channel, or -1 */
	int jail;
	int stats;		/* print system-call counts at exit */
	int trace;		/* print every system call (STOKE_VMM_TRACE=1) */
	char **argv;		/* program (guest path) and its arguments */
	char **envp;
	/* Snapshots (vmsnap.h): each NULL when unused. */
	const char *snap_dump;	/* take a dump at the first channel read, into this file */
	const char *snap_base_dump; /* dump the loaded program before it runs (base layer) */
	const char *snap_restore; /* restore from this snapshot file instead of booting */
	const char *snap_store;	/* page store holding the snapshot's restore image */
	const char *snap_ws;	/* working set to prefetch on restore */
	const char *snap_ws_out; /* record the working set of the first request here */
	int snap_huge;		/* restore: copy the working set's 2 MiB regions to huge pages */
	const char *state_dump;	/* dump here when the daemon asks at an idle read (keep) */
	int restore_strict;	/* a failed restore ends the VMM instead of booting */
	int snap_touch;		/* restore: the guest touches the working set before its read */
};

/* Frame tracker for the guest's outbound channel bytes (see channel.c). */
struct chan_track {
	uint8_t hdr[8];
	uint32_t hdr_len;
	uint64_t left;		/* payload bytes still to come in the current frame */
	uint8_t type;
};

struct vm {
	const struct vm_config *cfg;
	/* Called by a restore once it has opened every host file it needs (the jail then
	 * starts leaving the host's file system while guest memory is mapped), or NULL. */
	void (*host_files_done)(void *arg);
	void *host_files_done_arg;

	/* KVM objects */
	int kvm_fd;
	int vm_fd;
	int vcpu_fd;
	struct kvm_run *run;
	size_t run_size;

	/* Guest memory: one slot at guest-physical 0, identity mapped. */
	uint8_t *mem;
	uint64_t mem_size;
	uint8_t *page_used;	/* one byte per 4 KiB page: owned by brk, mmap or the loader */
	uint64_t brk_start;
	uint64_t brk_cur;
	uint64_t mmap_top;	/* mappings are placed top-down below this */
	uint64_t stack_lo;

	/* Files */
	int mnt_fd[VM_MNT_COUNT];
	struct vfd fds[VM_NR_FDS];
	char cwd[256];
	char exe_path[256];
	unsigned umask;

	/* Process state the guest can observe */
	uint64_t fs_base;
	int fs_dirty;
	uint64_t tid_address;
	uint64_t rlimit_stack;
	/* Signals are recorded, never delivered: a fault ends the program. */
	uint8_t sigactions[64][32];	/* struct kernel_sigaction per signal */
	uint64_t sigmask;
	uint8_t altstack[24];		/* stack_t */

	/* Guest time (clock.c) */
	int has_vdso;
	int64_t tsc_offset;	/* guest TSC - host TSC */

	/* Channel and per-request wall clock */
	struct chan_track out;
	int in_request;
	int status_fd;		/* /proc/self/status, opened before the jail; <= 0: none */
	uint8_t stash[8];	/* a request header read ahead by the VMM (state: keep) */
	uint32_t stash_len, stash_off;
	uint64_t request_cpu_ns;	/* process CPU time when the request came in */
	timer_t wall_timer;
	int has_wall_timer;

	/* Accounting */
	uint64_t nr_syscalls;
	uint64_t nr_runs;		/* KVM_RUN calls */
	uint64_t run_ns;		/* time inside KVM_RUN (guest + exits), with --stats */
	uint64_t counts[VM_NR_SYSCALLS];
	uint64_t enosys[VM_NR_SYSCALLS];
	uint64_t enosys_reported[VM_NR_SYSCALLS];
	int exit_code;
	int exited;

	/* Snapshots (vmsnap.c): NULL when neither taking nor restoring one. */
	struct vmsnap_state *snap;
	int mem_is_file;	/* guest memory is a private mapping of a restore image */
	char stop_reason[256];	/* why vm_run stopped early, for the operator */
};

/* kvm.c: VM, vCPU and the run loop. Return 0 or -errno. */
int vm_create(struct vm *vm, const struct vm_config *cfg);
void vm_destroy(struct vm *vm);
/*
 * Starts the program at entry with stack pointer sp; returns 0 when it exits, or
 * -EFAULT (guest fault), -EIO (unexpected exit), -EINTR (wall time) with
 * vm->stop_reason and vm->exit_code set.
 */
int vm_run(struct vm *vm, uint64_t entry, uint64_t sp);
/* Continues a restored VM: finishes its pending system call, then runs as vm_run. */
int vm_resume(struct vm *vm);
/*
 * For recording a working set exactly: maps the user memory below GL_TRACK_PT's reach
 * with 4 KiB guest pages (normally 2 MiB), so that the accessed bits the guest's MMU
 * sets name the pages it touched. The host's page tables cannot tell: one host fault
 * maps a whole large folio of the image. Only before the vCPU first runs: this
 * machine's shadow MMU does not see edits of present entries. Returns 0 or -errno
 * (-EINVAL: the page directory is not the one this VMM builds).
 */
int vm_track_pages(struct vm *vm);
/* End of the guest-physical range vm_track_pages covers (from GL_KERNEL_END). */
uint64_t vm_tracked_end(struct vm *vm);
/* Sets the bits of the pages the guest accessed since vm_track_pages (one per page). */
void vm_tracked_accessed(struct vm *vm, uint64_t *bitmap);
/*
 * Whether this VM's memory (a restored image) has the guest kernel and the GL_TOUCH
 * mapping this VMM was built with, so that vm_touch can run.
 */
int vm_touch_ready(struct vm *vm);
/*
 * In a restored VM stopped in its pending system call: runs gk_touch over the n page
 * ranges at GL_TOUCH (guest-physical, written by the caller), so that the guest's
 * shadow page faults on them happen now, then restores the registers. Returns 0, or
 * -EIO when the guest did not finish (the VM is then unusable).
 */
int vm_touch(struct vm *vm, uint32_t n);

/* memory.c: guest address space. */
int gmem_init(struct vm *vm);
/* Checks that [addr, addr+len) is guest memory; returns a host pointer or NULL. */
void *gmem_ptr(struct vm *vm, uint64_t addr, uint64_t len);
/* Copies a NUL-terminated guest string (at most max bytes including NUL). */
int gmem_str(struct vm *vm, uint64_t addr, char *buf, size_t max);
/* Reserves len bytes (page multiple) top-down in the mapping area; 0 when full. */
uint64_t gmem_alloc(struct vm *vm, uint64_t len);
void gmem_mark(struct vm *vm, uint64_t addr, uint64_t len, int used);
/* Gives the pages back to the host: they read as zero afterwards. */
void gmem_zero(struct vm *vm, uint64_t addr, uint64_t len);

/* elf.c: loads cfg->argv[0] (and its interpreter) and builds the initial stack. */
int elf_load_program(struct vm *vm, uint64_t *entry, uint64_t *sp);

/* files.c: guest paths, descriptors. */
int vfs_init(struct vm *vm);
void vfs_close_all(struct vm *vm);
/* Opens a guest path on the host; flags as for openat(2). Returns a host fd or -errno. */
int vfs_open(struct vm *vm, int dirfd, const char *path, int flags, int *mnt_out);
/* Normalized absolute guest path of path, relative to dirfd (or the cwd). */
int vfs_resolve(struct vm *vm, int dirfd, const char *path, char *abs, size_t max);
/*
 * Opens the parent directory of a path for creating or removing an entry; only /tmp
 * allows it (-EROFS elsewhere). The entry's name goes to base (len bytes).
 */
int vfs_parent(struct vm *vm, int dirfd, const char *path, char *base, size_t len);
struct vfd *vfd_get(struct vm *vm, long fd);
int vfd_install(struct vm *vm, int host, int min, int cloexec);

/* channel.c: the invocation channel relay. */
long chan_read(struct vm *vm, void *buf, size_t len);
long chan_write(struct vm *vm, const void *buf, size_t len);
int chan_arm_timer(struct vm *vm);
/* Opens what the statistics frame reads (the resident high-water) before the jail. */
void chan_open_status(struct vm *vm);

/* syscall.c: Linux system-call layer. */
/* Runs system call nr; sets vm->exited on exit/exit_group. */
long sys_dispatch(struct vm *vm, uint64_t nr, const uint64_t *args);
/* Name of a system call for logs and metrics ("nr_N" when unknown). */
const char *sys_name(uint64_t nr, char *buf, size_t len);

#endif
