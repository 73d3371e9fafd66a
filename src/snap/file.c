/*
 * The snapshot file: a header, a section table, then the sections (8-byte aligned).
 * Byte layout in docs/snapshots.md. Everything is little-endian.
 */
#include "snap_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define FILE_MAGIC	"STOKSNAP"
#define HDR_SIZE	64
#define SEC_SIZE	56
#define MAX_SECTIONS	64
/* Flags in the low half must be understood by a reader; the high half may be ignored. */
#define FLAGS_REQUIRED	0xffffu
#define FLAGS_KNOWN	0u

enum { SEC_VCPU = 1, SEC_VMM = 2, SEC_LAYERS = 3, SEC_COUNT = 4 };

static const char *sec_name(uint32_t type)
{
	static const char *names[SEC_COUNT] = { "?", "vcpu", "vmm", "layers" };

	return type < SEC_COUNT ? names[type] : "unknown";
}

static size_t align8(size_t n)
{
	return (n + 7) & ~(size_t)7;
}

/* The layer list: mem_bytes, count, then the ids top first. */
static uint8_t *encode_layers(const struct snap_state *st, size_t *len)
{
	uint8_t *p;

	*len = 16 + (size_t)st->nlayers * 32;
	p = calloc(1, *len);
	if (!p)
		return NULL;
	snap__put64(p, st->mem_bytes);
	snap__put32(p + 8, st->nlayers);
	memcpy(p + 16, st->layers, (size_t)st->nlayers * 32);
	return p;
}

static void put_section(uint8_t *buf, int i, uint32_t type, size_t *off,
			const void *data, size_t len)
{
	uint8_t *e = buf + HDR_SIZE + i * SEC_SIZE;
	struct snap_id h;

	memcpy(buf + *off, data, len);
	snap__sha256(data, len, &h);
	snap__put32(e, type);
	snap__put64(e + 8, *off);
	snap__put64(e + 16, len);
	memcpy(e + 24, h.b, 32);
	*off = align8(*off + len);
}

static uint8_t *encode(const struct snap_state *st, size_t *total)
{
	size_t llen, off = HDR_SIZE + 3 * SEC_SIZE;
	uint8_t *layers, *buf;
	struct snap_id h;

	layers = encode_layers(st, &llen);
	if (!layers)
		return NULL;
	*total = off + align8(st->vcpu_len) + align8(st->vmm_len) + align8(llen);
	buf = calloc(1, *total);
	if (buf) {
		put_section(buf, 0, SEC_VCPU, &off, st->vcpu, st->vcpu_len);
		put_section(buf, 1, SEC_VMM, &off, st->vmm, st->vmm_len);
		put_section(buf, 2, SEC_LAYERS, &off, layers, llen);
		memcpy(buf, FILE_MAGIC, 8);
		snap__put32(buf + 8, SNAP_FILE_VERSION);
		snap__put32(buf + 12, st->flags);
		snap__put64(buf + 16, *total);
		snap__put32(buf + 24, 3);
		snap__put32(buf + 28, HDR_SIZE + 3 * SEC_SIZE);
		snap__sha256(buf, HDR_SIZE + 3 * SEC_SIZE, &h);
		memcpy(buf + 32, h.b, 32);
	}
	free(layers);
	return buf;
}

int snap_file_write(const char *path, const struct snap_state *st, struct snap_err *err)
{
	size_t total;
	uint8_t *buf;
	int r;

	if (!st->nlayers || st->nlayers > SNAP_MAX_CHAIN || (st->flags & FLAGS_REQUIRED) ||
	    !st->mem_bytes || st->mem_bytes % SNAP_PAGE)
		return snap__fail(err, EINVAL, "snapshot %s: bad layer count, memory size or "
				  "flags", path);
	buf = encode(st, &total);
	if (!buf)
		return snap__fail(err, ENOMEM, "snapshot %s: out of memory", path);
	r = snap__atomic_write_path(path, buf, total);
	free(buf);
	if (r < 0)
		return snap__fail(err, -r, "writing snapshot %s (%zu bytes): %s", path, total,
				  strerror(-r));
	return 0;
}

/* Magic, version, flags and the header checksum. */
static int check_header(const uint8_t *buf, size_t len, const char *path, uint32_t *hdr_len,
			struct snap_err *err)
{
	uint32_t version, flags, nsec;
	struct snap_id h, want;
	uint8_t *copy;

