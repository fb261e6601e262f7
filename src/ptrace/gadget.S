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
	/* long detux_trap(op, child, flags, addr, size, child_addr)
	 * The answer comes in the slot at the stack pointer of the call, which
	 * the supervisor writes unless the answer is 0, when rax is -ENOSYS (the
	 * call ran on); otherwise rax is the answer (src/abi.h). */
	movq %rcx, %r10
	pushq $0
	movl $0xde7, %eax
	syscall
	popq %rcx		/* syscall clobbered rcx anyway */
	cmpq $-38, %rax
	cmoveq %rcx, %rax
	ret
	.size detux_trap, .-detux_trap
/* Where a space the master made starts: the supervisor points rip here,
 * with rsp at the top of the stack it shares with the master (below it, the
 * supervisor's dead frames, already zeroed), rdi = the function to run
 * (never returns: it jumps back into the dput() that made the space) and
 * rsi = 1 if the CPU has AVX, 2 if AVX-512 as well.  Nothing the supervisor
 * left in a register may reach the program: the vector, mask and x87
 * registers are zeroed (control words kept: they are the program's), then
 * every general register but rsp.  vzeroall clears zmm0-15 only; glibc's
 * string functions use zmm16-31, which held the supervisor's bytes. */
	.globl detux_space_entry
	.hidden detux_space_entry
	.type detux_space_entry, @function
	.p2align 4
detux_space_entry:
	movq %rdi, %r11
	testq %rsi, %rsi
	jz 1f
	cmpq $2, %rsi
	jb 3f
	vpxord %zmm16, %zmm16, %zmm16
	vpxord %zmm17, %zmm17, %zmm17
	vpxord %zmm18, %zmm18, %zmm18
	vpxord %zmm19, %zmm19, %zmm19
	vpxord %zmm20, %zmm20, %zmm20
	vpxord %zmm21, %zmm21, %zmm21
	vpxord %zmm22, %zmm22, %zmm22
	vpxord %zmm23, %zmm23, %zmm23
	vpxord %zmm24, %zmm24, %zmm24
	vpxord %zmm25, %zmm25, %zmm25
	vpxord %zmm26, %zmm26, %zmm26
	vpxord %zmm27, %zmm27, %zmm27
	vpxord %zmm28, %zmm28, %zmm28
	vpxord %zmm29, %zmm29, %zmm29
	vpxord %zmm30, %zmm30, %zmm30
	vpxord %zmm31, %zmm31, %zmm31
	kxorw %k0, %k0, %k0
	kxorw %k1, %k1, %k1
	kxorw %k2, %k2, %k2
	kxorw %k3, %k3, %k3
	kxorw %k4, %k4, %k4
	kxorw %k5, %k5, %k5
	kxorw %k6, %k6, %k6
	kxorw %k7, %k7, %k7
3:	vzeroall
	jmp 2f
1:	pxor %xmm0, %xmm0
	pxor %xmm1, %xmm1
	pxor %xmm2, %xmm2
	pxor %xmm3, %xmm3
	pxor %xmm4, %xmm4
	pxor %xmm5, %xmm5
	pxor %xmm6, %xmm6
	pxor %xmm7, %xmm7
	pxor %xmm8, %xmm8
	pxor %xmm9, %xmm9
	pxor %xmm10, %xmm10
	pxor %xmm11, %xmm11
	pxor %xmm12, %xmm12
	pxor %xmm13, %xmm13
	pxor %xmm14, %xmm14
	pxor %xmm15, %xmm15
2:	subq $16, %rsp
	fnstcw (%rsp)
	fninit			/* empties the x87 stack; the registers keep their bits */
	fldz
	fldz
	fldz
	fldz
	fldz
	fldz
	fldz
	fldz			/* now all eight hold zero */
	fninit
	fldcw (%rsp)
	movq $0, (%rsp)
	addq $16, %rsp
	xorl %eax, %eax
	xorl %ebx, %ebx
	xorl %ecx, %ecx
	xorl %edx, %edx
	xorl %esi, %esi
	xorl %edi, %edi
	xorl %ebp, %ebp
	xorl %r8d, %r8d
	xorl %r9d, %r9d
	xorl %r10d, %r10d
	xorl %r12d, %r12d
	xorl %r13d, %r13d
	xorl %r14d, %r14d
	xorl %r15d, %r15d
	call *%r11
	ud2
	.size detux_space_entry, .-detux_space_entry

	.section .note.GNU-stack,"",@progbits
