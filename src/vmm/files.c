/*
 * The guest's file namespace and descriptor table. Host directories are layered: the
 * runtime root file system at /, the function's files at /var/task, the language
 * runtime's bootstrap at /var/runtime and a private writable directory at /tmp. Every
 * lookup goes through openat2(RESOLVE_IN_ROOT) on one of them, so neither ".." nor a
 * symlink (absolute or relative) can leave it, whatever the guest asks for. Only /tmp
 * is writable.
 */
#include "vm.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#define GUEST_TASK "/var/task"
#define GUEST_RUNTIME "/var/runtime"
#define GUEST_TMP "/tmp"

static const struct { const char *prefix; enum vm_mount mnt; } mounts[] = {
	{ GUEST_TASK, VM_MNT_TASK },
	{ GUEST_RUNTIME, VM_MNT_RUNTIME },
	{ GUEST_TMP, VM_MNT_TMP },
};

static int open_dir(const char *path)
{
	int fd;

	if (!path)
		return -1;
	fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

int vfs_init(struct vm *vm)
{
	const struct vm_config *cfg = vm->cfg;
	int i;

	vm->mnt_fd[VM_MNT_ROOT] = open_dir(cfg->rootfs);
	if (vm->mnt_fd[VM_MNT_ROOT] < 0)
		return vm->mnt_fd[VM_MNT_ROOT];
	vm->mnt_fd[VM_MNT_TASK] = cfg->task_dir ? open_dir(cfg->task_dir) : -1;
	vm->mnt_fd[VM_MNT_RUNTIME] = cfg->runtime_dir ? open_dir(cfg->runtime_dir) : -1;
	vm->mnt_fd[VM_MNT_TMP] = cfg->tmp_dir ? open_dir(cfg->tmp_dir) : -1;
	for (i = VM_MNT_TASK; i < VM_MNT_COUNT; i++)
		if (vm->mnt_fd[i] < -1)
			return vm->mnt_fd[i];
	strcpy(vm->cwd, cfg->task_dir ? GUEST_TASK : "/");
	vm->umask = 022;
	vm->fds[0].kind = VFD_STDIN;
	vm->fds[1].kind = VFD_STDOUT;
	vm->fds[2].kind = VFD_STDERR;
	if (cfg->channel_fd >= 0)
		vm->fds[VM_CHANNEL_FD].kind = VFD_CHANNEL;
	return 0;
}

void vfs_close_all(struct vm *vm)
{
	int i;

	for (i = 0; i < VM_NR_FDS; i++)
		if (vm->fds[i].kind == VFD_HOST)
			close(vm->fds[i].host);
	for (i = 0; i < VM_MNT_COUNT; i++)
		if (vm->mnt_fd[i] >= 0)
			close(vm->mnt_fd[i]);
}

struct vfd *vfd_get(struct vm *vm, long fd)
{
	if (fd < 0 || fd >= VM_NR_FDS || vm->fds[fd].kind == VFD_FREE)
		return NULL;
	return &vm->fds[fd];
}

int vfd_install(struct vm *vm, int host, int min, int cloexec)
{
	int i;

	for (i = min; i < VM_NR_FDS; i++) {
		if (vm->fds[i].kind != VFD_FREE)
			continue;
		memset(&vm->fds[i], 0, sizeof(vm->fds[i]));
		vm->fds[i].kind = VFD_HOST;
		vm->fds[i].host = host;
		vm->fds[i].cloexec = cloexec;
		return i;
	}
	close(host);
	return -EMFILE;
}

/* Appends one path component to out (an absolute normalized path), handling . and .. */
static int push_component(char *out, size_t *len, const char *c, size_t clen, size_t max)
{
	if (clen == 0 || (clen == 1 && c[0] == '.'))
		return 0;
	if (clen == 2 && c[0] == '.' && c[1] == '.') {
		while (*len > 0 && out[*len - 1] != '/')
			(*len)--;
		if (*len > 0)
			(*len)--;
		out[*len] = '\0';
		return 0;
	}
	if (*len + 1 + clen + 1 > max)
		return -ENAMETOOLONG;
	out[(*len)++] = '/';
	memcpy(out + *len, c, clen);
	*len += clen;
	out[*len] = '\0';
	return 0;
}

/*
 * Makes path absolute against base and folds "." and ".." lexically, so that the mount
 * it belongs to can be chosen by prefix. Symlinks are resolved later, inside the mount.
 */
static int normalize(const char *base, const char *path, char *out, size_t max)
{
	const char *srcs[2] = { path[0] == '/' ? "" : base, path };
	size_t len = 0;
	int i, r;

	out[0] = '\0';
	for (i = 0; i < 2; i++) {
		const char *p = srcs[i];

		while (*p) {
			const char *e = strchrnul(p, '/');

			r = push_component(out, &len, p, (size_t)(e - p), max);
			if (r)
				return r;
			p = *e ? e + 1 : e;
		}
	}
	if (len == 0)
		strcpy(out, "/");
	return 0;
}

/* Chooses the mount for an absolute normalized path; *rest is relative to it. */
static enum vm_mount route(struct vm *vm, const char *abs, const char **rest)
{
	size_t i, n;

	for (i = 0; i < sizeof(mounts) / sizeof(mounts[0]); i++) {
		n = strlen(mounts[i].prefix);
		if (vm->mnt_fd[mounts[i].mnt] < 0 || strncmp(abs, mounts[i].prefix, n))
			continue;
		if (abs[n] == '\0' || abs[n] == '/') {
			*rest = abs[n] ? abs + n + 1 : ".";
			return mounts[i].mnt;
		}
	}
	*rest = abs[1] ? abs + 1 : ".";
	return VM_MNT_ROOT;
}

/* Device nodes in a root file system would open host devices: allow only the harmless. */
static int check_node(int fd)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode) || S_ISLNK(st.st_mode))
		return 0;
	if (S_ISCHR(st.st_mode) && major(st.st_rdev) == 1) {
		switch (minor(st.st_rdev)) {
		case 3: case 5: case 8: case 9:	/* null, zero, random, urandom */
			return 0;
		}
	}
	return -EACCES;
}

