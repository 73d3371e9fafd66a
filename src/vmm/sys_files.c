/* Descriptor system calls: read/write on files, stdio and the channel; dup, fcntl... */
#include "sys.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <termios.h>
#include <unistd.h>

/* At most this much is moved per call, as Linux caps a single read/write too. */
#define IO_MAX 0x7ffff000UL

long sys_ret(long r)
{
	return r < 0 ? -errno : r;
}

static long do_read(struct vm *vm, struct vfd *f, void *buf, size_t len)
{
	switch (f->kind) {
	case VFD_HOST:
		if ((f->flags & O_ACCMODE) == O_WRONLY || (f->flags & O_PATH))
			return -EBADF;
		return sys_ret(read(f->host, buf, len));
	case VFD_STDIN:
		return 0;
	case VFD_CHANNEL:
		return chan_read(vm, buf, len);
	default:
		return -EBADF;
	}
}

static long do_write(struct vm *vm, struct vfd *f, const void *buf, size_t len)
{
	switch (f->kind) {
	case VFD_HOST:
		if ((f->flags & O_ACCMODE) == O_RDONLY)
			return -EBADF;
		return sys_ret(write(f->host, buf, len));
	case VFD_STDOUT:
		return sys_ret(write(STDOUT_FILENO, buf, len));
	case VFD_STDERR:
		return sys_ret(write(STDERR_FILENO, buf, len));
	case VFD_CHANNEL:
		return chan_write(vm, buf, len);
	default:
		return -EBADF;
	}
}

SYS_HANDLER(read)
{
	struct vfd *f = vfd_get(vm, (long)a[0]);
	size_t len = a[2] > IO_MAX ? IO_MAX : a[2];
	void *p;

	if (!f)
		return -EBADF;
	p = gmem_ptr(vm, a[1], len);
	if (!p)
		return -EFAULT;
	return do_read(vm, f, p, len);
}

SYS_HANDLER(write)
{
	struct vfd *f = vfd_get(vm, (long)a[0]);
	size_t len = a[2] > IO_MAX ? IO_MAX : a[2];
	void *p;

	if (!f)
		return -EBADF;
	p = gmem_ptr(vm, a[1], len);
	if (!p)
		return -EFAULT;
	return do_write(vm, f, p, len);
}

static struct vfd *seekable(struct vm *vm, uint64_t fd, long *err)
{
	struct vfd *f = vfd_get(vm, (long)fd);

	*err = -EBADF;
	if (f && f->kind != VFD_HOST) {
		*err = -ESPIPE;
		f = NULL;
	}
	return f;
}

SYS_HANDLER(pread64)
{
	long err;
	struct vfd *f = seekable(vm, a[0], &err);
	void *p;

	if (!f)
		return err;
	p = gmem_ptr(vm, a[1], a[2]);
	if (!p)
		return -EFAULT;
	return sys_ret(pread(f->host, p, a[2] > IO_MAX ? IO_MAX : a[2], (off_t)a[3]));
}

SYS_HANDLER(pwrite64)
{
	long err;
	struct vfd *f = seekable(vm, a[0], &err);
	void *p;

	if (!f)
		return err;
	p = gmem_ptr(vm, a[1], a[2]);
	if (!p)
		return -EFAULT;
	if ((f->flags & O_ACCMODE) == O_RDONLY)
		return -EBADF;
	return sys_ret(pwrite(f->host, p, a[2] > IO_MAX ? IO_MAX : a[2], (off_t)a[3]));
}

