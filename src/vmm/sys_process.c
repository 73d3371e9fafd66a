/* Process-level system calls: identity, limits, signals (recorded only), randomness. */
#include "sys.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/sysinfo.h>
#include <sys/utsname.h>
#include <linux/futex.h>
#include <sched.h>

/* The program is PID 1 of its own world, with one thread. */
#define GUEST_PID 1
#define ARCH_SET_GS 0x1001
#define ARCH_SET_FS 0x1002
#define ARCH_GET_FS 0x1003
#define ARCH_GET_GS 0x1004
#define SS_AUTODISARM_FLAG (1U << 31)
/* Linux's MINSIGSTKSZ for x86-64; glibc's macro is no longer a constant. */
#define LINUX_MINSIGSTKSZ 2048UL

SYS_HANDLER(exit)
{
	vm->exit_code = (int)(a[0] & 0xff);
	vm->exited = 1;
	return 0;
}

SYS_HANDLER(exit_group)
{
	return sys_exit(vm, a);
}

SYS_HANDLER(getpid)
{
	return GUEST_PID;
}

SYS_HANDLER(getppid)
{
	return 0;
}

SYS_HANDLER(getuid)
{
	return 0;
}

SYS_HANDLER(set_tid_address)
{
	vm->tid_address = a[0];
	return GUEST_PID;
}

SYS_HANDLER(set_robust_list)
{
	return a[1] == 24 ? 0 : -EINVAL;
}

SYS_HANDLER(rseq)
{
	/* Restartable sequences need preemption notification: glibc copes without. */
	return -ENOSYS;
}

SYS_HANDLER(arch_prctl)
{
	uint64_t *p;

	switch (a[0]) {
	case ARCH_SET_FS:
		if (a[1] >= (1ULL << 47))
			return -EPERM;
		vm->fs_base = a[1];
		vm->fs_dirty = 1;
		return 0;
	case ARCH_GET_FS:
		p = gmem_ptr(vm, a[1], sizeof(*p));
		if (!p)
			return -EFAULT;
		*p = vm->fs_base;
		return 0;
	default:
		return -EINVAL;
	}
}

static void limit_of(struct vm *vm, int res, struct rlimit *rl)
{
	rl->rlim_cur = rl->rlim_max = RLIM_INFINITY;
	if (res == RLIMIT_STACK)
		rl->rlim_cur = rl->rlim_max = vm->rlimit_stack;
	else if (res == RLIMIT_NOFILE)
		rl->rlim_cur = rl->rlim_max = VM_NR_FDS;
	else if (res == RLIMIT_AS || res == RLIMIT_DATA)
		rl->rlim_cur = rl->rlim_max = vm->mem_size;
	else if (res == RLIMIT_CORE)
		rl->rlim_cur = rl->rlim_max = 0;
}

SYS_HANDLER(prlimit64)
{
	struct rlimit *old;

	if (a[0] != 0 && a[0] != GUEST_PID)
		return -ESRCH;
	if (a[1] >= RLIM_NLIMITS)
		return -EINVAL;
	if (a[3]) {
		old = gmem_ptr(vm, a[3], sizeof(*old));
		if (!old)
			return -EFAULT;
		limit_of(vm, (int)a[1], old);
	}
	/* New limits are accepted and ignored: the VM's own limits are the real ones. */
	return 0;
}

SYS_HANDLER(getrlimit)
{
	struct rlimit *rl = gmem_ptr(vm, a[1], sizeof(*rl));

	if (a[0] >= RLIM_NLIMITS)
		return -EINVAL;
	if (!rl)
		return -EFAULT;
	limit_of(vm, (int)a[0], rl);
	return 0;
}

SYS_HANDLER(uname)
{
	struct utsname *u = gmem_ptr(vm, a[0], sizeof(*u));

	if (!u)
		return -EFAULT;
	memset(u, 0, sizeof(*u));
	strcpy(u->sysname, "Linux");
	strcpy(u->nodename, "stoke");
	strcpy(u->release, "6.1.0-stoke");
	strcpy(u->version, "#1 SMP stoke process VM");
	strcpy(u->machine, "x86_64");
	strcpy(u->domainname, "(none)");
	return 0;
}

