/*
 * Guest address-space layout of the process VM, shared by the guest kernel (assembly)
 * and the VMM. Guest-virtual equals guest-physical everywhere except the two doorbell
 * pages, which point at guest-physical addresses no memory slot backs, so a store to
 * them leaves the guest as one KVM_EXIT_MMIO.
 *
 * The first 2 MiB are mapped with 4 KiB pages and belong to the guest kernel; the rest
 * of guest memory is mapped once, user-accessible, with 2 MiB pages, because editing a
 * present page-table entry later is not seen by this machine's shadow MMU (see
 * docs/vmm.md).
 */
#ifndef STOKE_GUEST_LAYOUT_H
#define STOKE_GUEST_LAYOUT_H

#define GL_GDT			0x1000	/* kernel: GDT */
#define GL_SYSCALL_DOORBELL	0x2000	/* user: LSTAR stub stores RAX here */
#define GL_FAULT_DOORBELL	0x3000	/* kernel: exception handler stores here */
#define GL_IDT			0x4000	/* kernel: 256 gates */
#define GL_TSS			0x5000	/* kernel: 64-bit TSS (RSP0) */
#define GL_FAULT_BOX		0x5800	/* kernel: vector, error, rip, cs, rflags, rsp, cr2 */
#define GL_PML4			0x6000
#define GL_PDPT			0x7000
#define GL_PD			0x8000	/* four page directories: up to 4 GiB */
#define GL_PT_LOW		0xc000	/* 4 KiB page table for the first 2 MiB */
#define GL_TEXT			0x10000	/* guest kernel code, user-readable (stub runs at CPL 3) */
#define GL_TEXT_SIZE		0x4000
#define GL_VVAR			0x18000	/* user read-only: clock data for the vDSO */
#define GL_TOUCH		0x19000	/* user read-only: page ranges for gk_touch */
#define GL_TOUCH_SIZE		0x7000
#define GL_STACK_LO		0x20000	/* kernel stack for exceptions */
#define GL_STACK_TOP		0x30000
#define GL_VDSO			0x40000	/* user read-execute: the vDSO image */
#define GL_VDSO_SIZE		0x10000
#define GL_TRACK_PT		0x100000	/* page tables of a VM recording its working set */
#define GL_TRACK_PT_SIZE	0x100000	/* 256 of them: the first 512 MiB of user memory */
#define GL_KERNEL_END		0x200000	/* user memory starts here */

/* Unbacked guest-physical pages behind the doorbells (below the 4 GiB PCI hole). */
#define GL_DOORBELL_GPA		0xf0000000
#define GL_MAX_MEMORY		0xe0000000

/* rax of gk_touch's final doorbell store: no Linux system call has this number. */
#define GK_TOUCH_DONE		0x746f756368

/* Segment selectors: GDT entries 1..5 and the TSS at 6 (two slots). */
#define GL_SEL_KCODE		0x08
#define GL_SEL_KDATA		0x10
#define GL_SEL_UCODE32		0x1b
#define GL_SEL_UDATA		0x23
#define GL_SEL_UCODE		0x2b
#define GL_SEL_TSS		0x30

#endif
