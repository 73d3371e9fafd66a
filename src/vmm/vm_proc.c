/* Daemon side of one VM: spawning stoke-vmm and one request/response exchange. */
#include "vm_proc.h"
#include "frame.h"
#include "common/base64.h"
#include "common/invoke.h"
#include "common/strbuf.h"

#include <cjson/cJSON.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Guest descriptor of the channel, and the same number in the stoke-vmm process. */
#define CHILD_CHANNEL_FD 3

extern char **environ;

uint64_t vm_now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

static int add_arg(struct vm_launch *l, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (l->argc >= (int)(sizeof(l->argv) / sizeof(l->argv[0])) - 1)
		return -E2BIG;
	va_start(ap, fmt);
	n = vsnprintf(l->strs + l->used, sizeof(l->strs) - l->used, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(l->strs) - l->used)
		return -E2BIG;
	l->argv[l->argc++] = l->strs + l->used;
	l->argv[l->argc] = NULL;
	l->used += (size_t)n + 1;
	return 0;
}

/*
 * Runtime bootstraps: $STOKE_RUNTIMES, else runtimes/ beside stoke-vmm (an installed
 * layout), else the source tree this was built from.
 */
static void runtime_dir(char *out, size_t len, const char *vmm_path, const char *runtime)
{
	const char *env = getenv("STOKE_RUNTIMES");
	const char *slash = strrchr(vmm_path, '/');

	if (env && *env) {
		snprintf(out, len, "%s/%s", env, runtime);
		return;
	}
	snprintf(out, len, "%.*s/runtimes/%s", slash ? (int)(slash - vmm_path) : 1,
		 slash ? vmm_path : ".", runtime);
	if (access(out, F_OK))
		snprintf(out, len, "%s/%s", STOKE_RUNTIMES_DIR, runtime);
}

static int check_file(const char *path, char *err, size_t errlen, const char *what)
{
	struct stat st;

	if (stat(path, &st) == 0 && S_ISREG(st.st_mode))
		return 0;
	snprintf(err, errlen, "%s not found: %s", what, path);
	return -ENOENT;
}

/*
 * A prebuilt native entry must be a 64-bit x86 ELF program: anything else would deploy
 * and then fail every request with "Exec format error".
 */
static int check_native(const struct fn *fn, const char *path, char *err, size_t errlen)
{
	unsigned char h[20];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : read(fd, h, sizeof(h));

	if (fd >= 0)
		close(fd);
	if (n == (ssize_t)sizeof(h) && !memcmp(h, ELFMAG, SELFMAG) && h[EI_CLASS] == ELFCLASS64 &&
	    h[EI_DATA] == ELFDATA2LSB && (h[18] | h[19] << 8) == EM_X86_64)
		return 0;
	snprintf(err, errlen, "%s is not an x86-64 ELF program: a native function is a "
		 "Linux x86-64 executable or one C file (.c), compiled at deploy", fn->entry);
	return -ENOEXEC;
}

/* native_dir holds the program compiled from a C entry; else the entry is the program. */
static int launch_native(struct vm_launch *l, const struct fn *fn, const char *path,
			 const char *native_dir, char *err, size_t errlen)
{
	int r = native_dir ? 0 : check_native(fn, path, err, errlen);

	r = r ? r : add_arg(l, "--rootfs=%s", fn->dir);
	return r || !native_dir ? r : add_arg(l, "--runtime=%s", native_dir);
}

static int launch_python(struct vm_launch *l, const struct fn *fn, const char *rootfs_dir,
			 const char *vmm_path, char *err, size_t errlen)
{
	char rt[2048], path[4096];
	int r;

	runtime_dir(rt, sizeof(rt), vmm_path, "python3");
	snprintf(path, sizeof(path), "%s/bootstrap.py", rt);
	r = check_file(path, err, errlen, "python3 runtime bootstrap");
	if (r)
		return r;
	snprintf(path, sizeof(path), "%s/python3/usr/bin/python3", rootfs_dir);
	if (access(path, F_OK)) {
		snprintf(err, errlen, "python3 root file system missing (%s/python3): "
			 "run scripts/setup", rootfs_dir);
		return -ENOENT;
	}
	r = add_arg(l, "--rootfs=%s/python3", rootfs_dir);
	r = r ? r : add_arg(l, "--runtime=%s", rt);
	r = r ? r : add_arg(l, "--env=STOKE_ENTRY=%s", fn->entry);
	return r;
}

