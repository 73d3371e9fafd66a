/*
 * The snapshot file: round trip; every truncation, every flipped byte, a newer version
 * and trailing bytes rejected with their own errno; ENOSPC and EFBIG on write leave the
 * previous file intact and no temporary file behind.
 */
#include "check.h"
#include "snap/snap.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/sha.h>

static char dir[] = "/tmp/stoke-snapfile-XXXXXX";
static uint8_t vcpu[600], vmm[2000];
static struct snap_id chain[3];

static void fill(uint8_t *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++) {
		seed = seed * 1103515245 + 12345;
		p[i] = (uint8_t)(seed >> 16);
	}
}

static struct snap_state state(const void *vmm_blob, size_t vmm_len)
{
	struct snap_state st = {
		.vcpu = vcpu, .vcpu_len = sizeof(vcpu), .vmm = vmm_blob, .vmm_len = vmm_len,
		.mem_bytes = 256ULL << 20, .layers = chain, .nlayers = 3,
	};
	return st;
}

static uint8_t *slurp(const char *path, size_t *len)
{
	struct stat st;
	uint8_t *buf;
	int fd = open(path, O_RDONLY);

	fstat(fd, &st);
	*len = (size_t)st.st_size;
	buf = malloc(*len);
	if (read(fd, buf, *len) != (ssize_t)*len)
		abort();
	close(fd);
	return buf;
}

static void spit(const char *path, const uint8_t *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	if (write(fd, buf, len) != (ssize_t)len)
		abort();
	close(fd);
}

static int read_code(const char *path, struct snap_err *err)
{
	struct snap_file f;
	int r = snap_file_read(path, &f, err);

	if (!r)
		snap_file_release(&f);
	return r;
}

static void test_round_trip(const char *path)
{
	struct snap_state st = state(vmm, sizeof(vmm));
	struct snap_err err = { 0 };
	struct snap_file f;

	CHECK(snap_file_write(path, &st, &err) == 0);
	CHECK(snap_file_read(path, &f, &err) == 0);
	CHECK(f.version == SNAP_FILE_VERSION);
	CHECK(f.st.vcpu_len == sizeof(vcpu) && !memcmp(f.st.vcpu, vcpu, sizeof(vcpu)));
	CHECK(f.st.vmm_len == sizeof(vmm) && !memcmp(f.st.vmm, vmm, sizeof(vmm)));
	CHECK(f.st.mem_bytes == 256ULL << 20);
	CHECK(f.st.nlayers == 3 && !memcmp(f.st.layers, chain, sizeof(chain)));
	snap_file_release(&f);
}

/* Every prefix is "truncated", including each section boundary. */
static void test_truncation(const char *path, const uint8_t *good, size_t len)
{
	char bad[300];
	int wrong = 0, boundaries = 0;
	struct snap_err err;

	snprintf(bad, sizeof(bad), "%s.trunc", path);
	for (size_t n = 0; n < len; n++) {
		spit(bad, good, n);
		if (read_code(bad, &err) != -ENODATA || err.code != -ENODATA) {
			wrong++;
			fprintf(stderr, "truncated at %zu: %s\n", n, err.msg);
		}
	}
	CHECK(wrong == 0);
	/* Section starts from the table: header (64) + 3 entries of 56 bytes. */
	for (int i = 0; i < 3; i++) {
		uint64_t off;

		memcpy(&off, good + 64 + i * 56 + 8, 8);
		spit(bad, good, off);
		boundaries += read_code(bad, &err) == -ENODATA;
	}
	CHECK(boundaries == 3);
	CHECK(strstr(err.msg, "truncated") != NULL);
}

static int flip_at(const char *bad, const uint8_t *good, size_t len, size_t at,
		   struct snap_err *err)
{
	uint8_t *copy = malloc(len);
	int r;

	memcpy(copy, good, len);
	copy[at] ^= 0x5a;
	spit(bad, copy, len);
	free(copy);
	r = read_code(bad, err);
	return r;
}

static void test_flips(const char *path, const uint8_t *good, size_t len)
{
	static const char *names[] = { "vcpu", "vmm", "layers" };
	int accepted = 0, named = 0;
	struct snap_err err;
	char bad[300];

	snprintf(bad, sizeof(bad), "%s.flip", path);
	for (size_t at = 0; at < len; at++)
		if (flip_at(bad, good, len, at, &err) >= 0) {
			accepted++;
			fprintf(stderr, "flipped byte %zu accepted\n", at);
		}
	CHECK(accepted == 0);
	/* A flip inside each section's payload is a checksum mismatch naming it. */
	for (int i = 0; i < 3; i++) {
		uint64_t off;
		char want[64];

		memcpy(&off, good + 64 + i * 56 + 8, 8);
		snprintf(want, sizeof(want), "section %s checksum", names[i]);
		named += flip_at(bad, good, len, off + 3, &err) == -EBADMSG &&
			 strstr(err.msg, want);
	}
	CHECK(named == 3);
	CHECK(flip_at(bad, good, len, 1, &err) == -ENOEXEC);
	CHECK(flip_at(bad, good, len, 20, &err) == -EBADMSG);	/* total length */
}

