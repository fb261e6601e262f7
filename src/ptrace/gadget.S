/* The injection gadget: every space has this code at the same address
 * because it is part of libdetux, which every space inherits from the
 * master.  The supervisor points a stopped space's rip here to make one
 * system call on its behalf; the int3 hands control back. */
	.text
	.globl detux_gadget
	.hidden detux_gadget
	.type detux_gadget, @function
	.p2align 4
detux_gadget:
	syscall
	int3
	.size detux_gadget, .-detux_gadget

/* The space-side stub of a detux call (see src/abi.h). */
	.globl detux_trap
	.hidden detux_trap
	.type detux_trap, @function
	.p2align 4
detux_trap:
	/* long detux_trap(op, child, flags, addr, size, child_addr) */
	movq %rcx, %r10
	movl $0xde7, %eax
	syscall
	ret
	.size detux_trap, .-detux_trap
	.section .note.GNU-stack,"",@progbits
