/* The VMM's sandbox: see jail.h. */
#include "jail.h"
#include "vm.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOBODY 65534
#define CG_ROOT "/sys/fs/cgroup"

static int write_file(const char *dir, const char *name, const char *val)
{
	char path[512];
	int fd, r = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (write(fd, val, strlen(val)) < 0)
		r = -errno;
	close(fd);
	return r;
}

/* cgroup v2 where its controllers are enabled, else the v1 memory and cpu hierarchies. */
static int cgroup_create(struct jail_config *jc, pid_t pid)
{
	char val[64], name[80];
	int r;

	/* "auto": one cgroup per VM, named after the process that supervises it */
	if (!strcmp(jc->cgroup, "auto"))
		snprintf(name, sizeof(name), "vm-%d", (int)getpid());
	else
		snprintf(name, sizeof(name), "%s", jc->cgroup);
	snprintf(jc->cg_paths[0], sizeof(jc->cg_paths[0]), CG_ROOT "/stoke-%s", name);
	if (access(CG_ROOT "/cgroup.controllers", F_OK) == 0 &&
	    mkdir(jc->cg_paths[0], 0755) == 0) {
		snprintf(val, sizeof(val), "%llu", (unsigned long long)jc->mem_bytes);
		r = write_file(jc->cg_paths[0], "memory.max", val);
		if (!r)
			r = write_file(jc->cg_paths[0], "cpu.max", "100000 100000");
		snprintf(val, sizeof(val), "%d", pid);
		return r ? r : write_file(jc->cg_paths[0], "cgroup.procs", val);
	}
	snprintf(jc->cg_paths[0], sizeof(jc->cg_paths[0]), CG_ROOT "/memory/stoke-%s", name);
	snprintf(jc->cg_paths[1], sizeof(jc->cg_paths[1]), CG_ROOT "/cpu/stoke-%s", name);
	if (mkdir(jc->cg_paths[0], 0755) < 0 || mkdir(jc->cg_paths[1], 0755) < 0)
		return -errno;
	snprintf(val, sizeof(val), "%llu", (unsigned long long)jc->mem_bytes);
	r = write_file(jc->cg_paths[0], "memory.limit_in_bytes", val);
	if (!r)
		r = write_file(jc->cg_paths[1], "cpu.cfs_quota_us", "100000");
	snprintf(val, sizeof(val), "%d", pid);
	if (!r)
		r = write_file(jc->cg_paths[0], "cgroup.procs", val);
	return r ? r : write_file(jc->cg_paths[1], "cgroup.procs", val);
}

