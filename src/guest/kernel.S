/*
 * The process VM's guest kernel. It is copied into guest memory at GL_TEXT by the VMM
 * and must stay position independent: only relative jumps and absolute addresses from
 * layout.h. Guest kernel mode is emulated one instruction at a time on PVM hosts, so
 * everything here is as short as it can be and nothing runs at CPL 0 on a hot path.
 */
#include "layout.h"

#define MSR_STAR	0xc0000081
#define MSR_LSTAR	0xc0000082
#define MSR_FMASK	0xc0000084
/* Flags cleared on syscall entry: TF, DF, IF, AC (as Linux does). */
#define FMASK_BITS	0x47700

	.section .rodata.stoke_guest, "a"
	.balign 4096
	.globl guest_kernel_start
guest_kernel_start:

/*
 * gk_enter: first instruction the vCPU runs, at CPL 0.
 * rdi = user entry, rsi = user stack pointer.
 * Programs the syscall MSRs and drops to CPL 3 with every other register zeroed, as the
 * Linux ELF ABI expects at process entry.
 */
	.globl gk_enter
gk_enter:
	mov	$MSR_STAR, %ecx
	xor	%eax, %eax
	/* SYSRET CS base 0x18 (user code = +16), SYSCALL CS 0x08 */
	mov	$0x00180008, %edx
	wrmsr
	mov	$MSR_LSTAR, %ecx
	mov	$(GL_TEXT + gk_syscall - guest_kernel_start), %eax
	xor	%edx, %edx
	wrmsr
	mov	$MSR_FMASK, %ecx
	mov	$FMASK_BITS, %eax
	wrmsr
	pushq	$GL_SEL_UDATA
	push	%rsi
	pushq	$0x202
	pushq	$GL_SEL_UCODE
	push	%rdi
	xor	%eax, %eax
	xor	%ebx, %ebx
	xor	%ecx, %ecx
	xor	%edx, %edx
	xor	%esi, %esi
	xor	%edi, %edi
	xor	%ebp, %ebp
	xor	%r8d, %r8d
	xor	%r9d, %r9d
	xor	%r10d, %r10d
	xor	%r11d, %r11d
	xor	%r12d, %r12d
	xor	%r13d, %r13d
	xor	%r14d, %r14d
	xor	%r15d, %r15d
	iretq

/*
 * gk_syscall: LSTAR. On PVM hosts `syscall` lands here still at CPL 3; on hardware KVM
 * at CPL 0. Either way one store to the doorbell exits to the VMM, which performs the
 * call and resumes the program at RCX itself (sysretq would #GP on PVM). The store must
 * be a write: a read would re-enter the emulator when the exit completes.
 */
	.balign 64
	.globl gk_syscall
gk_syscall:
	mov	%rax, GL_SYSCALL_DOORBELL
	ud2

/*
 * gk_touch: runs at CPL 3 in a restored VM before it gets its first request, so that
 * the shadow page faults of its working set (about 25 us each on PVM hosts) are taken
 * ahead of the request instead of during it. rsi = ranges (16 bytes each: address,
 * with bit 0 set when the pages are to be written, then a page count), rcx = number
 * of ranges, both non-zero. A write stores back the byte just read: the program is
 * stopped in a system call, so its memory does not change. Ends with one store to the
 * syscall doorbell with rax = GK_TOUCH_DONE; the VMM then puts the registers back.
 */
	.balign 64
	.globl gk_touch
gk_touch:
1:	mov	(%rsi), %rdx
	mov	8(%rsi), %rdi
	add	$16, %rsi
	test	%rdi, %rdi
	jz	4f
2:	mov	%rdx, %rax
	and	$-4096, %rax
	movzbl	(%rax), %r8d
	test	$1, %dl
	jz	3f
	mov	%r8b, (%rax)
3:	add	$4096, %rdx
	dec	%rdi
	jnz	2b
4:	dec	%rcx
	jnz	1b
	mov	$GK_TOUCH_DONE, %rax
	mov	%rax, GL_SYSCALL_DOORBELL
	ud2

/*
 * Exceptions. Each stub pushes a dummy error code where the CPU pushes none, then its
 * vector; gk_fault records the frame in GL_FAULT_BOX and rings the fault doorbell. The
 * VMM treats every exception as fatal to the program (no signal delivery yet).
 */
	.balign 64
gk_fault:
	pop	GL_FAULT_BOX
	pop	GL_FAULT_BOX + 8
	pop	GL_FAULT_BOX + 16
	pop	GL_FAULT_BOX + 24
	pop	GL_FAULT_BOX + 32
	pop	GL_FAULT_BOX + 40
	mov	%rax, GL_FAULT_BOX + 56
	mov	%cr2, %rax
	mov	%rax, GL_FAULT_BOX + 48
	mov	%rax, GL_FAULT_DOORBELL
1:	hlt
	jmp	1b

	.balign 16
	.globl gk_vectors
gk_vectors:
	.set	vec, 0
	.rept	32
	.balign	16
	.if (vec == 8) || (vec == 10) || (vec == 11) || (vec == 12) || (vec == 13) || \
	    (vec == 14) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)
	.else
	pushq	$0
	.endif
	pushq	$vec
	jmp	gk_fault
	.set	vec, vec + 1
	.endr

	.globl guest_kernel_end
guest_kernel_end:
	.section .note.GNU-stack, "", @progbits