static int add_program(struct vm_launch *l, const struct fn *fn, const char *native_dir)
{
	int r;

	r = add_arg(l, "--");
	if (native_dir)
		return r ? r : add_arg(l, "/var/runtime/main");
	if (!strcmp(fn->runtime, "python3")) {
		r = r ? r : add_arg(l, "/usr/bin/python3");
		r = r ? r : add_arg(l, "-S");
		return r ? r : add_arg(l, "/var/runtime/bootstrap.py");
	}
	return r ? r : add_arg(l, "/var/task/%s", fn->entry);
}

int vm_launch_build(struct vm_launch *l, const struct fn *fn, const char *rootfs_dir,
		    const char *vmm_path, const char *native_dir, int jail,
		    char *err, size_t errlen)
{
	char path[4096];
	size_t i;
	int r;

	memset(l, 0, sizeof(*l));
	l->wall_ms = fn->limits.wall_ms ? fn->limits.wall_ms : 30000;
	/* Below 64 MiB the guest has too little room for a runtime's stack and mappings. */
	l->mem_mb = fn->limits.memory_mb ? fn->limits.memory_mb : 256;
	if (l->mem_mb < 64)
		l->mem_mb = 64;
	snprintf(path, sizeof(path), "%s/%s", fn->dir, fn->entry);
	if (strstr(fn->entry, "..") || check_file(path, err, errlen, "entry"))
		return -ENOENT;
	r = add_arg(l, "%s", vmm_path);
	r = r ? r : add_arg(l, "--task=%s", fn->dir);
	r = r ? r : add_arg(l, "--mem-mb=%u", l->mem_mb);
	/* tmp_mb 0 means no /tmp at all (the manifest fills in the default). */
	l->tmp_mb = fn->limits.tmp_mb;
	r = r ? r : add_arg(l, "--tmp-mb=%u", fn->limits.tmp_mb);
	r = r ? r : add_arg(l, "--wall-ms=%u", l->wall_ms);
	r = r ? r : add_arg(l, "--channel-fd=%d", CHILD_CHANNEL_FD);
	r = r ? r : add_arg(l, "--env=STOKE_CHANNEL_FD=%d", CHILD_CHANNEL_FD);
	r = r ? r : add_arg(l, "--env=STOKE_FUNCTION=%s", fn->name);
	/* Spawned VMs die with the daemon (PR_SET_PDEATHSIG): no orphans burn CPU. */
	r = r ? r : add_arg(l, "--parent-pid=%d", (int)getpid());
	if (!r)
		r = add_arg(l, jail ? "--cgroup=auto" : "--no-jail");
	for (i = 0; i < fn->nenv && !r; i++)
		r = add_arg(l, "--env=%s=%s", fn->env[i].name, fn->env[i].value);
	if (r)
		return r;
	if (!strcmp(fn->runtime, "python3"))
		r = launch_python(l, fn, rootfs_dir, vmm_path, err, errlen);
	else if (!strcmp(fn->runtime, "native"))
		r = launch_native(l, fn, path, native_dir, err, errlen);
	else
		snprintf(err, errlen, "runtime '%s' is not served by the vm tier "
			 "(python3, native)", fn->runtime), r = -EINVAL;
	return r ? r : add_program(l, fn, native_dir);
}

int vm_launch_shell(struct vm_launch *l, const char *vmm_path, uint32_t mem_mb,
		    uint32_t tmp_mb, int jail)
{
	int r;

	memset(l, 0, sizeof(*l));
	l->mem_mb = mem_mb;
	l->tmp_mb = tmp_mb;
	r = add_arg(l, "%s", vmm_path);
	r = r ? r : add_arg(l, "--shell");
	r = r ? r : add_arg(l, "--mem-mb=%u", mem_mb);
	r = r ? r : add_arg(l, "--tmp-mb=%u", tmp_mb);
	r = r ? r : add_arg(l, "--channel-fd=%d", CHILD_CHANNEL_FD);
	r = r ? r : add_arg(l, "--parent-pid=%d", (int)getpid());
	return r ? r : add_arg(l, jail ? "--cgroup=auto" : "--no-jail");
}