int vfs_resolve(struct vm *vm, int dirfd, const char *path, char *abs, size_t max)
{
	const char *base = vm->cwd;
	struct vfd *d;

	if (path[0] == '\0')
		return -ENOENT;
	if (path[0] != '/' && dirfd != AT_FDCWD) {
		d = vfd_get(vm, dirfd);
		if (!d)
			return -EBADF;
		if (d->kind != VFD_HOST || !d->path)
			return -ENOTDIR;
		base = d->path;
	}
	return normalize(base, path, abs, max);
}

int vfs_open(struct vm *vm, int dirfd, const char *path, int flags, int *mnt_out)
{
	struct open_how how = { 0 };
	char abs[4096];
	const char *rest;
	enum vm_mount mnt;
	int fd, r;

	r = vfs_resolve(vm, dirfd, path, abs, sizeof(abs));
	if (r)
		return r;
	mnt = route(vm, abs, &rest);
	if (mnt != VM_MNT_TMP && (flags & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC)))
		return -EROFS;
	how.flags = (uint64_t)(flags | O_CLOEXEC);
	if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE)
		how.mode = 0666 & ~vm->umask;
	how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
	fd = (int)syscall(SYS_openat2, vm->mnt_fd[mnt], rest, &how, sizeof(how));
	if (fd < 0)
		return -errno;
	r = check_node(fd);
	if (r) {
		close(fd);
		return r;
	}
	if (mnt_out)
		*mnt_out = (int)mnt;
	return fd;
}

/* The last component of path, trailing slashes ignored ("" for the root). */
static const char *last_component(const char *path, size_t *len)
{
	const char *end = path + strlen(path), *start;

	while (end > path && end[-1] == '/')
		end--;
	start = end;
	while (start > path && start[-1] != '/')
		start--;
	*len = (size_t)(end - start);
	return start;
}

int vfs_parent(struct vm *vm, int dirfd, const char *path, char *base, size_t len)
{
	char abs[4096], *slash, dir[4096];
	const char *rest, *last;
	size_t n;
	int r;

	last = last_component(path, &n);
	if (n == 0)
		return -EBUSY;	/* the root */
	if ((n == 1 && last[0] == '.') || (n == 2 && !strncmp(last, "..", 2))) {
		/* The host answers "x/." and "x/.." as Linux does (EINVAL, ENOTEMPTY...). */
		snprintf(dir, sizeof(dir), "%.*s", (int)(last - path), path);
		snprintf(base, len, "%.*s", (int)n, last);
		r = vfs_resolve(vm, dirfd, dir[0] ? dir : ".", abs, sizeof(abs));
	} else {
		r = vfs_resolve(vm, dirfd, path, abs, sizeof(abs));
		if (r)
			return r;
		slash = strrchr(abs, '/');
		if (strlen(slash + 1) >= len)
			return -ENAMETOOLONG;
		strcpy(base, slash + 1);
		*slash = '\0';
		if (!abs[0])
			strcpy(abs, "/");
	}
	if (r)
		return r;
	if (route(vm, abs, &rest) != VM_MNT_TMP)
		return -EROFS;
	return vfs_open(vm, AT_FDCWD, abs, O_PATH | O_DIRECTORY, NULL);
}