/* readv/writev one vector at a time: stops at the first short transfer, as Linux. */
static long vector_io(struct vm *vm, const uint64_t *a, int write)
{
	struct vfd *f = vfd_get(vm, (long)a[0]);
	struct iovec *iov;
	long total = 0, n;
	uint64_t i;
	void *p;

	if (!f)
		return -EBADF;
	if (a[2] > 1024)
		return -EINVAL;
	iov = gmem_ptr(vm, a[1], a[2] * sizeof(*iov));
	if (!iov && a[2])
		return -EFAULT;
	for (i = 0; i < a[2]; i++) {
		p = gmem_ptr(vm, (uint64_t)(uintptr_t)iov[i].iov_base, iov[i].iov_len);
		if (!p)
			return total ? total : -EFAULT;
		n = write ? do_write(vm, f, p, iov[i].iov_len) : do_read(vm, f, p, iov[i].iov_len);
		if (n < 0)
			return total ? total : n;
		total += n;
		if ((size_t)n < iov[i].iov_len)
			break;
	}
	return total;
}

SYS_HANDLER(readv)
{
	return vector_io(vm, a, 0);
}

SYS_HANDLER(writev)
{
	return vector_io(vm, a, 1);
}

#define OPEN_FLAGS_KNOWN (O_ACCMODE | O_CREAT | O_EXCL | O_NOCTTY | O_TRUNC | O_APPEND | \
			  O_NONBLOCK | O_DSYNC | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | \
			  O_SYNC | O_PATH | __O_TMPFILE | O_LARGEFILE | O_NOATIME)

static long open_common(struct vm *vm, int dirfd, uint64_t upath, int flags)
{
	char path[4096], abs[4096];
	int host, fd, r;

	r = gmem_str(vm, upath, path, sizeof(path));
	if (r)
		return r;
	flags &= OPEN_FLAGS_KNOWN;
	host = vfs_open(vm, dirfd, path, flags & ~O_CLOEXEC, NULL);
	if (host < 0)
		return host;
	fd = vfd_install(vm, host, 0, !!(flags & O_CLOEXEC));
	if (fd < 0)
		return fd;
	vm->fds[fd].flags = flags;
	if (vfs_resolve(vm, dirfd, path, abs, sizeof(abs)) == 0)
		vm->fds[fd].path = strdup(abs);
	return fd;
}

SYS_HANDLER(open)
{
	return open_common(vm, AT_FDCWD, a[0], (int)a[1]);
}

SYS_HANDLER(openat)
{
	return open_common(vm, (int)a[0], a[1], (int)a[2]);
}

static void vfd_clear(struct vfd *f)
{
	if (f->kind == VFD_HOST)
		close(f->host);
	free(f->path);
	memset(f, 0, sizeof(*f));
}

SYS_HANDLER(close)
{
	struct vfd *f = vfd_get(vm, (long)a[0]);

	if (!f)
		return -EBADF;
	vfd_clear(f);
	return 0;
}

SYS_HANDLER(lseek)
{
	long err;
	struct vfd *f = seekable(vm, a[0], &err);

	if (!f)
		return err;
	return sys_ret(lseek(f->host, (off_t)a[1], (int)a[2]));
}

/* Duplicates f into slot `to` (which must be free); host files share the offset. */
static long dup_into(struct vm *vm, struct vfd *f, int to, int cloexec)
{
	struct vfd copy = *f;

	if (f->kind == VFD_HOST) {
		copy.host = fcntl(f->host, F_DUPFD_CLOEXEC, 0);
		if (copy.host < 0)
			return -errno;
	}
	copy.path = f->path ? strdup(f->path) : NULL;
	copy.cloexec = cloexec;
	vm->fds[to] = copy;
	return to;
}

static int lowest_free(struct vm *vm, int min)
{
	int i;

	for (i = min; i < VM_NR_FDS; i++)
		if (vm->fds[i].kind == VFD_FREE)
			return i;
	return -EMFILE;
}

SYS_HANDLER(dup)
{
	struct vfd *f = vfd_get(vm, (long)a[0]);
	int to;

	if (!f)
		return -EBADF;
	to = lowest_free(vm, 0);
	return to < 0 ? to : dup_into(vm, f, to, 0);
}

