/*
 * linux64.S - test guest for the Linux x86-64 boot protocol (64-bit entry).
 *
 * Linked as an ELF64 at physical 0x1000000 (16 MiB, where vmlinux puts
 * startup_64), WITHOUT a PVH note, so a loader has to treat it like a Linux
 * vmlinux. objcopy -O binary of the same ELF (linux64.bin) is the payload of a
 * synthetic bzImage, whose 64-bit entry is "load address + 0x200". Hence:
 *
 *   offset 0x000  startup_64: the ELF entry; just jumps to offset 0x200
 *   offset 0x200  entry64: the bzImage 64-bit entry (and the real code)
 *
 * All code and data references are RIP-relative, so the image runs wherever
 * it is loaded (16 MiB as an ELF, usually 1 MiB inside a bzImage). The stack
 * lives in .bss, right after the image (not part of linux64.bin: a bzImage
 * wrapper must reserve it through init_size; see `linux64_mem_size` below).
 *
 * Entry state (Linux 64-bit boot protocol): long mode, paging on with an
 * identity map covering at least the first 1 GiB, flat segments, interrupts
 * off, RSI = physical address of struct boot_params (the "zero page").
 *
 * Output on COM1, then isa-debug-exit port 0xf4 (value 0 = PASS, 1 = FAIL):
 *   linux64: entered
 *   linux64: e820 addr=0x... size=0x... type=N     (one line per entry)
 *   linux64: cmdline=<string>
 *   linux64: initrd addr=0x... size=<decimal>
 *   linux64: initrd head=<first up to 16 bytes, non-printable as '.'>
 *   linux64: PASS
 * or "linux64: FAIL hdr" if the setup header magic "HdrS" is missing.
 *
 * Only plain port I/O and ordinary integer instructions are used.
 */

	.equ COM1, 0x3f8
	.equ COM1_LSR, COM1 + 5
	.equ LSR_THRE, 0x20
	.equ DEBUG_EXIT_PORT, 0xf4

/* struct boot_params offsets (arch/x86/include/uapi/asm/bootparam.h) */
	.equ BP_EXT_RAMDISK_IMAGE, 0x0c0	/* u32: high 32 bits */
	.equ BP_EXT_RAMDISK_SIZE, 0x0c4		/* u32: high 32 bits */
	.equ BP_EXT_CMD_LINE_PTR, 0x0c8		/* u32: high 32 bits */
	.equ BP_E820_ENTRIES, 0x1e8		/* u8 */
	.equ BP_HDR_MAGIC, 0x202		/* u32 "HdrS" */
	.equ BP_RAMDISK_IMAGE, 0x218		/* u32 */
	.equ BP_RAMDISK_SIZE, 0x21c		/* u32 */
	.equ BP_CMD_LINE_PTR, 0x228		/* u32 */
	.equ BP_E820_TABLE, 0x2d0		/* struct boot_e820_entry[128] */

	.equ HDRS_MAGIC, 0x53726448		/* "HdrS" little endian */
	.equ E820_ENTRY_SIZE, 20		/* u64 addr, u64 size, u32 type */
	.equ E820_MAX_ZEROPAGE, 128
	.equ HEAD_BYTES, 16

	.code64
	.section .text.head, "ax"

/* ------------------------------------------------------------------ */
/* Offset 0: ELF entry point (0x1000000). */
	.globl startup_64
startup_64:
	jmp entry64

/* Offset 0x200: bzImage 64-bit entry point. */
	.org 0x200, 0x90
	.globl entry64
entry64:
	cli
	cld
	leaq stack_top(%rip), %rsp
	movq %rsi, %r12			/* R12 = boot_params, kept throughout */

	leaq msg_entered(%rip), %rsi
	call puts

	/* The setup header must carry the "HdrS" magic. */
	cmpl $HDRS_MAGIC, BP_HDR_MAGIC(%r12)
	je 1f
	leaq msg_fail_hdr(%rip), %rsi
	call puts
	movb $1, %al
	jmp exit
1:
	/* ---- e820 table ---- */
	movzbl BP_E820_ENTRIES(%r12), %r13d	/* R13 = entries left */
	cmpl $E820_MAX_ZEROPAGE, %r13d
	jbe 2f
	movl $E820_MAX_ZEROPAGE, %r13d
2:	leaq BP_E820_TABLE(%r12), %rbx		/* RBX = current entry */
3:	testl %r13d, %r13d
	jz 4f
	leaq msg_e820_addr(%rip), %rsi
	call puts
	movq 0(%rbx), %rax
	call puthex64
	leaq msg_size_hex(%rip), %rsi
	call puts
	movq 8(%rbx), %rax
	call puthex64
	leaq msg_type(%rip), %rsi
	call puts
	movl 16(%rbx), %eax
	call putdec64
	call newline
	addq $E820_ENTRY_SIZE, %rbx
	decl %r13d
	jmp 3b
4:
	/* ---- command line: cmd_line_ptr | ext_cmd_line_ptr << 32 ---- */
	leaq msg_cmdline(%rip), %rsi
	call puts
	movl BP_CMD_LINE_PTR(%r12), %eax
	movl BP_EXT_CMD_LINE_PTR(%r12), %edx
	shlq $32, %rdx
	orq %rdx, %rax
	jz 5f				/* no command line */
	movq %rax, %rsi
	call puts
