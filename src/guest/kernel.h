/*
 * The guest kernel image (kernel.S) as the VMM sees it: bytes to copy to GL_TEXT and the
 * offsets of its entry points. Offsets, not addresses: the image lives in the VMM's
 * read-only data and runs only inside the guest.
 */
#ifndef STOKE_GUEST_KERNEL_H
#define STOKE_GUEST_KERNEL_H

#include "layout.h"

extern const unsigned char guest_kernel_start[];
extern const unsigned char guest_kernel_end[];
extern const unsigned char gk_enter[];
extern const unsigned char gk_syscall[];
extern const unsigned char gk_vectors[];
extern const unsigned char gk_touch[];

/* Guest-virtual address of a symbol of the image. */
#define GK_ADDR(sym) (GL_TEXT + (unsigned long)((sym) - guest_kernel_start))
/* Exception stubs are 16 bytes apart. */
#define GK_VECTOR_STUB_SIZE 16

#endif