int vm_proc_launch(struct vm_proc *p, const struct vm_launch *l)
{
	uint8_t buf[FRAME_HDR_SIZE + sizeof(l->strs)];
	size_t len = 0, n;
	ssize_t w;
	int i;

	if (l->mem_mb != p->mem_mb)
		return -EINVAL;
	/* argv[0] is the VMM's path: the shell is that program already. */
	for (i = 1; i < l->argc; i++) {
		n = strlen(l->argv[i]) + 1;
		memcpy(buf + FRAME_HDR_SIZE + len, l->argv[i], n);
		len += n;
	}
	frame_hdr_pack(buf, (uint32_t)len, FRAME_VMM_LAUNCH);
	/* A fresh socket's buffer holds the whole frame: one write, never EAGAIN. */
	w = write(p->chan, buf, FRAME_HDR_SIZE + len);
	if (w != (ssize_t)(FRAME_HDR_SIZE + len))
		return w < 0 ? -errno : -EIO;
	p->wall_ms = l->wall_ms;	/* the shell was spawned before it knew the function */
	return 0;
}

int vm_launch_with(struct vm_launch *dst, const struct vm_launch *src,
		   const char *const *opts)
{
	int i, sep, r = 0;

	*dst = *src;
	for (i = 0; i < src->argc; i++)
		dst->argv[i] = dst->strs + (src->argv[i] - src->strs);
	for (sep = 0; sep < dst->argc && strcmp(dst->argv[sep], "--"); sep++)
		;
	/* Options go before "--": what follows it is the guest's command line. */
	dst->argc = sep;
	for (i = 0; opts[i] && !r; i++)
		r = add_arg(dst, "%s", opts[i]);
	for (i = sep; i < src->argc && !r; i++)
		r = add_arg(dst, "%s", src->argv[i]);
	return r;
}

int vm_launch_without(struct vm_launch *dst, const struct vm_launch *src,
		      const char *const *drop, const char *const *opts)
{
	struct vm_launch tmp;
	int i, j, skip, r = 0;

	memset(&tmp, 0, sizeof(tmp));
	tmp.wall_ms = src->wall_ms;
	tmp.mem_mb = src->mem_mb;
	for (i = 0; i < src->argc && strcmp(src->argv[i], "--") && !r; i++) {
		for (skip = 0, j = 0; drop[j] && !skip; j++)
			skip = !strncmp(src->argv[i], drop[j], strlen(drop[j]));
		if (!skip)
			r = add_arg(&tmp, "%s", src->argv[i]);
	}
	for (; i < src->argc && !r; i++)
		r = add_arg(&tmp, "%s", src->argv[i]);
	return r ? r : vm_launch_with(dst, &tmp, opts);
}

static int spawn_actions(posix_spawn_file_actions_t *fa, int chan, int out, int err)
{
	int r = posix_spawn_file_actions_init(fa);

	r = r ? r : posix_spawn_file_actions_addopen(fa, 0, "/dev/null", O_RDONLY, 0);
	r = r ? r : posix_spawn_file_actions_adddup2(fa, out, 1);
	r = r ? r : posix_spawn_file_actions_adddup2(fa, err, 2);
	r = r ? r : posix_spawn_file_actions_adddup2(fa, chan, CHILD_CHANNEL_FD);
	return r;
}

static posix_spawnattr_t clean_signals;
static pthread_once_t clean_signals_once = PTHREAD_ONCE_INIT;

/*
 * The daemon blocks or catches signals its own way; the VMM needs SIGTERM (cleanup) and
 * SIGALRM (the wall clock) as a fresh process has them. Each VMM leads its own process
 * group: Ctrl-C in the daemon's terminal signals the whole foreground group, and the
 * daemon, not the terminal, decides when a VM with a request in flight stops.
 */
