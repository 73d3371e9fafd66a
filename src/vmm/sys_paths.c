/* Path system calls: stat family, readlink, access, cwd, and the few that modify /tmp. */
#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define AT_KNOWN (AT_SYMLINK_NOFOLLOW | AT_EMPTY_PATH | AT_NO_AUTOMOUNT | \
		  AT_STATX_SYNC_TYPE)

/* Opens what a (dirfd, path, flags) triple names as an O_PATH host fd. */
static int lookup(struct vm *vm, int dirfd, uint64_t upath, int atflags, int *owned)
{
	char path[4096];
	struct vfd *f;
	int r;

	r = gmem_str(vm, upath, path, sizeof(path));
	if (r)
		return r;
	*owned = 1;
	if (path[0] == '\0') {
		if (!(atflags & AT_EMPTY_PATH))
			return -ENOENT;
		if (dirfd == AT_FDCWD)
			return vfs_open(vm, AT_FDCWD, ".", O_PATH, NULL);
		f = vfd_get(vm, dirfd);
		if (!f)
			return -EBADF;
		if (f->kind != VFD_HOST)
			return -ESPIPE;	/* callers describe stdio and the channel themselves */
		*owned = 0;
		return f->host;
	}
	return vfs_open(vm, dirfd, path, O_PATH |
			((atflags & AT_SYMLINK_NOFOLLOW) ? O_NOFOLLOW : 0), NULL);
}

/* stdio and the channel look like pipes, as they would under a process supervisor. */
static void stat_pipe(struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_mode = S_IFIFO | 0600;
	st->st_blksize = 4096;
	st->st_nlink = 1;
}

static long stat_common(struct vm *vm, int dirfd, uint64_t upath, uint64_t ubuf, int flags)
{
	struct stat *st = gmem_ptr(vm, ubuf, sizeof(*st));
	int fd, owned, r;

	if (!st)
		return -EFAULT;
	if (flags & ~AT_KNOWN)
		return -EINVAL;
	fd = lookup(vm, dirfd, upath, flags, &owned);
	if (fd == -ESPIPE) {
		stat_pipe(st);
		return 0;
	}
	if (fd < 0)
		return fd;
	r = fstatat(fd, "", st, AT_EMPTY_PATH) < 0 ? -errno : 0;
	if (owned)
		close(fd);
	return r;
}

SYS_HANDLER(stat)
{
	return stat_common(vm, AT_FDCWD, a[0], a[1], 0);
}

SYS_HANDLER(lstat)
{
	return stat_common(vm, AT_FDCWD, a[0], a[1], AT_SYMLINK_NOFOLLOW);
}

SYS_HANDLER(newfstatat)
{
	return stat_common(vm, (int)a[0], a[1], a[2], (int)a[3]);
}

SYS_HANDLER(fstat)
{
	struct vfd *f = vfd_get(vm, (long)a[0]);
	struct stat *st = gmem_ptr(vm, a[1], sizeof(*st));

	if (!f)
		return -EBADF;
	if (!st)
		return -EFAULT;
	if (f->kind != VFD_HOST) {
		stat_pipe(st);
		return 0;
	}
	return sys_ret(fstat(f->host, st));
}

SYS_HANDLER(statx)
{
	struct statx *sx = gmem_ptr(vm, a[4], sizeof(*sx));
	int fd, owned, r;

	if (!sx)
		return -EFAULT;
	fd = lookup(vm, (int)a[0], a[1], (int)a[2], &owned);
	if (fd == -ESPIPE) {
		memset(sx, 0, sizeof(*sx));
		sx->stx_mask = STATX_TYPE | STATX_MODE | STATX_NLINK;
		sx->stx_mode = S_IFIFO | 0600;
		sx->stx_nlink = 1;
		sx->stx_blksize = 4096;
		return 0;
	}
	if (fd < 0)
		return fd;
	r = statx(fd, "", AT_EMPTY_PATH, (unsigned)a[3], sx) < 0 ? -errno : 0;
	if (owned)
		close(fd);
	return r;
}

static long readlink_common(struct vm *vm, int dirfd, uint64_t upath, uint64_t ubuf,
			    uint64_t len)
{
	char path[4096];
	void *buf = gmem_ptr(vm, ubuf, len);
	long r;
	int fd;

	if ((long)len <= 0)
		return -EINVAL;
	if (!buf)
		return -EFAULT;
	r = gmem_str(vm, upath, path, sizeof(path));
	if (r)
		return r;
	/* The one /proc entry runtimes need to find their own files. */
	if (!strcmp(path, "/proc/self/exe")) {
		r = (long)strlen(vm->exe_path);
		r = r > (long)len ? (long)len : r;
		memcpy(buf, vm->exe_path, (size_t)r);
		return r;
	}
	fd = vfs_open(vm, dirfd, path, O_PATH | O_NOFOLLOW, NULL);
	if (fd < 0)
		return fd;
	r = sys_ret(readlinkat(fd, "", buf, len));
	close(fd);
	return r;
}

SYS_HANDLER(readlink)
{
	return readlink_common(vm, AT_FDCWD, a[0], a[1], a[2]);
}

