/*
 * TypeScript entries are bundled with esbuild at deploy. esbuild resolves whatever the
 * entry imports, absolute paths and "../" included, and reads it whole: run as the
 * daemon's user it would bundle the admin token, another tenant's code or /dev/zero
 * into this one. So it runs bounded in memory and time, and, when the daemon runs as
 * root, in the build sandbox (common/buildjail.h: as nobody, seeing the function's
 * files, the host's /usr and nothing else). Without root it runs as the daemon's user
 * (README, Known limitations).
 *
 * The bundle goes to esbuild's stdout, a file the daemon opened next to the entry, so
 * nothing in the jail needs to be writable.
 */
#include "isolate/iso.h"
#include "common/buildjail.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* An import of "/dev/zero" grew esbuild to 9 GB in 26 s: it gets the address space and
 * the time a real bundle never comes near. */
#define BUNDLE_MEMORY_BYTES (2ULL << 30)
#define BUNDLE_TIMEOUT_MS 60000

/* Paths are made before the fork: the child of a threaded daemon only makes system calls. */
struct bundle_job {
	const char *dir;	/* the function's directory */
	char exe[PATH_MAX];	/* esbuild, resolved on the host */
	int jailed;
	struct bj jail;
	int out, log;		/* the bundle (stdout) and esbuild's messages */
};

/*
 * esbuild reports "✘ [ERROR] message" and then "    file:L:C:" (C counted from 0);
 * rewrite that as the tier's "file: line L, column C: message".
 */
static void bundle_error(const char *out, char *err, size_t errlen)
{
	const char *msg = strstr(out, "[ERROR] ");
	const char *loc = msg ? strstr(msg, "\n    ") : NULL;
	char file[256];
	int line, col, n;

	if (!msg) {
		snprintf(err, errlen, "esbuild failed: %.200s", out);
		return;
	}
	msg += 8;
	n = (int)strcspn(msg, "\n");
	if (loc && sscanf(loc + 5, "%255[^:]:%d:%d:", file, &line, &col) == 3)
		snprintf(err, errlen, "%s: line %d, column %d: %.*s", file, line, col + 1, n, msg);
	else
		snprintf(err, errlen, "%.*s", n, msg);
}

/* exe as execvp would find it: a path, or the first executable of that name on PATH. */
static int bundle_find(const char *exe, char *out, size_t len)
{
	const char *path = getenv("PATH"), *end;
	char cand[PATH_MAX];
	int n;

	if (len < PATH_MAX)
		return -ENAMETOOLONG;
	if (strchr(exe, '/'))
		return realpath(exe, out) ? 0 : -errno;
	for (; path && *path; path = *end ? end + 1 : end) {
		end = strchrnul(path, ':');
		n = snprintf(cand, sizeof(cand), "%.*s/%s", (int)(end - path), path, exe);
		if (n > 0 && (size_t)n < sizeof(cand) && access(cand, X_OK) == 0)
			return realpath(cand, out) ? 0 : -errno;
	}
	return -ENOENT;
}

/* Runs in the forked child: only system calls from here on. */
static void bundle_child(const struct bundle_job *j, char **argv)
{
	if (bj_child_setup(j->jailed ? &j->jail : NULL, j->dir, j->out, j->log,
			   BUNDLE_MEMORY_BYTES)) {
		dprintf(2, "cannot start esbuild (sandbox, limits, stdio): %s\n", strerror(errno));
		_exit(126);
	}
	if (j->jailed)
		execve("/exe", argv, bj_env);
	else
		execv(j->exe, argv);
	dprintf(2, "cannot run %s: %s\n", j->exe, strerror(errno));
	_exit(127);
}

/* Waits for the child at most BUNDLE_TIMEOUT_MS, or until *cancel is set; then kills
 * its process group. 0, -ETIMEDOUT or -ECANCELED. */