static void cgroup_remove(struct jail_config *jc)
{
	int i, tries, r;

	/* An exited task leaves its cgroup asynchronously: rmdir says EBUSY for a moment. */
	for (i = 0; i < 2; i++) {
		if (!jc->cg_paths[i][0])
			continue;
		for (tries = 0; tries < 50; tries++) {
			r = rmdir(jc->cg_paths[i]);
			if (r == 0 || errno != EBUSY)
				break;
			usleep(2000);
		}
		if (r)
			fprintf(stderr, "stoke-vmm: removing %s: %s\n", jc->cg_paths[i],
				strerror(errno));
	}
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

void jail_cleanup(struct jail_config *jc)
{
	/* Jailed, the tmpfs vanishes with our mount namespace; the parent removes stage. */
	if (!jc->jail && jc->stage[0])
		nftw(jc->stage, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static volatile pid_t jailed_child;

static void on_term(int sig)
{
	(void)sig;
	if (jailed_child > 0)
		kill(jailed_child, SIGKILL);
}

/* The parent half after fork: wait for the VMM, pass its status on, clean up. */
static void supervise(struct jail_config *jc, pid_t child, int go_fd)
{
	int status = 0, r;

	/* SIGTERM from the daemon ends the VM but still runs the cleanup below. */
	jailed_child = child;
	signal(SIGTERM, on_term);

	if (jc->cgroup && (r = cgroup_create(jc, child)) < 0)
		fprintf(stderr, "stoke-vmm: cgroup: %s (continuing without)\n", strerror(-r));
	if (write(go_fd, "g", 1) < 0)
		kill(child, SIGKILL);
	close(go_fd);
	while (waitpid(child, &status, 0) < 0 && errno == EINTR)
		;
	cgroup_remove(jc);
	rmdir(jc->stage);	/* its tmpfs lived in the child's mount namespace only */
	if (WIFSIGNALED(status))
		_exit(128 + WTERMSIG(status));
	_exit(WEXITSTATUS(status));
}

static int make_stage(struct jail_config *jc)
{
	const char *base = getenv("TMPDIR");

	snprintf(jc->stage, sizeof(jc->stage), "%s/stoke-vmm-XXXXXX",
		 base && strlen(base) < 32 ? base : "/tmp");
	if (!mkdtemp(jc->stage))
		return -errno;
	snprintf(jc->tmp, sizeof(jc->tmp), "%s/tmp", jc->stage);
	return 0;
}

static int mount_stage(struct jail_config *jc)
{
	char opts[64];

	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		return -errno;
	snprintf(opts, sizeof(opts), "size=%llu,mode=0755",
		 (unsigned long long)(jc->tmp_bytes ? jc->tmp_bytes : 4096));
	if (mount("tmpfs", jc->stage, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts) < 0)
		return -errno;
	return 0;
}

int jail_prepare(struct jail_config *jc, struct vm_config *cfg)
{
	int go[2], r;
	pid_t pid;
	char c;

	r = make_stage(jc);
	if (r)
		return r;
	jc->mem_bytes = cfg->mem_bytes + (64ULL << 20);	/* guest memory + VMM overhead */
	if (jc->jail) {
		/* The mount namespace is the child's alone: its pivot_root would move ours. */
		if (unshare(CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS) < 0)
			return -errno;
		if (pipe2(go, O_CLOEXEC) < 0)
			return -errno;
		pid = fork();
		if (pid < 0)
			return -errno;
		if (pid > 0) {
			close(go[0]);
			if (cfg->channel_fd >= 0)
				close(cfg->channel_fd);
			supervise(jc, pid, go[1]);
		}
		close(go[1]);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (read(go[0], &c, 1) != 1)
			_exit(125);
		close(go[0]);
		if (unshare(CLONE_NEWNS) < 0)
			return -errno;
		r = mount_stage(jc);
		if (r)
			return r;
	}
	if (mkdir(jc->tmp, 01777) < 0 || chmod(jc->tmp, 01777) < 0)
		return -errno;
	if (cfg->tmp_bytes)
		cfg->tmp_dir = jc->tmp;
	return 0;
}

static int pivot(struct jail_config *jc)
{
	if (mkdir(jc->stage, 0755) < 0 && errno != EEXIST)
		return -errno;
	if (chdir(jc->stage) < 0 || mkdir("old", 0700) < 0)
		return -errno;
	if (syscall(SYS_pivot_root, ".", "old") < 0)
		return -errno;
	return 0;
}

/*
 * The unmounting child: writes 0 (done) or 1 (failed) on its descriptor and returns,
 * which ends it. It shares the VMM's memory and even its thread pointer (CLONE_VM, no
 * page tables to copy), so it makes system calls and nothing else, on its own stack;
 * it does not read errno, which is the VMM thread's.
 */
static int unmount_old(void *arg)
{
	int fd = (int)(intptr_t)arg, failed;

	failed = syscall(SYS_umount2, "old", MNT_DETACH) || syscall(SYS_rmdir, "old");
	syscall(SYS_write, fd, &failed, sizeof(failed));
	return 0;
}

/*
 * The lazy unmount waits for an RCU grace period (0.4-1.4 ms measured here), which a
 * child process can wait out while the VMM maps the snapshot and installs its filter
 * (a thread would hold up the privilege drop: glibc's setresuid signals every thread).
 */
static char unmount_stack[16384] __attribute__((aligned(16)));

int jail_detach(struct jail_config *jc)
{
	int p[2], r;
	pid_t pid;

	if (!jc->jail || jc->detached)
		return jc->detach_err;
	jc->detached = 1;
	jc->umount_fd = -1;
	r = pivot(jc);
	if (!r && pipe2(p, O_CLOEXEC) < 0)
		r = -errno;
	if (r)
		return jc->detach_err = r;
	signal(SIGCHLD, SIG_IGN);	/* nobody waits for it: reaped by the kernel */
	pid = clone(unmount_old, unmount_stack + sizeof(unmount_stack), CLONE_VM | SIGCHLD,
		    (void *)(intptr_t)p[1]);
	close(p[1]);
	if (pid < 0) {
		close(p[0]);
		r = umount2("old", MNT_DETACH) < 0 || rmdir("old") < 0 ? -errno : 0;
	} else {
		jc->umount_fd = p[0];
	}
	if (!r && chdir("/") < 0)
		r = -errno;
	return jc->detach_err = r;
}

/* Until the child reported the host's tree unmounted: no guest code runs before. */
static int wait_detached(struct jail_config *jc)
{
	int failed = 1;
	ssize_t n;

	if (!jc->detached || jc->umount_fd < 0)
		return 0;
	do
		n = read(jc->umount_fd, &failed, sizeof(failed));
	while (n < 0 && errno == EINTR);
	close(jc->umount_fd);
	jc->umount_fd = -1;
	/* Unmounting fails only on a broken set-up; the child cannot say why (see above). */
	return n == sizeof(failed) && !failed ? 0 : -EBUSY;
}

static int drop_privileges(void)
{
	if (setgroups(0, NULL) < 0 || setresgid(NOBODY, NOBODY, NOBODY) < 0 ||
	    setresuid(NOBODY, NOBODY, NOBODY) < 0)
		return -errno;
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return -errno;
	/* Changing credentials cleared the parent-death signal: die with the supervisor. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
		return -errno;
	return 0;
}

/* What the system-call layer and the run loop use, and nothing else. */
static const int allowed[] = {
	SCMP_SYS(read), SCMP_SYS(write), SCMP_SYS(pread64), SCMP_SYS(pwrite64),
	SCMP_SYS(readv), SCMP_SYS(writev), SCMP_SYS(close), SCMP_SYS(openat2),
	SCMP_SYS(fstat), SCMP_SYS(newfstatat), SCMP_SYS(statx), SCMP_SYS(lseek),
	SCMP_SYS(getdents64), SCMP_SYS(readlinkat), SCMP_SYS(mkdirat), SCMP_SYS(unlinkat),
	SCMP_SYS(renameat), SCMP_SYS(renameat2), SCMP_SYS(ftruncate), SCMP_SYS(fcntl),
	SCMP_SYS(mmap), SCMP_SYS(munmap), SCMP_SYS(madvise), SCMP_SYS(brk),
	SCMP_SYS(mremap), SCMP_SYS(clock_gettime), SCMP_SYS(clock_getres),
	SCMP_SYS(clock_nanosleep), SCMP_SYS(nanosleep), SCMP_SYS(gettimeofday),
	SCMP_SYS(getrandom), SCMP_SYS(sysinfo), SCMP_SYS(exit), SCMP_SYS(exit_group),
	SCMP_SYS(rt_sigreturn), SCMP_SYS(rt_sigaction), SCMP_SYS(rt_sigprocmask),
	SCMP_SYS(timer_settime), SCMP_SYS(timer_delete), SCMP_SYS(getpid),
	SCMP_SYS(futex), SCMP_SYS(time),
	/* A thread started just before the filter runs glibc's start-up under it. */
	SCMP_SYS(rseq), SCMP_SYS(set_robust_list),
};

static int seccomp_install(const struct jail_config *jc)
{
	scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
	size_t i;
	int r = 0;

	if (!ctx)
		return -ENOMEM;
	for (i = 0; i < sizeof(allowed) / sizeof(allowed[0]) && !r; i++)
		r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, allowed[i], 0);
	/* ioctl only on the VM and vCPU: no host terminal, socket or device tricks. */
	for (i = 0; i < 2 && !r; i++)
		r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(ioctl), 1,
				     SCMP_A0(SCMP_CMP_EQ, (scmp_datum_t)jc->ioctl_fds[i]));
	/* malloc grows a thread's arena with mprotect; never to make memory executable. */
	if (!r)
		r = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, SCMP_SYS(mprotect), 1,
				     SCMP_A2(SCMP_CMP_MASKED_EQ, PROT_EXEC, 0));
	/* libc may look for locale files when formatting messages: refuse, do not kill. */
	if (!r)
		r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EACCES), SCMP_SYS(openat), 0);
	/* Threads made before the filter (the restore's populate thread) get it too. */
	if (!r)
		r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
	if (!r)
		r = seccomp_load(ctx);
	seccomp_release(ctx);
	return r;
}

int jail_enter(struct jail_config *jc)
{
	int r = jail_detach(jc);

	if (!r)
		r = drop_privileges();
	if (!r && jc->before_filter)
		jc->before_filter(jc->before_filter_arg);
	if (!r)
		r = seccomp_install(jc);
	if (!r)
		r = wait_detached(jc);
	return r;
}