SYS_HANDLER(readlinkat)
{
	return readlink_common(vm, (int)a[0], a[1], a[2], a[3]);
}

/* The guest runs as root: read and write are granted, execute needs an x bit. */
static long access_common(struct vm *vm, int dirfd, uint64_t upath, int mode, int flags)
{
	char path[4096];
	struct stat st;
	int fd, mnt = 0;
	long r;

	if (mode & ~(R_OK | W_OK | X_OK))
		return -EINVAL;
	r = gmem_str(vm, upath, path, sizeof(path));
	if (r)
		return r;
	fd = vfs_open(vm, dirfd, path,
		      O_PATH | ((flags & AT_SYMLINK_NOFOLLOW) ? O_NOFOLLOW : 0), &mnt);
	if (fd < 0)
		return fd;
	r = fstat(fd, &st) < 0 ? -errno : 0;
	close(fd);
	if (r)
		return r;
	if ((mode & W_OK) && mnt != VM_MNT_TMP)
		return -EROFS;
	if ((mode & X_OK) && !S_ISDIR(st.st_mode) && !(st.st_mode & 0111))
		return -EACCES;
	return 0;
}

SYS_HANDLER(access)
{
	return access_common(vm, AT_FDCWD, a[0], (int)a[1], 0);
}

SYS_HANDLER(faccessat)
{
	return access_common(vm, (int)a[0], a[1], (int)a[2], 0);
}

SYS_HANDLER(faccessat2)
{
	return access_common(vm, (int)a[0], a[1], (int)a[2], (int)a[3]);
}

SYS_HANDLER(getcwd)
{
	size_t n = strlen(vm->cwd) + 1;
	char *buf = gmem_ptr(vm, a[0], a[1]);

	if (!buf)
		return -EFAULT;
	if (a[1] < n)
		return -ERANGE;
	memcpy(buf, vm->cwd, n);
	return (long)n;
}

SYS_HANDLER(chdir)
{
	char path[4096], abs[4096];
	int fd;
	long r;

	r = gmem_str(vm, a[0], path, sizeof(path));
	if (r)
		return r;
	fd = vfs_open(vm, AT_FDCWD, path, O_PATH | O_DIRECTORY, NULL);
	if (fd < 0)
		return fd;
	close(fd);
	r = vfs_resolve(vm, AT_FDCWD, path, abs, sizeof(abs));
	if (r)
		return r;
	if (strlen(abs) >= sizeof(vm->cwd))
		return -ENAMETOOLONG;
	strcpy(vm->cwd, abs);
	return 0;
}

/* Runs op on the parent directory of (dirfd, upath); only /tmp may change. */
static long modify(struct vm *vm, int dirfd, uint64_t upath, int op, int arg)
{
	char path[4096], base[256];
	long r;
	int pfd;

	r = gmem_str(vm, upath, path, sizeof(path));
	if (r)
		return r;
	pfd = vfs_parent(vm, dirfd, path, base, sizeof(base));
	if (pfd < 0)
		return pfd;
	if (op == 'm')
		r = sys_ret(mkdirat(pfd, base, (mode_t)arg & ~vm->umask));
	else
		r = sys_ret(unlinkat(pfd, base, arg));
	close(pfd);
	return r;
}

SYS_HANDLER(mkdir)
{
	return modify(vm, AT_FDCWD, a[0], 'm', (int)a[1]);
}

SYS_HANDLER(mkdirat)
{
	return modify(vm, (int)a[0], a[1], 'm', (int)a[2]);
}

SYS_HANDLER(unlink)
{
	return modify(vm, AT_FDCWD, a[0], 'u', 0);
}

SYS_HANDLER(rmdir)
{
	return modify(vm, AT_FDCWD, a[0], 'u', AT_REMOVEDIR);
}

SYS_HANDLER(unlinkat)
{
	if (a[2] & ~(uint64_t)AT_REMOVEDIR)
		return -EINVAL;
	return modify(vm, (int)a[0], a[1], 'u', (int)a[2]);
}

static long rename_common(struct vm *vm, int ofd, uint64_t opath, int nfd, uint64_t npath)
{
	char op[4096], np[4096], ob[256], nb[256];
	int pa, pb;
	long r;

	r = gmem_str(vm, opath, op, sizeof(op));
	if (!r)
		r = gmem_str(vm, npath, np, sizeof(np));
	if (r)
		return r;
	pa = vfs_parent(vm, ofd, op, ob, sizeof(ob));
	if (pa < 0)
		return pa;
	pb = vfs_parent(vm, nfd, np, nb, sizeof(nb));
	if (pb < 0) {
		close(pa);
		return pb;
	}
	r = sys_ret(renameat(pa, ob, pb, nb));
	close(pa);
	close(pb);
	return r;
}

SYS_HANDLER(rename)
{
	return rename_common(vm, AT_FDCWD, a[0], AT_FDCWD, a[1]);
}

SYS_HANDLER(renameat)
{
	return rename_common(vm, (int)a[0], a[1], (int)a[2], a[3]);
}

SYS_HANDLER(umask)
{
	unsigned old = vm->umask;

	vm->umask = (unsigned)a[0] & 0777;
	return old;
}