static int bundle_wait(pid_t pid, const atomic_int *cancel, int *status)
{
	int pfd = (int)syscall(SYS_pidfd_open, pid, 0), r = 0, waited;
	struct pollfd p = { pfd, POLLIN, 0 };

	/* Steps of 100 ms: a stopping daemon does not wait for a long build. */
	for (waited = 0; pfd >= 0 && !r; waited += 100) {
		if (poll(&p, 1, 100) > 0)
			break;
		if (atomic_load(cancel))
			r = -ECANCELED;
		else if (waited >= BUNDLE_TIMEOUT_MS)
			r = -ETIMEDOUT;
	}
	if (pfd >= 0)
		close(pfd);
	if (r)
		kill(-pid, SIGKILL);
	while (waitpid(pid, status, 0) < 0 && errno == EINTR)
		;
	return r;
}

/* What went wrong, from how esbuild ended (rc, status) and what it printed (log). */
static void bundle_explain(const struct bundle_job *j, const char *entry, int rc,
			   int status, const char *log, char *err, size_t errlen)
{
	if (rc == -ETIMEDOUT)
		snprintf(err, errlen, "%s: bundling took over %d s", entry,
			 BUNDLE_TIMEOUT_MS / 1000);
	else if (rc == -ECANCELED)
		snprintf(err, errlen, "%s: bundling stopped: the daemon is stopping", entry);
	else if (rc)
		snprintf(err, errlen, "cannot run %s: %s", j->exe, strerror(-rc));
	else if (WIFEXITED(status) && WEXITSTATUS(status) >= 126)
		snprintf(err, errlen, "%.*s", (int)strcspn(log, "\n"), log);
	else if (!strstr(log, "[ERROR] "))	/* killed, or Go's out-of-memory dump */
		snprintf(err, errlen, "%s: bundling failed (its imports need over %llu MiB?)",
			 entry, BUNDLE_MEMORY_BYTES >> 20);
	else
		bundle_error(log, err, errlen);
}

static int bundle_run(struct bundle_job *j, const char *entry, const atomic_int *cancel,
		      char *err, size_t errlen)
{
	char *argv[] = { "esbuild", (char *)entry, "--bundle", "--format=esm",
		"--platform=neutral", "--target=es2022", "--external:*.wasm",
		"--log-level=error", "--color=false", NULL };
	char log[2048];
	int rc, status = 0;
	ssize_t n;
	pid_t pid;

	pid = fork();
	if (pid == 0)
		bundle_child(j, argv);
	rc = pid < 0 ? -errno : bundle_wait(pid, cancel, &status);
	n = pread(j->log, log, sizeof(log) - 1, 0);
	log[n > 0 ? n : 0] = '\0';
	if (!rc && WIFEXITED(status) && WEXITSTATUS(status) == 0)
		return 0;
	bundle_explain(j, entry, rc, status, log, err, errlen);
	return rc ? rc : -EINVAL;
}

/* The log file, the output file and the jail. */
static int bundle_setup(struct bundle_job *j, const char *outfile)
{
	char logpath[] = "/tmp/stoke-esbuild-XXXXXX";

	j->log = mkostemp(logpath, O_CLOEXEC);
	if (j->log < 0)
		return -errno;
	unlink(logpath);
	j->out = open(outfile, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (j->out < 0)
		return -errno;
	return j->jailed ? bj_prepare(&j->jail, j->dir, NULL, j->exe) : 0;
}

int iso__bundle(const char *dir, const char *entry, const char *outfile,
		const atomic_int *cancel, char *err, size_t errlen)
{
	const char *exe = getenv("STOKE_ESBUILD") ? getenv("STOKE_ESBUILD") : "esbuild";
	struct bundle_job j = { .dir = dir, .jailed = geteuid() == 0, .out = -1, .log = -1 };
	int rc;

	rc = bundle_find(exe, j.exe, sizeof(j.exe));
	if (rc) {
		snprintf(err, errlen, "cannot run %s: %s", exe, strerror(-rc));
		return rc;
	}
	rc = bundle_setup(&j, outfile);
	if (rc)
		snprintf(err, errlen, "%s: cannot bundle: %s", entry, strerror(-rc));
	else
		rc = bundle_run(&j, entry, cancel, err, errlen);
	bj_cleanup(&j.jail);
	if (j.log >= 0)
		close(j.log);
	if (j.out >= 0)
		close(j.out);
	if (rc)
		unlink(outfile);
	return rc;
}
