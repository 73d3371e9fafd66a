/* The sandbox of a deploy-time build: see buildjail.h. */
#include "common/buildjail.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#define BJ_NOBODY 65534

char *const bj_env[] = {
	"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/tmp", "TMPDIR=/tmp", "LC_ALL=C", NULL
};

/* bin, lib and lib64 are symbolic links into usr on merged-/usr systems. */
static const char *const bj_host_dirs[BJ_NHOST] = { "usr", "bin", "lib", "lib64" };

int bj_prepare(struct bj *j, const char *src_dir, const char *out_dir, const char *exe)
{
	int i;

	memset(j, 0, sizeof(*j));
	j->src_dir = src_dir;
	j->out_dir = out_dir;
	if (exe && snprintf(j->exe_host, sizeof(j->exe_host), "%s", exe) >=
		   (int)sizeof(j->exe_host))
		return -ENAMETOOLONG;
	snprintf(j->root, sizeof(j->root), "/tmp/stoke-build-XXXXXX");
	if (!mkdtemp(j->root)) {
		j->root[0] = '\0';
		return -errno;
	}
	snprintf(j->src, sizeof(j->src), "%s/src", j->root);
	snprintf(j->out, sizeof(j->out), "%s/out", j->root);
	snprintf(j->tmp, sizeof(j->tmp), "%s/tmp", j->root);
	snprintf(j->exe, sizeof(j->exe), "%s/exe", j->root);
	snprintf(j->dev, sizeof(j->dev), "%s/dev", j->root);
	snprintf(j->null, sizeof(j->null), "%s/dev/null", j->root);
	for (i = 0; i < BJ_NHOST; i++) {
		snprintf(j->host[i][0], sizeof(j->host[i][0]), "/%s", bj_host_dirs[i]);
		snprintf(j->host[i][1], sizeof(j->host[i][1]), "%s/%s", j->root, bj_host_dirs[i]);
	}
	return 0;
}

void bj_cleanup(struct bj *j)
{
	if (j->root[0])
		rmdir(j->root);
	j->root[0] = '\0';
}

/* path (in the jail) as the host's host, read-only: a directory or a symbolic link. */
static int bj_mirror(const char *host, const char *path)
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

/* A file at path with the host's file bound over it. */
static int bj_bind_file(const char *host, const char *path, unsigned long flags)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0755);

	if (fd < 0 || close(fd) || mount(host, path, NULL, MS_BIND, NULL))
		return -1;
	return flags ? mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | flags, NULL) : 0;
}

static int bj_mounts(const struct bj *j)
{
	int i;

	if (mount("tmpfs", j->root, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755") ||
	    mkdir(j->src, 0755) || mount(j->src_dir, j->src, NULL, MS_BIND, NULL) ||
	    mount(NULL, j->src, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV,
		  NULL) ||
	    mkdir(j->tmp, 01777) ||
	    mount("tmpfs", j->tmp, "tmpfs", MS_NOSUID | MS_NODEV, "size=256m,mode=1777") ||
	    mkdir(j->dev, 0755) || bj_bind_file("/dev/null", j->null, 0))
		return -1;
	if (j->out_dir && (mkdir(j->out, 0755) || mount(j->out_dir, j->out, NULL, MS_BIND, NULL)))
		return -1;
	if (j->exe_host[0] && bj_bind_file(j->exe_host, j->exe, MS_RDONLY | MS_NOSUID))
		return -1;
	for (i = 0; i < BJ_NHOST; i++)
		if (bj_mirror(j->host[i][0], j->host[i][1]))
			return -1;
	return 0;
}

int bj_enter(const struct bj *j)
{
	if (unshare(CLONE_NEWNS) || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) ||
	    bj_mounts(j) || chroot(j->root) || chdir("/src") || setgroups(0, NULL) ||
	    setgid(BJ_NOBODY) || setuid(BJ_NOBODY))
		return -1;
	return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
}

int bj_child_setup(const struct bj *j, const char *cwd, int out, int err,
		   unsigned long long mem)
{
	struct rlimit as = { mem, mem };
	int nul = open("/dev/null", O_RDONLY);

	if (nul < 0 || dup2(nul, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0 ||
	    setrlimit(RLIMIT_AS, &as) || setpgid(0, 0))
		return -1;
	return j ? bj_enter(j) : chdir(cwd);
}