/* A consistent file from a newer build: version 2, checksums right. */
static void test_version(const char *path, const uint8_t *good, size_t len)
{
	uint8_t *copy = malloc(len);
	struct snap_err err;
	char bad[300];

	snprintf(bad, sizeof(bad), "%s.v2", path);
	memcpy(copy, good, len);
	copy[8] = 2;
	memset(copy + 32, 0, 32);
	SHA256(copy, 64 + 3 * 56, copy + 32);
	spit(bad, copy, len);
	CHECK(read_code(bad, &err) == -EPROTONOSUPPORT);
	CHECK(strstr(err.msg, "version 2") != NULL);
	copy[8] = 1;
	copy[12] = 1;		/* a required feature flag */
	memset(copy + 32, 0, 32);
	SHA256(copy, 64 + 3 * 56, copy + 32);
	spit(bad, copy, len);
	CHECK(read_code(bad, &err) == -EPROTONOSUPPORT);
	free(copy);
	copy = malloc(len + 5);
	memcpy(copy, good, len);
	memset(copy + len, 0, 5);
	spit(bad, copy, len + 5);
	CHECK(read_code(bad, &err) == -EINVAL);
	free(copy);
	CHECK(read_code("/nonexistent/snap", &err) == -ENOENT);
}

static int count_entries(const char *d)
{
	DIR *dp = opendir(d);
	struct dirent *e;
	int n = 0;

	while (dp && (e = readdir(dp)))
		n += e->d_name[0] != '.' || (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."));
	if (dp)
		closedir(dp);
	return n;
}

/*
 * In a child: a small snapshot fits, a big one fails with want (ENOSPC or EFBIG); the
 * small one must still read back and nothing else may be left in the directory.
 */
static int full_disk_child(const char *d, int want)
{
	static uint8_t big[256 << 10];
	struct snap_state small = state(vmm, 100), large = state(big, sizeof(big));
	struct snap_err err = { 0 };
	struct snap_file f;
	char path[256];
	int bad = 0;

	snprintf(path, sizeof(path), "%s/snap", d);
	fill(big, sizeof(big), 7);
	bad += snap_file_write(path, &small, &err) != 0;
	bad += snap_file_write(path, &large, &err) != -want;
	bad += err.code != -want || !strstr(err.msg, "writing snapshot");
	if (snap_file_read(path, &f, &err) == 0) {
		bad += f.st.vmm_len != 100;
		snap_file_release(&f);
	} else {
		bad++;
	}
	bad += count_entries(d) != 1;
	if (bad)
		fprintf(stderr, "full disk (%s): %d failures; last: %s\n", strerror(want), bad,
			err.msg);
	return bad ? 1 : 0;
}

static int run_child(int (*fn)(void *), void *arg)
{
	int status;
	pid_t pid = fork();

	if (pid == 0)
		_exit(fn(arg));
	waitpid(pid, &status, 0);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
}

static int enospc_child(void *arg)
{
	const char *d = arg;

	/* A private mount namespace: the 64 KiB tmpfs is seen by this child only. */
	if (unshare(CLONE_NEWNS) || mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) ||
	    mount("tmpfs", d, "tmpfs", 0, "size=64k"))
		return 77;
	return full_disk_child(d, ENOSPC);
}

static int efbig_child(void *arg)
{
	struct rlimit rl = { 64 << 10, 64 << 10 };

	signal(SIGXFSZ, SIG_IGN);
	if (setrlimit(RLIMIT_FSIZE, &rl))
		return 77;
	return full_disk_child(arg, EFBIG);
}

static void test_full_disk(void)
{
	char d1[300], d2[300];
	int r;

	snprintf(d1, sizeof(d1), "%s/tmpfs", dir);
	snprintf(d2, sizeof(d2), "%s/rlimit", dir);
	mkdir(d1, 0755);
	mkdir(d2, 0755);
	r = run_child(enospc_child, d1);
	if (r == 77)
		fprintf(stderr, "ENOSPC on tmpfs skipped: needs CAP_SYS_ADMIN\n");
	else
		CHECK(r == 0);
	CHECK(run_child(efbig_child, d2) == 0);
}

int main(void)
{
	char path[256], cmd[300];
	uint8_t *good;
	size_t len;

	if (!mkdtemp(dir))
		return 1;
	fill(vcpu, sizeof(vcpu), 1);
	fill(vmm, sizeof(vmm), 2);
	fill((uint8_t *)chain, sizeof(chain), 3);
	snprintf(path, sizeof(path), "%s/fn.snap", dir);
	test_round_trip(path);
	good = slurp(path, &len);
	test_truncation(path, good, len);
	test_flips(path, good, len);
	test_version(path, good, len);
	test_full_disk();
	free(good);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	if (system(cmd))
		return 1;
	return check_done();
}