5:	call newline

	/* ---- initrd: ramdisk_image/size with their ext_ high halves ---- */
	movl BP_RAMDISK_IMAGE(%r12), %r14d
	movl BP_EXT_RAMDISK_IMAGE(%r12), %eax
	shlq $32, %rax
	orq %rax, %r14			/* R14 = initrd address */
	movl BP_RAMDISK_SIZE(%r12), %r15d
	movl BP_EXT_RAMDISK_SIZE(%r12), %eax
	shlq $32, %rax
	orq %rax, %r15			/* R15 = initrd size */

	leaq msg_initrd_addr(%rip), %rsi
	call puts
	movq %r14, %rax
	call puthex64
	leaq msg_size_dec(%rip), %rsi
	call puts
	movq %r15, %rax
	call putdec64
	call newline

	leaq msg_initrd_head(%rip), %rsi
	call puts
	testq %r14, %r14
	jz 6f				/* no initrd: empty head */
	movq %r14, %rsi
	movq %r15, %rcx
	cmpq $HEAD_BYTES, %rcx
	jbe 7f
	movl $HEAD_BYTES, %ecx
7:	call puttext
6:	call newline

	leaq msg_pass(%rip), %rsi
	call puts
	xorb %al, %al

/* Write AL to the debug-exit port, then halt forever. */
exit:
	outb %al, $DEBUG_EXIT_PORT
8:	cli
	hlt
	jmp 8b

/* ------------------------------------------------------------------ */
/* Serial helpers. All preserve every register they do not return.     */

/* putc: write AL to COM1, polling LSR.THRE. */
putc:
	pushq %rdx
	pushq %rax
	movw $COM1_LSR, %dx
1:	inb %dx, %al
	testb $LSR_THRE, %al
	jz 1b
	popq %rax
	movw $COM1, %dx
	outb %al, %dx
	popq %rdx
	ret

newline:
	pushq %rax
	movb $10, %al
	call putc
	popq %rax
	ret

/* puts: write the NUL-terminated string at RSI. */
puts:
	pushq %rsi
	pushq %rax
1:	lodsb
	testb %al, %al
	jz 2f
	call putc
	jmp 1b
2:	popq %rax
	popq %rsi
	ret

/* puttext: write RCX bytes at RSI, non-printable ones as '.'. */
puttext:
	pushq %rsi
	pushq %rcx
	pushq %rax
	testq %rcx, %rcx
	jz 3f
1:	lodsb
	cmpb $0x20, %al
	jb 2f
	cmpb $0x7e, %al
	jbe 4f
2:	movb $0x2e, %al			/* '.' */
4:	call putc
	decq %rcx
	jnz 1b
3:	popq %rax
	popq %rcx
	popq %rsi
	ret

/* puthex64: write RAX in hex without leading zeros (at least one digit). */
puthex64:
	pushq %rax
	pushq %rbx
	pushq %rcx
	pushq %rdx
	pushq %rdi
	movq %rax, %rbx
	leaq hexdigits(%rip), %rdi
	movl $16, %ecx
	xorl %edx, %edx			/* EDX != 0 once a digit was printed */
1:	rolq $4, %rbx
	movl %ebx, %eax
	andl $0xf, %eax
	jnz 2f
	testl %edx, %edx		/* skip leading zeros ... */
	jnz 2f
	cmpl $1, %ecx			/* ... but always print the last digit */
	jne 3f
2:	movl $1, %edx
	movb (%rdi,%rax), %al
	call putc
3:	decl %ecx
	jnz 1b
	popq %rdi
	popq %rdx
	popq %rcx
	popq %rbx
	popq %rax
	ret

/* putdec64: write RAX as an unsigned decimal number. */
putdec64:
	pushq %rax
	pushq %rbx
	pushq %rcx
	pushq %rdx
	movl $10, %ebx
	xorl %ecx, %ecx			/* digit count */
1:	xorl %edx, %edx
	divq %rbx			/* RAX = RAX / 10, RDX = remainder */
	pushq %rdx
	incl %ecx
	testq %rax, %rax
	jnz 1b
2:	popq %rax
	addb $0x30, %al			/* '0' */
	call putc
	decl %ecx
	jnz 2b
	popq %rdx
	popq %rcx
	popq %rbx
	popq %rax
	ret

/* ------------------------------------------------------------------ */
	.section .rodata
hexdigits:		.ascii "0123456789abcdef"
msg_entered:		.asciz "linux64: entered\n"
msg_fail_hdr:		.asciz "linux64: FAIL hdr\n"
msg_e820_addr:		.asciz "linux64: e820 addr=0x"
msg_size_hex:		.asciz " size=0x"
msg_type:		.asciz " type="
msg_cmdline:		.asciz "linux64: cmdline="
msg_initrd_addr:	.asciz "linux64: initrd addr=0x"
msg_size_dec:		.asciz " size="
msg_initrd_head:	.asciz "linux64: initrd head="
msg_pass:		.asciz "linux64: PASS\n"

/* ------------------------------------------------------------------ */
	.bss
	.balign 16
stack:	.skip 8192
stack_top:
