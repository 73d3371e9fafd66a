/*
 * Native functions deployed as C source: the tier compiles the entry at deploy time into
 * a static executable (the guest has no shared libraries for `native`), kept under the
 * data directory and shown to the guest at /var/runtime/main.
 */
#include "vm_proc.h"
#include "common/buildjail.h"
#include "common/invoke.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define COMPILE_TIMEOUT_MS 60000
/*
 * The compiler's address space: a source can make cc1 read without end (#include
 * "/dev/zero" grew to 12 GB in 21 s, well inside the time limit); 2 GiB is far more
 * than a real single-file function needs to compile.
 */
#define COMPILE_MEMORY_BYTES (2ULL << 30)
#define CC_NOBODY 65534

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

/* Collects the compiler's output until it exits, the deadline passes or *cancel is set
 * (checked every 100 ms: a stopping daemon does not wait for a long compile). */
static int collect(pid_t pid, int fd, const atomic_int *cancel, char *out, size_t len)
{
	uint64_t deadline = vm_now_ns() + COMPILE_TIMEOUT_MS * 1000000ULL;
	struct pollfd pf = { fd, POLLIN, 0 };
	char scratch[512];
	size_t used = 0;
	ssize_t n = 1;
	int status = 0;

	while (n > 0 && vm_now_ns() < deadline && !atomic_load(cancel)) {
		if (poll(&pf, 1, 100) <= 0)
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
	/* The whole group: gcc's own children (cc1, as, ld) would outlive gcc. */
	if (n > 0)
		kill(-pid, SIGKILL);
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (n > 0)
		return atomic_load(cancel) ? -ECANCELED : -ETIMEDOUT;
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

/*
 * The compiler reads whatever the source names (#include "/etc/passwd", the daemon's
 * token, /proc/self/environ), so as root it runs in the build sandbox
 * (common/buildjail.h): as nobody, seeing the function's files at /src, its output
 * directory at /out, a private /tmp and the host's /usr. Without root it runs as the
 * (unprivileged) caller.
 */
struct cc_job {
	char exe[4200];			/* the -o argument */
	const char *entry, *cwd;
	int jailed;
	struct bj jail;
};

/* Runs in the forked child: only system calls from here on. */
static void cc_child(const struct cc_job *j, int logfd)
{
	char *argv[] = { "gcc", "-O2", "-static", "-o", (char *)j->exe, (char *)j->entry, NULL };

	if (bj_child_setup(j->jailed ? &j->jail : NULL, j->cwd, logfd, logfd,
			   COMPILE_MEMORY_BYTES)) {
		dprintf(2, "cannot start the compiler (sandbox, limits, stdio): %s\n",
			strerror(errno));
		_exit(126);
	}
	if (j->jailed)
		environ = (char **)bj_env;	/* execvp searches the jail's PATH */
	execvp("gcc", argv);
	dprintf(2, "native C functions need a C compiler (gcc): %s\n", strerror(errno));
	_exit(127);
}

static int cc_prepare(struct cc_job *j, const struct fn *fn, const char *out_dir)
{
	j->entry = fn->entry;
	j->jailed = geteuid() == 0;
	if (!j->jailed) {
		j->cwd = fn->dir;
		snprintf(j->exe, sizeof(j->exe), "%s/main", out_dir);
		return 0;
	}
	snprintf(j->exe, sizeof(j->exe), "/out/main");
	if (chown(out_dir, CC_NOBODY, CC_NOBODY))
		return -errno;
	return bj_prepare(&j->jail, fn->dir, out_dir, NULL);
}

static void cc_cleanup(struct cc_job *j)
{
	if (j->jailed)
		bj_cleanup(&j->jail);
}

int vm_native_build(const struct fn *fn, const char *data_dir, const atomic_int *cancel,
		    char *out_dir, size_t len, char *err, size_t errlen)
{
	const char *tmp = getenv("TMPDIR");
	struct cc_job job = { 0 };
	char log[4096];
	int pipefd[2], r;
	pid_t pid;

	snprintf(out_dir, len, "%s/vm-native/%s-%lld", data_dir ? data_dir :
		 tmp ? tmp : "/tmp", fn->name, (long long)fn->version);
	r = mkdirs(out_dir);
	if (!r)
		r = cc_prepare(&job, fn, out_dir);
	if (r || pipe2(pipefd, O_CLOEXEC) < 0) {
		snprintf(err, errlen, "cannot prepare the build in %s: %s", out_dir,
			 strerror(r ? -r : errno));
		cc_cleanup(&job);
		return r ? r : -errno;
	}
	pid = fork();
	if (pid == 0)
		cc_child(&job, pipefd[1]);
	close(pipefd[1]);
	r = pid < 0 ? -errno : collect(pid, pipefd[0], cancel, log, sizeof(log));
	close(pipefd[0]);
	cc_cleanup(&job);
	if (r == -ECANCELED)
		snprintf(err, errlen, "compiling %s stopped: the daemon is stopping", fn->entry);
	else if (r)
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
