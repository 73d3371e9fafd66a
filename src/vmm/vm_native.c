/*
 * Native functions deployed as C source: the tier compiles the entry at deploy time into
 * a static executable (the guest has no shared libraries for `native`), kept under the
 * data directory and shown to the guest at /var/runtime/main.
 */
#include "vm_proc.h"
#include "common/invoke.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define COMPILE_TIMEOUT_MS 60000

extern char **environ;

int vm_native_is_source(const struct fn *fn)
{
	size_t n = strlen(fn->entry);

	return !strcmp(fn->runtime, "native") && n > 2 && !strcmp(fn->entry + n - 2, ".c");
}

static int mkdirs(char *path)
{
	char *p;

	for (p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(path, 0755) < 0 && errno != EEXIST) {
			*p = '/';
			return -errno;
		}
		*p = '/';
	}
	if (mkdir(path, 0755) < 0 && errno != EEXIST)
		return -errno;
	return chmod(path, 0755) < 0 ? -errno : 0;
}

/* Collects the compiler's output until it exits or the deadline passes. */
static int collect(pid_t pid, int fd, char *out, size_t len)
{
	uint64_t deadline = vm_now_ns() + COMPILE_TIMEOUT_MS * 1000000ULL, now;
	struct pollfd pf = { fd, POLLIN, 0 };
	char scratch[512];
	size_t used = 0;
	ssize_t n = 1;
	int status = 0;

	while (n > 0 && (now = vm_now_ns()) < deadline) {
		if (poll(&pf, 1, (int)((deadline - now) / 1000000 + 1)) <= 0)
			continue;
		/* Keep the first len - 1 bytes; drain the rest so the compiler never blocks. */
		if (used < len - 1)
			n = read(fd, out + used, len - 1 - used);
		else
			n = read(fd, scratch, sizeof(scratch));
		if (n > 0 && used < len - 1)
			used += (size_t)n;
	}
	out[used] = '\0';
	if (n > 0)
		kill(pid, SIGKILL);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (n > 0)
		return -ETIMEDOUT;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EINVAL;
}

/* Error text for the user: compiler lines with the deploy directory stripped. */
static void user_error(const struct fn *fn, const char *log, char *err, size_t errlen)
{
	size_t dl = strlen(fn->dir), o = 0;
	const char *p = log;

	o = (size_t)snprintf(err, errlen, "compiling %s failed: ", fn->entry);
	while (*p && o + 1 < errlen) {
		if (!strncmp(p, fn->dir, dl) && p[dl] == '/')
			p += dl + 1;
		err[o++] = *p++;
	}
	err[o < errlen ? o : errlen - 1] = '\0';
}

int vm_native_build(const struct fn *fn, const char *data_dir, char *out_dir, size_t len,
		    char *err, size_t errlen)
{
	char src[4096], exe[4200], log[4096];
	char *argv[] = { "cc", "-O2", "-static", "-o", exe, src, NULL };
	const char *tmp = getenv("TMPDIR");
	posix_spawn_file_actions_t fa;
	int pipefd[2], r;
	pid_t pid;

	snprintf(out_dir, len, "%s/vm-native/%s-%lld", data_dir ? data_dir :
		 tmp ? tmp : "/tmp", fn->name, (long long)fn->version);
	snprintf(src, sizeof(src), "%s/%s", fn->dir, fn->entry);
	snprintf(exe, sizeof(exe), "%s/main", out_dir);
	r = mkdirs(out_dir);
	if (r || pipe2(pipefd, O_CLOEXEC) < 0) {
		snprintf(err, errlen, "cannot create %s: %s", out_dir, strerror(r ? -r : errno));
		return r ? r : -errno;
	}
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2);
	r = posix_spawnp(&pid, "cc", &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(pipefd[1]);
	if (r) {
		close(pipefd[0]);
		snprintf(err, errlen, "native C functions need a C compiler (cc): %s", strerror(r));
		return -r;
	}
	r = collect(pid, pipefd[0], log, sizeof(log));
	close(pipefd[0]);
	if (r)
		user_error(fn, r == -ETIMEDOUT ? "timed out" : log, err, errlen);
	return r;
}

void vm_native_remove(const char *out_dir)
{
	char exe[4200];

	snprintf(exe, sizeof(exe), "%s/main", out_dir);
	unlink(exe);
	rmdir(out_dir);
}
