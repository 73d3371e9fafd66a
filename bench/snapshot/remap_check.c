/*
 * Checks what snap_image_map relies on: memory replaced with mmap(MAP_FIXED) under a
 * KVM memory slot that a guest has already used is what the guest sees next (KVM's
 * MMU notifier drops the old translations), and so are the host's later copy-on-write
 * writes. The guest is three real-mode instructions: read a byte, out it, hlt.
 *
 * cc -O2 -o remap_check bench/snapshot/remap_check.c && ./remap_check
 */
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define MEM	(1 << 20)
#define DATA	0x1000

/* mov al, [DATA]; out 0x10, al; hlt */
static const uint8_t code[] = { 0xa0, DATA & 0xff, DATA >> 8, 0xe6, 0x10, 0xf4 };

static void die(const char *what)
{
	perror(what);
	exit(1);
}

/* Runs the guest from address 0 and returns the byte it wrote to port 0x10. */
static int guest_read(int vcpu, struct kvm_run *run)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs = { .rip = 0, .rflags = 2 };
	int val = -1;

	if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
		die("KVM_GET_SREGS");
	sregs.cs.base = sregs.ds.base = 0;
	sregs.cs.selector = sregs.ds.selector = 0;
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0 || ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		die("KVM_SET_REGS");
	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0)
			die("KVM_RUN");
		if (run->exit_reason == KVM_EXIT_HLT)
			return val;
		if (run->exit_reason != KVM_EXIT_IO) {
			fprintf(stderr, "unexpected exit %u\n", run->exit_reason);
			exit(1);
		}
		val = *((uint8_t *)run + run->io.data_offset);
	}
}

static int image_file(void)
{
	char path[] = "/tmp/remap-check-XXXXXX";
	int fd = mkstemp(path);

	if (fd < 0 || ftruncate(fd, MEM) < 0 || pwrite(fd, code, sizeof(code), 0) < 0 ||
	    pwrite(fd, "B", 1, DATA) < 0)
		die("image file");
	unlink(path);
	return fd;
}

int main(void)
{
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC), vm, vcpu, a, b, c;
	struct kvm_userspace_memory_region slot = { .memory_size = MEM };
	struct kvm_run *run;
	uint8_t *mem;

	vm = kvm < 0 ? -1 : ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM");
	mem = mmap(NULL, MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memcpy(mem, code, sizeof(code));
	mem[DATA] = 'A';
	slot.userspace_addr = (uintptr_t)mem;
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &slot) < 0)
		die("KVM_SET_USER_MEMORY_REGION");
	vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	run = mmap(NULL, (size_t)ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0), PROT_READ | PROT_WRITE,
		   MAP_SHARED, vcpu, 0);
	if (vcpu < 0 || run == MAP_FAILED)
		die("vCPU");
	a = guest_read(vcpu, run);
	if (mmap(mem, MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, image_file(), 0) !=
	    mem)
		die("mmap MAP_FIXED");
	b = guest_read(vcpu, run);
	mem[DATA] = 'C';
	c = guest_read(vcpu, run);
	printf("guest read %c before the remap, %c after it, %c after a host write: %s\n",
	       a, b, c, a == 'A' && b == 'B' && c == 'C' ? "ok" : "STALE");
	return a == 'A' && b == 'B' && c == 'C' ? 0 : 1;
}