	if (len < 8)
		return snap__fail(err, ENODATA, "%s: truncated: %zu bytes, no header", path, len);
	if (memcmp(buf, FILE_MAGIC, 8))
		return snap__fail(err, ENOEXEC, "%s: not a stoke snapshot (bad magic)", path);
	if (len < HDR_SIZE)
		return snap__fail(err, ENODATA, "%s: truncated inside the header (%zu bytes)",
				  path, len);
	version = snap__get32(buf + 8);
	flags = snap__get32(buf + 12);
	if (version != SNAP_FILE_VERSION)
		return snap__fail(err, EPROTONOSUPPORT, "%s: format version %u, this build "
				  "reads version %u", path, version, SNAP_FILE_VERSION);
	if (flags & FLAGS_REQUIRED & ~FLAGS_KNOWN)
		return snap__fail(err, EPROTONOSUPPORT, "%s: requires features 0x%x this build "
				  "lacks", path, flags & FLAGS_REQUIRED & ~FLAGS_KNOWN);
	nsec = snap__get32(buf + 24);
	*hdr_len = snap__get32(buf + 28);
	if (nsec > MAX_SECTIONS || *hdr_len != HDR_SIZE + nsec * SEC_SIZE)
		return snap__fail(err, EINVAL, "%s: malformed header (%u sections)", path, nsec);
	if (len < *hdr_len)
		return snap__fail(err, ENODATA, "%s: truncated inside the section table", path);
	copy = malloc(*hdr_len);
	if (!copy)
		return snap__fail(err, ENOMEM, "%s: out of memory", path);
	memcpy(copy, buf, *hdr_len);
	memset(copy + 32, 0, 32);
	snap__sha256(copy, *hdr_len, &h);
	free(copy);
	memcpy(want.b, buf + 32, 32);
	if (memcmp(&h, &want, sizeof(h)))
		return snap__fail(err, EBADMSG, "%s: header checksum mismatch", path);
	return 0;
}

static int check_layers(const uint8_t *p, uint64_t len, struct snap_state *st,
			const char *path, struct snap_err *err)
{
	if (len < 16)
		return snap__fail(err, EINVAL, "%s: layer list too short", path);
	st->mem_bytes = snap__get64(p);
	st->nlayers = snap__get32(p + 8);
	if (!st->nlayers || st->nlayers > SNAP_MAX_CHAIN || len != 16 + st->nlayers * 32ULL)
		return snap__fail(err, EINVAL, "%s: layer list of %u layers in %llu bytes",
				  path, st->nlayers, (unsigned long long)len);
	if (!st->mem_bytes || st->mem_bytes % SNAP_PAGE)
		return snap__fail(err, EINVAL, "%s: memory size %llu is not whole pages",
				  path, (unsigned long long)st->mem_bytes);
	st->layers = (const struct snap_id *)(p + 16);
	return 0;
}

/* Bounds, order and checksum of section i; records known sections in st. */
static int check_section(const uint8_t *buf, uint64_t total, uint32_t i, uint64_t *end,
			 struct snap_state *st, unsigned *seen, const char *path,
			 struct snap_err *err)
{
	const uint8_t *e = buf + HDR_SIZE + i * SEC_SIZE;
	uint32_t type = snap__get32(e);
	uint64_t off = snap__get64(e + 8), len = snap__get64(e + 16);
	struct snap_id h;

	if (off < *end || off > total || len > total - off)
		return snap__fail(err, EINVAL, "%s: section %s out of bounds", path,
				  sec_name(type));
	*end = off + len;
	snap__sha256(buf + off, len, &h);
	if (memcmp(h.b, e + 24, 32))
		return snap__fail(err, EBADMSG, "%s: section %s checksum mismatch", path,
				  sec_name(type));
	if (type >= SEC_COUNT || type == 0)
		return 0;	/* written by a newer build; not needed to restore */
	if (*seen & 1u << type)
		return snap__fail(err, EINVAL, "%s: section %s twice", path, sec_name(type));
	*seen |= 1u << type;
	if (type == SEC_VCPU) {
		st->vcpu = buf + off;
		st->vcpu_len = len;
	} else if (type == SEC_VMM) {
		st->vmm = buf + off;
		st->vmm_len = len;
	}
	return type == SEC_LAYERS ? check_layers(buf + off, len, st, path, err) : 0;
}

static int decode(const uint8_t *buf, size_t len, struct snap_file *f, const char *path,
		  struct snap_err *err)
{
	uint32_t hdr_len = 0, nsec;
	uint64_t total, end;
	unsigned seen = 0;
	int r;

	r = check_header(buf, len, path, &hdr_len, err);
	if (r)
		return r;
	total = snap__get64(buf + 16);
	if (len < total)
		return snap__fail(err, ENODATA, "%s: truncated: %zu of %llu bytes", path, len,
				  (unsigned long long)total);
	if (len > total)
		return snap__fail(err, EINVAL, "%s: %zu bytes after the recorded end", path,
				  len - (size_t)total);
	nsec = snap__get32(buf + 24);
	end = hdr_len;
	for (uint32_t i = 0; i < nsec; i++) {
		r = check_section(buf, total, i, &end, &f->st, &seen, path, err);
		if (r)
			return r;
	}
	if ((seen & 0xe) != 0xe)
		return snap__fail(err, EINVAL, "%s: a required section is missing", path);
	f->version = snap__get32(buf + 8);
	f->st.flags = snap__get32(buf + 12);
	return 0;
}

int snap_file_read(const char *path, struct snap_file *f, struct snap_err *err)
{
	uint8_t *buf;
	size_t len;
	int r;

	memset(f, 0, sizeof(*f));
	r = snap__read_file(AT_FDCWD, path, &buf, &len);
	if (r < 0)
		return snap__fail(err, -r, "%s: %s", path, strerror(-r));
	r = decode(buf, len, f, path, err);
	if (r) {
		free(buf);
		memset(f, 0, sizeof(*f));
		return r;
	}
	f->buf = buf;
	f->len = len;
	return 0;
}

void snap_file_release(struct snap_file *f)
{
	free(f->buf);
	memset(f, 0, sizeof(*f));
}
