/*
 * TypeScript entries are bundled with esbuild at deploy. esbuild resolves whatever the
 * entry imports, absolute paths and "../" included, and reads it whole: run as the
 * daemon's user it would bundle the admin token, another tenant's code or /dev/zero
 * into this one. So it runs bounded in memory and time, and, when the daemon runs as
 * root, as nobody inside a root of its own: a tmpfs holding the function's files
 * (read-only, at /src) and the host's /usr, nothing else. Without root it runs as the
 * daemon's user (README, Known limitations).
 *
 * The bundle goes to esbuild's stdout, a file the daemon opened next to the entry, so
 * nothing in the jail needs to be writable.
 */
#include "isolate/iso.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* An import of "/dev/zero" grew esbuild to 9 GB in 26 s: it gets the address space and
 * the time a real bundle never comes near. */
#define BUNDLE_MEMORY_BYTES (2ULL << 30)
#define BUNDLE_TIMEOUT_MS 60000
#define BUNDLE_NOBODY 65534
#define BUNDLE_NHOST 4

/* The jail's view of the host: the system's programs and libraries (bin, lib and
 * lib64 are symbolic links into usr on merged-/usr systems, directories elsewhere). */
static const char *const bundle_host_dirs[BUNDLE_NHOST] = { "usr", "bin", "lib", "lib64" };

/* Paths are made before the fork: the child of a threaded daemon only makes system calls. */
struct bundle_job {
	const char *dir;	/* the function's directory */
	char exe[PATH_MAX];	/* esbuild, resolved on the host */
	int jailed;
	char root[64];		/* the jail's root, when jailed */
	char src[96], exe_at[96];	/* where the function and esbuild are in it */
	char host[BUNDLE_NHOST][2][96];	/* the host's /NAME, and root/NAME */
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

/* Child, in its own mount namespace: path (in the jail) as the host's host, read-only. */
static int bundle_mirror(const char *host, const char *path)
{
	char target[256];
	struct stat st;
	ssize_t n;

	if (lstat(host, &st))
		return errno == ENOENT ? 0 : -1;
	if (S_ISLNK(st.st_mode)) {
		n = readlink(host, target, sizeof(target) - 1);
		if (n < 0)
			return -1;
		target[n] = '\0';
		return symlink(target, path);
	}
	return mkdir(path, 0755) || mount(host, path, NULL, MS_BIND | MS_REC, NULL) ||
	       mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL);
}

/* Child: the jail, then nobody without privileges. esbuild is bound in at /esbuild,
 * wherever it lives on the host. */
static int bundle_enter_jail(const struct bundle_job *j)
{
	int fd, i;

	if (unshare(CLONE_NEWNS) || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) ||
	    mount("tmpfs", j->root, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755") ||
	    mkdir(j->src, 0755) || mount(j->dir, j->src, NULL, MS_BIND, NULL) ||
	    mount(NULL, j->src, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID, NULL))
		return -1;
	fd = open(j->exe_at, O_WRONLY | O_CREAT | O_CLOEXEC, 0755);
	if (fd < 0 || close(fd) || mount(j->exe, j->exe_at, NULL, MS_BIND, NULL))
		return -1;
	for (i = 0; i < BUNDLE_NHOST; i++)
		if (bundle_mirror(j->host[i][0], j->host[i][1]))
			return -1;
	if (chroot(j->root) || chdir("/src") || setgroups(0, NULL) ||
	    setgid(BUNDLE_NOBODY) || setuid(BUNDLE_NOBODY))
		return -1;
	return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
}

/* Runs in the forked child: only system calls from here on. */
static void bundle_child(const struct bundle_job *j, char **argv)
{
	struct rlimit as = { BUNDLE_MEMORY_BYTES, BUNDLE_MEMORY_BYTES };
	int nul = open("/dev/null", O_RDONLY);

	if (nul < 0 || dup2(nul, 0) < 0 || dup2(j->out, 1) < 0 || dup2(j->log, 2) < 0 ||
	    setrlimit(RLIMIT_AS, &as) || setpgid(0, 0))
		_exit(126);
	if (j->jailed && bundle_enter_jail(j)) {
		dprintf(2, "cannot set up esbuild's sandbox: %s\n", strerror(errno));
		_exit(126);
	}
	if (!j->jailed && chdir(j->dir))
		_exit(126);
	execv(j->jailed ? "/esbuild" : j->exe, argv);
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

/* The log file, the output file and the jail's (empty) mount point and paths. */
static int bundle_setup(struct bundle_job *j, const char *outfile)
{
	char logpath[] = "/tmp/stoke-esbuild-XXXXXX";
	int i;

	j->log = mkostemp(logpath, O_CLOEXEC);
	if (j->log < 0)
		return -errno;
	unlink(logpath);
	j->out = open(outfile, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (j->out < 0)
		return -errno;
	if (!j->jailed)
		return 0;
	snprintf(j->root, sizeof(j->root), "/tmp/stoke-esbuild-root-XXXXXX");
	if (!mkdtemp(j->root)) {
		j->root[0] = '\0';
		return -errno;
	}
	snprintf(j->src, sizeof(j->src), "%s/src", j->root);
	snprintf(j->exe_at, sizeof(j->exe_at), "%s/esbuild", j->root);
	for (i = 0; i < BUNDLE_NHOST; i++) {
		snprintf(j->host[i][0], sizeof(j->host[i][0]), "/%s", bundle_host_dirs[i]);
		snprintf(j->host[i][1], sizeof(j->host[i][1]), "%s/%s", j->root,
			 bundle_host_dirs[i]);
	}
	return 0;
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
	if (j.root[0])
		rmdir(j.root);
	if (j.log >= 0)
		close(j.log);
	if (j.out >= 0)
		close(j.out);
	if (rc)
		unlink(outfile);
	return rc;
}
