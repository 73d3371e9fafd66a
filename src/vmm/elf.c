/*
 * Program loading as execve(2) does it: the executable's PT_LOAD segments (at their
 * addresses, or at a fixed bias for position-independent executables), its interpreter
 * (ld-linux) placed like an mmap, and the initial stack with argv, envp and auxv.
 */
#include "vm.h"
#include "guest/layout.h"

#include <cpuid.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#define PAGE_DOWN(x) ((x) & ~(VM_PAGE - 1))
#define PAGE_UP(x) (((x) + VM_PAGE - 1) & ~(VM_PAGE - 1))
/* Where position-independent executables go: where non-PIE ones usually start. */
#define PIE_BASE 0x400000ULL
#define MAX_PHDRS 64

struct elf_image {
	Elf64_Ehdr eh;
	Elf64_Phdr ph[MAX_PHDRS];
	uint64_t bias;
	uint64_t lo, hi;	/* page-aligned span of the PT_LOAD segments, unbiased */
	uint64_t phdr;		/* guest address of the program headers */
	char interp[256];
};

static int read_full(int fd, void *buf, size_t len, off_t off)
{
	ssize_t n = pread(fd, buf, len, off);

	if (n < 0)
		return -errno;
	return (size_t)n == len ? 0 : -ENOEXEC;
}

static int read_headers(int fd, struct elf_image *img)
{
	Elf64_Ehdr *eh = &img->eh;
	int i, r;

	r = read_full(fd, eh, sizeof(*eh), 0);
	if (r)
		return r;
	if (memcmp(eh->e_ident, ELFMAG, SELFMAG) || eh->e_ident[EI_CLASS] != ELFCLASS64 ||
	    eh->e_machine != EM_X86_64 || (eh->e_type != ET_EXEC && eh->e_type != ET_DYN) ||
	    eh->e_phentsize != sizeof(Elf64_Phdr) || !eh->e_phnum || eh->e_phnum > MAX_PHDRS)
		return -ENOEXEC;
	r = read_full(fd, img->ph, eh->e_phnum * sizeof(Elf64_Phdr), (off_t)eh->e_phoff);
	if (r)
		return r;
	img->lo = UINT64_MAX;
	img->hi = 0;
	for (i = 0; i < eh->e_phnum; i++) {
		Elf64_Phdr *ph = &img->ph[i];

		if (ph->p_type == PT_INTERP) {
			if (ph->p_filesz >= sizeof(img->interp))
				return -ENOEXEC;
			r = read_full(fd, img->interp, ph->p_filesz, (off_t)ph->p_offset);
			if (r)
				return r;
			img->interp[ph->p_filesz] = '\0';
		}
		if (ph->p_type != PT_LOAD)
			continue;
		if (ph->p_filesz > ph->p_memsz || ph->p_vaddr + ph->p_memsz < ph->p_vaddr)
			return -ENOEXEC;
		if (PAGE_DOWN(ph->p_vaddr) < img->lo)
			img->lo = PAGE_DOWN(ph->p_vaddr);
		if (PAGE_UP(ph->p_vaddr + ph->p_memsz) > img->hi)
			img->hi = PAGE_UP(ph->p_vaddr + ph->p_memsz);
	}
	return img->hi > img->lo ? 0 : -ENOEXEC;
}

static int load_segments(struct vm *vm, int fd, struct elf_image *img)
{
	int i, r;

	for (i = 0; i < img->eh.e_phnum; i++) {
		Elf64_Phdr *ph = &img->ph[i];
		uint8_t *dst;

		if (ph->p_type == PT_PHDR)
			img->phdr = ph->p_vaddr + img->bias;
		if (ph->p_type != PT_LOAD)
			continue;
		dst = gmem_ptr(vm, ph->p_vaddr + img->bias, ph->p_memsz);
		if (!dst)
			return -ENOEXEC;
		r = read_full(fd, dst, ph->p_filesz, (off_t)ph->p_offset);
		if (r)
			return r;
		/* bss: memory is zero already, but a segment may share a page with data */
		memset(dst + ph->p_filesz, 0, ph->p_memsz - ph->p_filesz);
		if (!img->phdr && ph->p_offset <= img->eh.e_phoff &&
		    img->eh.e_phoff < ph->p_offset + ph->p_filesz)
			img->phdr = ph->p_vaddr + img->bias + img->eh.e_phoff - ph->p_offset;
	}
	return 0;
}

/* Places and loads one ELF file; main says whether it is the program or its interpreter. */
static int load_file(struct vm *vm, const char *path, int main, struct elf_image *img)
{
	uint64_t span;
	int fd, r;

	fd = vfs_open(vm, AT_FDCWD, path, O_RDONLY, NULL);
	if (fd < 0)
		return fd;
	r = read_headers(fd, img);
	if (r)
		goto out;
	span = img->hi - img->lo;
	if (img->eh.e_type == ET_EXEC)
		img->bias = 0;
	else if (main)
		img->bias = PIE_BASE - img->lo;
	else
		img->bias = gmem_alloc(vm, span) - img->lo;
	r = -ENOMEM;
	if (img->lo + img->bias < GL_KERNEL_END || img->hi + img->bias > vm->mmap_top)
		goto out;
	gmem_mark(vm, img->lo + img->bias, span, 1);
	r = load_segments(vm, fd, img);
out:
	close(fd);
	return r;
}

