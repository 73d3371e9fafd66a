/* Process, signal-bookkeeping and randomness calls; compared with Linux. */
#include "t.h"
#include <asm/prctl.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdint.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

static void on_usr1(int sig) { (void)sig; }

int main(void)
{
	struct utsname u;
	struct rlimit rl;
	struct sigaction sa = { 0 }, old;
	sigset_t set, oset;
	unsigned char rnd[16];
	uint64_t fs = 0;
	uint32_t word = 1;
	stack_t ss = { 0 }, oss;

	TRUTH("getpid positive", getpid() > 0);
	TRUTH("gettid is pid", syscall(SYS_gettid) == getpid());
	SHOWOK("uname", uname(&u));
	printf("sysname %s machine %s\n", u.sysname, u.machine);
	SHOWOK("getrlimit nofile", getrlimit(RLIMIT_NOFILE, &rl));
	TRUTH("nofile >= 64", rl.rlim_cur >= 64);
	SHOW("getrlimit bad", getrlimit(99, &rl));
	sa.sa_handler = on_usr1;
	SHOWOK("sigaction", sigaction(SIGUSR1, &sa, NULL));
	SHOWOK("sigaction get", sigaction(SIGUSR1, NULL, &old));
	TRUTH("handler kept", old.sa_handler == on_usr1);
	SHOW("sigaction SIGKILL", sigaction(SIGKILL, &sa, NULL));
	sigemptyset(&set);
	sigaddset(&set, SIGUSR2);
	SHOWOK("sigprocmask", sigprocmask(SIG_BLOCK, &set, NULL));
	SHOWOK("sigprocmask get", sigprocmask(SIG_BLOCK, NULL, &oset));
	TRUTH("usr2 blocked", sigismember(&oset, SIGUSR2));
	SHOW("sigprocmask bad how", syscall(SYS_rt_sigprocmask, 99, &set, NULL, 8));
	SHOW("sigaltstack query", sigaltstack(NULL, &oss));
	TRUTH("altstack disabled", oss.ss_flags == SS_DISABLE);
	ss.ss_size = 100;
	ss.ss_sp = rnd;
	SHOW("sigaltstack too small", sigaltstack(&ss, NULL));
	SHOW("getrandom", getrandom(rnd, sizeof(rnd), 0));
	SHOW("getrandom bad flags", getrandom(rnd, sizeof(rnd), 0x100));
	SHOWOK("arch_prctl get fs", syscall(SYS_arch_prctl, ARCH_GET_FS, &fs));
	TRUTH("fs set by libc", fs != 0);
	SHOW("futex wait mismatch", syscall(SYS_futex, &word, FUTEX_WAIT, 0, NULL, NULL, 0));
	SHOW("futex wake", syscall(SYS_futex, &word, FUTEX_WAKE, 1, NULL, NULL, 0));
	SHOW("unknown syscall", syscall(450 + 50));
	return 0;
}
