/*
 * Small shared pieces: errors, hashing, whole-file I/O and atomic replacement.
 */
#include "snap_int.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/sha.h>

void (*snap__hook)(enum snap__step step, uint64_t n);

int snap__fail(struct snap_err *err, int code, const char *fmt, ...)
{
	va_list ap;

	if (err) {
		err->code = -code;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
	}
	return -code;
}

void snap__sha256(const void *data, size_t len, struct snap_id *out)
{
	SHA256(data, len, out->b);
}

void snap_warm_up(void)
{
	struct snap_id id;

	snap__sha256("", 0, &id);
}

int snap__page_is_zero(const uint8_t *p)
{
	const uint64_t *w = (const uint64_t *)p;

	/* Most non-zero pages differ in the first words; check those before memcmp. */
	if (w[0] | w[1] | w[2] | w[3])
		return 0;
	return memcmp(p, p + 32, SNAP_PAGE - 32) == 0;
}

void snap_id_hex(const struct snap_id *id, char out[65])
{
	static const char digits[] = "0123456789abcdef";

	for (int i = 0; i < 32; i++) {
		out[2 * i] = digits[id->b[i] >> 4];
		out[2 * i + 1] = digits[id->b[i] & 15];
	}
	out[64] = 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int snap_id_parse(const char *hex, struct snap_id *id)
{
	for (int i = 0; i < 32; i++) {
		int hi = hexval(hex[2 * i]), lo = hi < 0 ? -1 : hexval(hex[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return -EINVAL;
		id->b[i] = (uint8_t)(hi << 4 | lo);
	}
	return hex[64] ? -EINVAL : 0;
}

int snap_id_is_zero(const struct snap_id *id)
{
	static const struct snap_id zero;

	return memcmp(id, &zero, sizeof(zero)) == 0;
}

int snap__write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int snap__pread_all(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;
	size_t got = 0;

	while (got < len) {
		ssize_t n = pread(fd, p + got, len - got, (off_t)(off + got));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (int)(got == len ? 0 : -ENODATA);
}

int snap__read_file(int dirfd, const char *name, uint8_t **buf, size_t *len)
{
	struct stat st;
	int fd, r;

	fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0) {
		r = -errno;
		goto out;
	}
	*len = (size_t)st.st_size;
	*buf = malloc(*len ? *len : 1);
	if (!*buf) {
		r = -ENOMEM;
		goto out;
	}
	r = snap__pread_all(fd, *buf, *len, 0);
	if (r < 0) {
		free(*buf);
		*buf = NULL;
	}
out:
	close(fd);
	return r;
}

unsigned snap__seq(void)
{
	static unsigned seq;

	return __atomic_fetch_add(&seq, 1, __ATOMIC_RELAXED);
}

int snap__atomic_write(int dirfd, const char *name, const void *buf, size_t len)
{
	char tmp[320];
	int fd, r;

	/* A leading dot keeps half-written files out of every listing that wants ids. */
	snprintf(tmp, sizeof(tmp), ".%s.%d.%u.tmp", name, (int)getpid(), snap__seq());
	fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	r = snap__write_all(fd, buf, len);
	if (!r && fsync(fd) < 0)
		r = -errno;
	if (close(fd) < 0 && !r)
		r = -errno;
	if (!r && renameat(dirfd, tmp, dirfd, name) < 0)
		r = -errno;
	if (r) {
		unlinkat(dirfd, tmp, 0);
		return r;
	}
	/* The rename itself must survive a crash before the caller relies on the file. */
	return fsync(dirfd) < 0 ? -errno : 0;
}

int snap__atomic_write_path(const char *path, const void *buf, size_t len)
{
	char dir[4096], base[256];
	int dfd, r;

	snprintf(dir, sizeof(dir), "%s", path);
	snprintf(base, sizeof(base), "%s", basename(dir));
	snprintf(dir, sizeof(dir), "%s", path);
	dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return -errno;
	r = snap__atomic_write(dfd, base, buf, len);
	close(dfd);
	return r;
}
