/*
 * System-call handlers of the process VM. Each takes the VM and the six argument
 * registers and returns what Linux would put in RAX: a result or a negative errno.
 */
#ifndef STOKE_VMM_SYS_H
#define STOKE_VMM_SYS_H

#include "vm.h"

#define SYS_HANDLER(name) long sys_##name(struct vm *vm, const uint64_t *a)

/* Converts a host libc return (-1 + errno) into a Linux return value. */
long sys_ret(long r);

/* sys_memory.c */
SYS_HANDLER(brk);
SYS_HANDLER(mmap);
SYS_HANDLER(munmap);
SYS_HANDLER(mprotect);
SYS_HANDLER(mremap);
SYS_HANDLER(madvise);

/* sys_files.c */
SYS_HANDLER(read);
SYS_HANDLER(write);
SYS_HANDLER(pread64);
SYS_HANDLER(pwrite64);
SYS_HANDLER(readv);
SYS_HANDLER(writev);
SYS_HANDLER(open);
SYS_HANDLER(openat);
SYS_HANDLER(close);
SYS_HANDLER(lseek);
SYS_HANDLER(dup);
SYS_HANDLER(dup2);
SYS_HANDLER(dup3);
SYS_HANDLER(fcntl);
SYS_HANDLER(ioctl);
SYS_HANDLER(ftruncate);
SYS_HANDLER(getdents64);

/* sys_paths.c */
SYS_HANDLER(stat);
SYS_HANDLER(lstat);
SYS_HANDLER(fstat);
SYS_HANDLER(newfstatat);
SYS_HANDLER(statx);
SYS_HANDLER(readlink);
SYS_HANDLER(readlinkat);
SYS_HANDLER(access);
SYS_HANDLER(faccessat);
SYS_HANDLER(faccessat2);
SYS_HANDLER(getcwd);
SYS_HANDLER(chdir);
SYS_HANDLER(mkdir);
SYS_HANDLER(mkdirat);
SYS_HANDLER(unlink);
SYS_HANDLER(unlinkat);
SYS_HANDLER(rmdir);
SYS_HANDLER(rename);
SYS_HANDLER(renameat);
SYS_HANDLER(umask);

/* sys_process.c */
SYS_HANDLER(exit);
SYS_HANDLER(exit_group);
SYS_HANDLER(getpid);
SYS_HANDLER(getppid);
SYS_HANDLER(getuid);
SYS_HANDLER(set_tid_address);
SYS_HANDLER(set_robust_list);
SYS_HANDLER(rseq);
SYS_HANDLER(arch_prctl);
SYS_HANDLER(prlimit64);
SYS_HANDLER(getrlimit);
SYS_HANDLER(uname);
SYS_HANDLER(rt_sigaction);
SYS_HANDLER(rt_sigprocmask);
SYS_HANDLER(sigaltstack);
SYS_HANDLER(futex);
SYS_HANDLER(sched_getaffinity);
SYS_HANDLER(sched_yield);
SYS_HANDLER(getrandom);
SYS_HANDLER(sysinfo);

/* sys_time.c */
SYS_HANDLER(clock_gettime);
SYS_HANDLER(clock_getres);
SYS_HANDLER(gettimeofday);
SYS_HANDLER(time);
SYS_HANDLER(nanosleep);
SYS_HANDLER(clock_nanosleep);

#endif
