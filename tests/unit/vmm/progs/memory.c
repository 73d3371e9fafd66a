/* Memory system calls: brk, anonymous and file mappings, mremap; compared with Linux. */
#include "t.h"
#include <fcntl.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

int main(void)
{
	char *b0 = sbrk(0), *p, *q;
	int zero = 1, fd;

	SHOWOK("brk grow", brk(b0 + (1 << 20)));
	memset(b0, 7, 1 << 20);
	SHOWOK("brk shrink", brk(b0));
	TRUTH("sbrk back", sbrk(0) == b0);
	p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	TRUTH("mmap anon", p != MAP_FAILED);
	for (int i = 0; i < 1 << 20; i += 4096)
		zero &= p[i] == 0;
	TRUTH("anon zeroed", zero);
	memset(p, 0x5a, 1 << 20);
	SHOWOK("munmap", munmap(p, 1 << 20));
	q = mmap(p, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	TRUTH("fixed at same address", q == p);
	TRUTH("zero after remap", q[0] == 0 && q[(1 << 20) - 1] == 0);
	q[0] = 'x';
	p = mremap(q, 1 << 20, 4 << 20, MREMAP_MAYMOVE);
	TRUTH("mremap grows, keeps data", p != MAP_FAILED && p[0] == 'x');
	q = mmap(p, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	TRUTH("fixed_noreplace EEXIST", q == MAP_FAILED && errno == EEXIST);
	SHOWOK("mprotect", mprotect(p, 4096, PROT_READ));
	SHOW("mprotect unaligned", mprotect(p + 1, 4096, PROT_READ));
	q = mmap(NULL, 0, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	TRUTH("mmap len 0 EINVAL", q == MAP_FAILED && errno == EINVAL);
	q = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, 99, 0);
	TRUTH("mmap bad fd EBADF", q == MAP_FAILED && errno == EBADF);
	fd = open("/tmp/stoke-mem-test", O_CREAT | O_RDWR | O_TRUNC, 0600);
	SHOW("write file", write(fd, "mapped file!", 12));
	q = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	TRUTH("file mapping content", q != MAP_FAILED && !memcmp(q, "mapped file!", 12) &&
	      q[12] == 0 && q[4095] == 0);
	SHOWOK("madvise", madvise(p, 4096, MADV_DONTNEED));
	TRUTH("dontneed zeroes anon", p[0] == 0);
	unlink("/tmp/stoke-mem-test");
	return 0;
}
