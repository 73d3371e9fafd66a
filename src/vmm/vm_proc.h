/*
 * Daemon side: one stoke-vmm child process and the exchange of one request with it.
 * Used by the VM tier (vm_tier.c); kept apart so tests and benchmarks can drive a VM
 * without the tier's pools and threads.
 */
#ifndef STOKE_VMM_VM_PROC_H
#define STOKE_VMM_VM_PROC_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct fn;
struct inv;

struct vm_proc {
	pid_t pid;
	int chan;		/* our end of the channel socketpair */
	int out, err;		/* the guest's stdout and stderr (read ends) */
	uint64_t started_ns;
	unsigned served;	/* requests answered */
	int restored;		/* started from a snapshot rather than booted */
	uint32_t mem_mb;
	uint32_t wall_ms;	/* the function's limit, told to the guest per request */
	char tail[1024];	/* the last stderr bytes, for crash reports */
	size_t tail_len;
	char line[2][16384];	/* a partial stdout / stderr line, joined before logging */
	size_t line_len[2];
	uint64_t idle_since_ns;	/* when it last went idle */
	uint64_t idle_cost;	/* what the tier's idle budget counts for it while idle */
	struct vm_proc *next;	/* idle list */
};

/* Where a VM's output lines go: the function's log, under a request id. */
struct vm_logto {
	const char *name;
	const char *request_id;
};

/* How to start a VM for a function: built once per function version at prepare. */
struct vm_launch {
	char *argv[64];
	char strs[8192];	/* storage for argv strings */
	size_t used;
	int argc;
	uint32_t wall_ms;
	uint32_t mem_mb;
	uint32_t tmp_mb;
};

/* Outcome of one exchange, beyond the response it filled in. */
enum vm_outcome { VM_OK, VM_CRASHED, VM_TIMEOUT, VM_CANCELLED, VM_FAILED };

/* What the caller of an exchange hooks into it. */
struct vm_hooks {
	/* Called with the VMM's statistics frame (JSON payload), if non-NULL. */
	void (*on_stats)(void *arg, const char *json, size_t len);
	void *arg;
	/* When it becomes non-zero the exchange stops the VM (within 100 ms). */
	const atomic_int *cancel;
};

uint64_t vm_now_ns(void);
/*
 * Fills l for fn; rootfs_dir and vmm_path come from the tier; native_dir holds the
 * compiled program of a native function deployed as C source (else NULL).
 * Returns 0 or -errno with a message for the user in err.
 */
int vm_launch_build(struct vm_launch *l, const struct fn *fn, const char *rootfs_dir,
		    const char *vmm_path, const char *native_dir, int jail,
		    char *err, size_t errlen);

/*
 * Copies src into dst with the stoke-vmm options opts (NULL-terminated) added before
 * the guest's command line. Returns 0 or -E2BIG.
 */
int vm_launch_with(struct vm_launch *dst, const struct vm_launch *src,
		   const char *const *opts);

/* The same, leaving out src's options that start with one of drop (NULL-terminated). */
int vm_launch_without(struct vm_launch *dst, const struct vm_launch *src,
		      const char *const *drop, const char *const *opts);

/* vm_native.c: native functions deployed as C source, compiled at deploy. */
int vm_native_is_source(const struct fn *fn);
/* Compiles the entry statically into out_dir/main (out_dir is chosen and returned);
 * -ECANCELED once *cancel is set (the daemon stops). */
int vm_native_build(const struct fn *fn, const char *data_dir, const atomic_int *cancel,
		    char *out_dir, size_t len, char *err, size_t errlen);
void vm_native_remove(const char *out_dir);
/* Starts a VM. Returns 0 or -errno. */
int vm_proc_spawn(struct vm_proc *p, const struct vm_launch *l, const char *vmm_path);
/*
 * The launch of a generic shell (stoke-vmm --shell): jail and VM of mem_mb with a
 * /tmp of tmp_mb, the function to come later (vm_proc_launch).
 */
int vm_launch_shell(struct vm_launch *l, const char *vmm_path, uint32_t mem_mb,
		    uint32_t tmp_mb, int jail);
/*
 * Hands a generic shell spawned from vm_launch_shell the function to run: l's command
 * line, as one launch frame. l must have the shell's mem_mb and tmp_mb.
 * Returns 0 or -errno (the shell is then unusable).
 */
int vm_proc_launch(struct vm_proc *p, const struct vm_launch *l);
/*
 * Sends inv's request and waits for the response (at most budget_ms), streaming the
 * guest's stdout/stderr into the function's log. On VM_OK inv->resp is filled; on any
 * other outcome the process is dead and reaped, and *status holds its wait status.
 */
enum vm_outcome vm_proc_invoke(struct vm_proc *p, struct inv *inv, uint32_t budget_ms,
			       const struct vm_hooks *hooks, int *status);
/*
 * Waits up to ms for the guest's output, reads what there is and logs its whole lines
 * to `to` (NULL drops them), keeping stderr's last bytes in p->tail. Returns how many
 * pipes were ready, or -1 once both are at end of file (and closed).
 */
int vm_proc_pump(struct vm_proc *p, int ms, const struct vm_logto *to);
/* Logs the partial lines p still holds. */
void vm_proc_flush_output(struct vm_proc *p, const struct vm_logto *to);
/*
 * What the idle VM costs the host in bytes: its cgroup's charge (the VMM's anonymous
 * memory and page tables, KVM's kernel memory for the VM, page cache it brought in
 * first), read from the per-VM cgroup a jailed VM runs in (--cgroup=auto). The guest
 * size when there is no such cgroup (unjailed): an upper bound, since guest memory is
 * only allocated where touched.
 */
uint64_t vm_proc_idle_cost(const struct vm_proc *p);
/* Whether the VMM has exited (it is not reaped: vm_proc_kill does that). */
int vm_proc_exited(const struct vm_proc *p);
/* Whether an idle VM's channel has ended (or holds bytes nobody asked for). */
int vm_proc_hung_up(const struct vm_proc *p);
/* Kills (if still running) and reaps the process, closes its descriptors. */
void vm_proc_kill(struct vm_proc *p);
/* Stops and reaps a stoke-vmm process: SIGTERM, then SIGKILL after 500 ms. */
void vm_proc_stop(pid_t pid, int *status);

#endif