static long dup3_common(struct vm *vm, uint64_t from, uint64_t to, int cloexec)
{
	struct vfd *f = vfd_get(vm, (long)from);

	if (!f)
		return -EBADF;
	if (to >= VM_NR_FDS)
		return -EBADF;
	if (from == to)
		return (long)to;
	if (vm->fds[to].kind != VFD_FREE)
		vfd_clear(&vm->fds[to]);
	return dup_into(vm, f, (int)to, cloexec);
}

SYS_HANDLER(dup2)
{
	if (a[0] == a[1])
		return vfd_get(vm, (long)a[0]) ? (long)a[1] : -EBADF;
	return dup3_common(vm, a[0], a[1], 0);
}

SYS_HANDLER(dup3)
{
	if (a[2] & ~(uint64_t)O_CLOEXEC)
		return -EINVAL;
	if (a[0] == a[1])
		return -EINVAL;
	return dup3_common(vm, a[0], a[1], !!(a[2] & O_CLOEXEC));
}

SYS_HANDLER(fcntl)
{
	struct vfd *f = vfd_get(vm, (long)a[0]);
	int to;

	if (!f)
		return -EBADF;
	switch (a[1]) {
	case F_GETFD:
		return f->cloexec ? FD_CLOEXEC : 0;
	case F_SETFD:
		f->cloexec = !!(a[2] & FD_CLOEXEC);
		return 0;
	case F_GETFL:
		if (f->kind == VFD_STDOUT || f->kind == VFD_STDERR)
			return O_WRONLY;
		if (f->kind != VFD_HOST)
			return O_RDWR;
		return (f->flags & ~(O_CLOEXEC | O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY)) |
		       O_LARGEFILE;
	case F_SETFL:
		f->flags = (f->flags & ~(O_APPEND | O_NONBLOCK)) |
			   ((int)a[2] & (O_APPEND | O_NONBLOCK));
		if (f->kind == VFD_HOST)
			fcntl(f->host, F_SETFL, f->flags & (O_APPEND | O_NONBLOCK));
		return 0;
	case F_DUPFD:
	case F_DUPFD_CLOEXEC:
		if (a[2] >= VM_NR_FDS)
			return -EINVAL;
		to = lowest_free(vm, (int)a[2]);
		return to < 0 ? to : dup_into(vm, f, to, a[1] == F_DUPFD_CLOEXEC);
	case F_GETLK:
	case F_SETLK:
	case F_SETLKW:
	case F_OFD_GETLK:
	case F_OFD_SETLK:
	case F_OFD_SETLKW:
		/* One process: locks are uncontended. */
		return f->kind == VFD_HOST ? sys_ret(fcntl(f->host, (int)a[1],
			gmem_ptr(vm, a[2], sizeof(struct flock)))) : -EINVAL;
	default:
		return -EINVAL;
	}
}

SYS_HANDLER(ioctl)
{
	struct vfd *f = vfd_get(vm, (long)a[0]);

	if (!f)
		return -EBADF;
	switch (a[1]) {
	case FIOCLEX:
	case FIONCLEX:
		f->cloexec = a[1] == FIOCLEX;
		return 0;
	case FIONBIO:
		return 0;
	default:
		/* Nothing here is a terminal: isatty() must say no. */
		return -ENOTTY;
	}
}

SYS_HANDLER(ftruncate)
{
	struct vfd *f = vfd_get(vm, (long)a[0]);

	if (!f || f->kind != VFD_HOST)
		return -EBADF;
	if ((f->flags & O_ACCMODE) == O_RDONLY)
		return -EINVAL;
	return sys_ret(ftruncate(f->host, (off_t)a[1]));
}

SYS_HANDLER(getdents64)
{
	struct vfd *f = vfd_get(vm, (long)a[0]);
	void *p;

	if (!f)
		return -EBADF;
	if (f->kind != VFD_HOST)
		return -ENOTDIR;
	p = gmem_ptr(vm, a[1], a[2]);
	if (!p)
		return -EFAULT;
	return sys_ret(syscall(SYS_getdents64, f->host, p, a[2]));
}
