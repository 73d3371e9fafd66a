/*
 * The system-call table. Unlisted calls fail with ENOSYS and are counted per call, so
 * the daemon can report which ones real functions need next.
 */
#include "sys.h"

#include <errno.h>
#include <stdio.h>
#include <sys/syscall.h>

struct sys_entry {
	const char *name;
	long (*fn)(struct vm *vm, const uint64_t *a);
};

#define E(call) [SYS_##call] = { #call, sys_##call }
#define ALIAS(call, impl) [SYS_##call] = { #call, sys_##impl }
#define NAME(call) [SYS_##call] = { #call, NULL }

static const struct sys_entry table[VM_NR_SYSCALLS] = {
	E(read), E(write), E(open), E(close), E(stat), E(fstat), E(lstat), E(lseek),
	E(mmap), E(mprotect), E(munmap), E(brk), E(rt_sigaction), E(rt_sigprocmask),
	E(ioctl), E(pread64), E(pwrite64), E(readv), E(writev), E(access), E(mremap),
	E(madvise), E(dup), E(dup2), E(nanosleep), E(getpid), E(exit), E(uname),
	E(fcntl), E(ftruncate), E(getcwd), E(chdir), E(rename), E(mkdir), E(rmdir),
	E(unlink), E(readlink), E(umask), E(gettimeofday), E(getrlimit), E(sysinfo),
	E(getuid), ALIAS(getgid, getuid), ALIAS(geteuid, getuid), ALIAS(getegid, getuid),
	E(getppid), ALIAS(getpgrp, getpid), ALIAS(gettid, getpid), E(sigaltstack),
	E(arch_prctl), E(time), E(futex), E(sched_getaffinity), E(sched_yield),
	E(getdents64), E(set_tid_address), E(clock_gettime), E(clock_getres),
	E(clock_nanosleep), E(exit_group), E(openat), E(mkdirat), E(newfstatat),
	E(unlinkat), E(renameat), E(readlinkat), E(faccessat), E(set_robust_list),
	E(dup3), E(prlimit64), E(getrandom), E(statx), E(rseq), E(faccessat2),
	/* Known by name only, so ENOSYS metrics read well. */
	NAME(poll), NAME(select), NAME(pipe), NAME(pipe2), NAME(socket), NAME(connect),
	NAME(accept), NAME(bind), NAME(listen), NAME(clone), NAME(clone3), NAME(fork),
	NAME(vfork), NAME(execve), NAME(wait4), NAME(kill), NAME(tgkill), NAME(epoll_create1),
	NAME(epoll_ctl), NAME(epoll_wait), NAME(eventfd2), NAME(pselect6), NAME(ppoll),
	NAME(sendto), NAME(recvfrom), NAME(socketpair), NAME(getsockopt), NAME(setsockopt),
	NAME(fsync), NAME(fdatasync), NAME(fchmod), NAME(chmod), NAME(fchown), NAME(utimensat),
	NAME(symlink), NAME(link), NAME(flock), NAME(mincore), NAME(membarrier),
	NAME(sched_setaffinity), NAME(getpriority), NAME(setpriority), NAME(timerfd_create),
	NAME(memfd_create), NAME(copy_file_range), NAME(sendfile), NAME(fallocate),
	NAME(fadvise64), NAME(getxattr), NAME(lgetxattr), NAME(prctl), NAME(getsid),
	NAME(setsid), NAME(getpgid), NAME(getrusage), NAME(times), NAME(getgroups),
};

const char *sys_name(uint64_t nr, char *buf, size_t len)
{
	if (nr < VM_NR_SYSCALLS && table[nr].name)
		return table[nr].name;
	snprintf(buf, len, "nr_%llu", (unsigned long long)nr);
	return buf;
}

static long call(struct vm *vm, uint64_t nr, const uint64_t *args)
{
	if (nr >= VM_NR_SYSCALLS)
		return -ENOSYS;
	vm->counts[nr]++;
	if (!table[nr].fn) {
		vm->enosys[nr]++;
		return -ENOSYS;
	}
	return table[nr].fn(vm, args);
}

long sys_dispatch(struct vm *vm, uint64_t nr, const uint64_t *args)
{
	char nb[32];
	long r;

	vm->nr_syscalls++;
	r = call(vm, nr, args);
	if (vm->cfg->trace)
		fprintf(stderr, "[vmm] %s(%#llx, %#llx, %#llx, %#llx) = %ld\n",
			sys_name(nr, nb, sizeof(nb)), (unsigned long long)args[0],
			(unsigned long long)args[1], (unsigned long long)args[2],
			(unsigned long long)args[3], r);
	return r;
}
