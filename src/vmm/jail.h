/*
 * The VMM's own sandbox. Everything a guest can make the VMM do goes through the
 * system-call layer, so the VMM process is confined: its own mount, PID, network, IPC
 * and UTS namespaces; a root directory that is an empty tmpfs (files are reached only
 * through descriptors opened before); an unprivileged user; a seccomp allow-list; and a
 * cgroup capping memory and CPU.
 */
#ifndef STOKE_VMM_JAIL_H
#define STOKE_VMM_JAIL_H

#include <stdint.h>

struct vm_config;

struct jail_config {
	int jail;		/* 0: only create the private /tmp */
	const char *cgroup;	/* cgroup name to create under the stoke hierarchy, or NULL */
	uint64_t tmp_bytes;
	uint64_t mem_bytes;	/* cgroup memory limit */
	char stage[64];		/* host directory: the tmpfs root of the jail */
	char tmp[80];
	char cg_paths[2][256];	/* cgroup directories created (v2: one; v1: memory, cpu) */
	int ioctl_fds[2];	/* the only descriptors ioctl(2) may touch: VM and vCPU */
	/* Run by jail_enter after the privilege drop, before the seccomp filter (which
	 * then also applies to any thread it started). */
	void (*before_filter)(void *arg);
	void *before_filter_arg;
	int detached;		/* jail_detach ran; its result in detach_err */
	int detach_err;
	int umount_fd;		/* the unmounting child's report, or -1 */
};

/*
 * Creates the private /tmp (a size-capped tmpfs when jailed) and sets cfg->tmp_dir.
 * When jailed this forks: the parent stays outside the new PID namespace, waits for the
 * VMM and cleans up, and never returns.
 */
int jail_prepare(struct jail_config *jc, struct vm_config *cfg);
/*
 * Once the VMM has opened every host file it needs: makes the stage its root and
 * starts unmounting the host's tree in a child process, so that work needing no host
 * path (mapping a snapshot) overlaps it. Host paths no longer resolve afterwards. Does
 * nothing unjailed or when it already ran (returning its first result).
 */
int jail_detach(struct jail_config *jc);
/*
 * Drops into the jail once the VMM holds every descriptor it needs: jail_detach if not
 * done yet, the privilege drop, the seccomp filter, then waits until the host's tree is
 * unmounted.
 */
int jail_enter(struct jail_config *jc);
void jail_cleanup(struct jail_config *jc);

#endif