/* Copies a string onto the guest stack below *sp; returns its guest address. */
static uint64_t push_str(struct vm *vm, uint64_t *sp, const char *s)
{
	size_t n = strlen(s) + 1;

	*sp -= n;
	memcpy(vm->mem + *sp, s, n);
	return *sp;
}

static int count(char **v)
{
	int n = 0;

	while (v && v[n])
		n++;
	return n;
}

static uint64_t hwcap(void)
{
	unsigned a, b, c, d;

	__cpuid(1, a, b, c, d);
	return d;
}

#define NAUX 24

struct auxv {
	uint64_t v[NAUX][2];
	int n;
};

static void aux(struct auxv *a, uint64_t type, uint64_t val)
{
	a->v[a->n][0] = type;
	a->v[a->n][1] = val;
	a->n++;
}

static void fill_auxv(struct vm *vm, struct auxv *a, struct elf_image *prog,
		      uint64_t interp_base, uint64_t execfn, uint64_t platform, uint64_t random)
{
	aux(a, AT_PHDR, prog->phdr);
	aux(a, AT_PHENT, sizeof(Elf64_Phdr));
	aux(a, AT_PHNUM, prog->eh.e_phnum);
	aux(a, AT_PAGESZ, VM_PAGE);
	aux(a, AT_BASE, interp_base);
	aux(a, AT_FLAGS, 0);
	aux(a, AT_ENTRY, prog->eh.e_entry + prog->bias);
	aux(a, AT_UID, 0);
	aux(a, AT_EUID, 0);
	aux(a, AT_GID, 0);
	aux(a, AT_EGID, 0);
	aux(a, AT_SECURE, 0);
	aux(a, AT_HWCAP, hwcap());
	aux(a, AT_HWCAP2, 0);
	aux(a, AT_CLKTCK, 100);
	aux(a, AT_RANDOM, random);
	aux(a, AT_EXECFN, execfn);
	aux(a, AT_PLATFORM, platform);
	if (vm->has_vdso)
		aux(a, AT_SYSINFO_EHDR, GL_VDSO);
	aux(a, AT_NULL, 0);
}

/* Writes argc, argv, envp and auxv below sp, 16-byte aligned as the ABI wants. */
static uint64_t push_vectors(struct vm *vm, uint64_t sp, uint64_t *argv, int argc,
			     uint64_t *envv, int envc, const struct auxv *a)
{
	uint64_t nwords = 1 + (uint64_t)argc + 1 + (uint64_t)envc + 1 + 2 * (uint64_t)a->n;
	uint64_t *w;
	int i, k = 0;

	sp = (sp - nwords * 8) & ~15ULL;
	w = (uint64_t *)(vm->mem + sp);
	w[k++] = (uint64_t)argc;
	for (i = 0; i <= argc; i++)
		w[k++] = i < argc ? argv[i] : 0;
	for (i = 0; i <= envc; i++)
		w[k++] = i < envc ? envv[i] : 0;
	memcpy(w + k, a->v, (size_t)a->n * 16);
	return sp;
}

static int build_stack(struct vm *vm, struct elf_image *prog, uint64_t interp_base,
		       uint64_t *sp_out)
{
	const struct vm_config *cfg = vm->cfg;
	int argc = count(cfg->argv), envc = count(cfg->envp), i;
	uint64_t sp = vm->mem_size, execfn, platform, random;
	uint64_t *argv = calloc((size_t)(argc + envc + 2), sizeof(*argv)), *envv;
	struct auxv a = { .n = 0 };

	if (!argv)
		return -ENOMEM;
	envv = argv + argc + 1;
	execfn = push_str(vm, &sp, vm->exe_path);
	platform = push_str(vm, &sp, "x86_64");
	for (i = envc - 1; i >= 0; i--)
		envv[i] = push_str(vm, &sp, cfg->envp[i]);
	for (i = argc - 1; i >= 0; i--)
		argv[i] = push_str(vm, &sp, cfg->argv[i]);
	sp -= 16;
	random = sp;
	if (getrandom(vm->mem + random, 16, 0) != 16)
		memset(vm->mem + random, 0x5a, 16);
	fill_auxv(vm, &a, prog, interp_base, execfn, platform, random);
	*sp_out = push_vectors(vm, sp & ~15ULL, argv, argc, envv, envc, &a);
	free(argv);
	return 0;
}

int elf_load_program(struct vm *vm, uint64_t *entry, uint64_t *sp)
{
	struct elf_image prog = { 0 }, interp = { 0 };
	uint64_t interp_base = 0;
	int r;

	r = vfs_resolve(vm, AT_FDCWD, vm->cfg->argv[0], vm->exe_path, sizeof(vm->exe_path));
	if (r)
		return r;
	r = load_file(vm, vm->exe_path, 1, &prog);
	if (r)
		return r;
	vm->brk_start = vm->brk_cur = prog.hi + prog.bias;
	*entry = prog.eh.e_entry + prog.bias;
	if (prog.interp[0]) {
		r = load_file(vm, prog.interp, 0, &interp);
		if (r)
			return r;
		interp_base = interp.lo + interp.bias;
		*entry = interp.eh.e_entry + interp.bias;
	}
	return build_stack(vm, &prog, interp_base, sp);
}