SYS_HANDLER(rt_sigaction)
{
	uint64_t sig = a[0];
	void *act = NULL, *old = NULL;

	if (a[3] != 8 || sig < 1 || sig > 64)
		return -EINVAL;
	if (a[1] && !(act = gmem_ptr(vm, a[1], 32)))
		return -EFAULT;
	if (a[2] && !(old = gmem_ptr(vm, a[2], 32)))
		return -EFAULT;
	if (act && (sig == SIGKILL || sig == SIGSTOP))
		return -EINVAL;
	if (old)
		memcpy(old, vm->sigactions[sig - 1], 32);
	if (act)
		memcpy(vm->sigactions[sig - 1], act, 32);
	return 0;
}

SYS_HANDLER(rt_sigprocmask)
{
	uint64_t *set = NULL, *old = NULL;
	const uint64_t never = (1ULL << (SIGKILL - 1)) | (1ULL << (SIGSTOP - 1));

	if (a[3] != 8)
		return -EINVAL;
	if (a[1] && !(set = gmem_ptr(vm, a[1], 8)))
		return -EFAULT;
	if (a[2] && !(old = gmem_ptr(vm, a[2], 8)))
		return -EFAULT;
	if (old)
		*old = vm->sigmask;
	if (!set)
		return 0;
	switch (a[0]) {
	case SIG_BLOCK:
		vm->sigmask |= *set;
		break;
	case SIG_UNBLOCK:
		vm->sigmask &= ~*set;
		break;
	case SIG_SETMASK:
		vm->sigmask = *set;
		break;
	default:
		return -EINVAL;
	}
	vm->sigmask &= ~never;
	return 0;
}

SYS_HANDLER(sigaltstack)
{
	stack_t *ss = NULL, *old = NULL;

	if (a[0] && !(ss = gmem_ptr(vm, a[0], sizeof(*ss))))
		return -EFAULT;
	if (a[1] && !(old = gmem_ptr(vm, a[1], sizeof(*old))))
		return -EFAULT;
	if (old) {
		memcpy(old, vm->altstack, sizeof(*old));
		if (!old->ss_sp)
			old->ss_flags = SS_DISABLE;
	}
	if (ss) {
		if (ss->ss_flags & ~(SS_DISABLE | SS_AUTODISARM_FLAG))
			return -EINVAL;
		if (!(ss->ss_flags & SS_DISABLE) && ss->ss_size < LINUX_MINSIGSTKSZ)
			return -ENOMEM;
		memcpy(vm->altstack, ss, sizeof(*ss));
	}
	return 0;
}

SYS_HANDLER(futex)
{
	uint32_t *word = gmem_ptr(vm, a[0], 4);
	int op = (int)(a[1] & FUTEX_CMD_MASK);

	if (!word)
		return -EFAULT;
	switch (op) {
	case FUTEX_WAKE:
	case FUTEX_WAKE_BITSET:
		return 0;	/* one thread: nobody waits */
	case FUTEX_WAIT:
	case FUTEX_WAIT_BITSET:
		if (*word != (uint32_t)a[2])
			return -EAGAIN;
		/* Nobody could ever wake us: report the deadlock instead of hanging. */
		return a[3] ? -ETIMEDOUT : -EDEADLK;
	default:
		return -ENOSYS;
	}
}

SYS_HANDLER(sched_getaffinity)
{
	uint8_t *mask = gmem_ptr(vm, a[2], a[1]);

	if (a[1] < 8 || (a[1] & 7))
		return -EINVAL;
	if (!mask)
		return -EFAULT;
	memset(mask, 0, a[1]);
	mask[0] = 1;
	return 8;
}

SYS_HANDLER(sched_yield)
{
	return 0;
}

SYS_HANDLER(getrandom)
{
	void *p = gmem_ptr(vm, a[0], a[1]);

	if (a[2] & ~(uint64_t)(GRND_NONBLOCK | GRND_RANDOM | GRND_INSECURE))
		return -EINVAL;
	if (!p)
		return -EFAULT;
	return sys_ret(getrandom(p, a[1] > 33554431 ? 33554431 : a[1], (unsigned)a[2]));
}

SYS_HANDLER(sysinfo)
{
	struct sysinfo *si = gmem_ptr(vm, a[0], sizeof(*si));
	struct sysinfo host;
	uint64_t used = 0, p;

	if (!si)
		return -EFAULT;
	if (sysinfo(&host) < 0)
		return -errno;
	for (p = 0; p < vm->mem_size / VM_PAGE; p++)
		used += vm->page_used[p];
	memset(si, 0, sizeof(*si));
	si->uptime = host.uptime;
	si->totalram = vm->mem_size;
	si->freeram = vm->mem_size - used * VM_PAGE;
	si->procs = 1;
	si->mem_unit = 1;
	return 0;
}