static void init_clean_signals(void)
{
	sigset_t none, all;

	sigemptyset(&none);
	sigfillset(&all);
	posix_spawnattr_init(&clean_signals);
	posix_spawnattr_setsigmask(&clean_signals, &none);
	posix_spawnattr_setsigdefault(&clean_signals, &all);
	posix_spawnattr_setpgroup(&clean_signals, 0);
	posix_spawnattr_setflags(&clean_signals, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
				 POSIX_SPAWN_SETPGROUP);
}

int vm_proc_spawn(struct vm_proc *p, const struct vm_launch *l, const char *vmm_path)
{
	int sv[2] = { -1, -1 }, po[2] = { -1, -1 }, pe[2] = { -1, -1 }, r, i;
	posix_spawn_file_actions_t fa;

	pthread_once(&clean_signals_once, init_clean_signals);
	memset(p, 0, sizeof(*p));
	p->chan = p->out = p->err = -1;
	p->mem_mb = l->mem_mb;
	p->wall_ms = l->wall_ms;
	/* Far above 2: dup2 onto an equal fd would keep close-on-exec set. */
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 ||
	    pipe2(po, O_CLOEXEC) < 0 || pipe2(pe, O_CLOEXEC) < 0) {
		r = -errno;
		goto fail;
	}
	if (sv[1] == CHILD_CHANNEL_FD) {
		int d = fcntl(sv[1], F_DUPFD_CLOEXEC, 10);

		close(sv[1]);
		sv[1] = d;
	}
	r = -spawn_actions(&fa, sv[1], po[1], pe[1]);
	if (!r)
		r = -posix_spawn(&p->pid, vmm_path, &fa, &clean_signals, l->argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (r)
		goto fail;
	p->started_ns = vm_now_ns();
	p->chan = sv[0];
	p->out = po[0];
	p->err = pe[0];
	close(sv[1]);
	close(po[1]);
	close(pe[1]);
	fcntl(p->chan, F_SETFL, O_NONBLOCK);
	return 0;
fail:
	for (i = 0; i < 2; i++) {
		if (sv[i] >= 0) close(sv[i]);
		if (po[i] >= 0) close(po[i]);
		if (pe[i] >= 0) close(pe[i]);
	}
	return r < 0 ? r : -EAGAIN;
}

uint64_t vm_proc_idle_cost(const struct vm_proc *p)
{
	/* jail.c names a VM's cgroup after its supervisor, the process we spawned. */
	static const char *const paths[] = {
		"/sys/fs/cgroup/stoke-vm-%d/memory.current",
		"/sys/fs/cgroup/memory/stoke-vm-%d/memory.usage_in_bytes",
	};
	unsigned long long bytes;
	char path[96];
	FILE *f;

	for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
		snprintf(path, sizeof(path), paths[i], (int)p->pid);
		f = fopen(path, "re");
		if (!f)
			continue;
		if (fscanf(f, "%llu", &bytes) != 1)
			bytes = 0;
		fclose(f);
		if (bytes)
			return bytes;
	}
	return (uint64_t)p->mem_mb << 20;
}

/* SIGTERM first (a jailed VMM's supervisor then cleans up); SIGKILL after 500 ms. */
void vm_proc_stop(pid_t pid, int *status)
{
	struct timespec ms = { 0, 1000000 };
	int i;

	kill(pid, SIGTERM);
	for (i = 0; i < 500; i++) {
		if (waitpid(pid, status, WNOHANG) == pid)
			return;
		nanosleep(&ms, NULL);
	}
	kill(pid, SIGKILL);
	while (waitpid(pid, status, 0) < 0 && errno == EINTR)
		;
}

void vm_proc_kill(struct vm_proc *p)
{
	int status;

	if (p->chan >= 0)
		shutdown(p->chan, SHUT_RDWR);	/* an idle guest sees EOF and exits */
	if (p->pid > 0) {
		vm_proc_stop(p->pid, &status);
		p->pid = 0;
	}
	if (p->chan >= 0) close(p->chan);
	if (p->out >= 0) close(p->out);
	if (p->err >= 0) close(p->err);
	p->chan = p->out = p->err = -1;
}
