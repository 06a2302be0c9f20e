/*
 * multiboot.S - multiboot v1 test guest for Ferrovisor's ELF/multiboot loader.
 *
 * Built as a 32-bit ELF (as --32, ld -m elf_i386, see multiboot.ld) linked
 * at 1 MiB. The multiboot header has flags = 0, so the boot loader loads the
 * image through the ELF program headers and enters _start with:
 *   - 32-bit protected mode, paging off, flat segments
 *   - EAX = 0x2BADB002 (boot loader magic)
 *   - EBX = physical address of the multiboot information structure
 *
 * The guest reports what it received on COM1 and exits through the
 * isa-debug-exit device at port 0xf4 (QEMU exit status = (value << 1) | 1):
 *   mb: magic ok
 *   mb: flags=0x........
 *   mb: mem_lower=<KiB> mem_upper=<KiB>         (flags bit 0)
 *   mb: cmdline=<string>                        (flags bit 2)
 *   mb: mods=<count>                            (flags bit 3)
 *   mb: mod0 size=<bytes> head=<text>           (flags bit 3, count > 0)
 *   mb: PASS                                    -> out 0 to 0xf4
 * or, on a wrong magic:
 *   mb: FAIL magic                              -> out 1 to 0xf4
 *
 * Only plain port I/O and ordinary integer instructions are used (no int3,
 * popcnt, xsave, ...), the host may emulate every instruction.
 */

	.equ MB_HEADER_MAGIC, 0x1BADB002
	.equ MB_HEADER_FLAGS, 0
	.equ MB_BOOT_MAGIC, 0x2BADB002

	.equ COM1, 0x3f8
	.equ COM1_LSR, (COM1 + 5)
	.equ LSR_THRE, 0x20
	.equ DEBUG_EXIT_PORT, 0xf4

/* struct multiboot_info offsets */
	.equ MBI_FLAGS, 0
	.equ MBI_MEM_LOWER, 4
	.equ MBI_MEM_UPPER, 8
	.equ MBI_CMDLINE, 16
	.equ MBI_MODS_COUNT, 20
	.equ MBI_MODS_ADDR, 24

/* struct multiboot_mod_list offsets */
	.equ MOD_START, 0
	.equ MOD_END, 4

	.equ HEAD_BYTES, 16

	.code32

/* ------------------------------------------------------------------ */
/* Multiboot header: must be 32-bit aligned within the first 8 KiB.     */
	.section .multiboot, "a"
	.balign 4
mb_header:
	.long MB_HEADER_MAGIC
	.long MB_HEADER_FLAGS
	.long -(MB_HEADER_MAGIC + MB_HEADER_FLAGS)	/* checksum */

/* ------------------------------------------------------------------ */
	.text
	.globl _start
_start:
	cli
	cld
	movl $stack_top, %esp
	movl %ebx, %ebp			/* EBP = multiboot info (kept throughout) */

	cmpl $MB_BOOT_MAGIC, %eax
	je 1f
	movl $msg_fail_magic, %esi
	call puts
	movb $1, %al
	jmp exit
1:
	movl $msg_magic_ok, %esi
	call puts

	/* mb: flags=0x... */
	movl $msg_flags, %esi
	call puts
	movl MBI_FLAGS(%ebp), %eax
	call puthex32
	call newline

	/* bit 0: mem_lower / mem_upper valid */
	testl $(1 << 0), MBI_FLAGS(%ebp)
	jz 2f
	movl $msg_mem_lower, %esi
	call puts
	movl MBI_MEM_LOWER(%ebp), %eax
	call putdec32
	movl $msg_mem_upper, %esi
	call puts
	movl MBI_MEM_UPPER(%ebp), %eax
	call putdec32
	call newline
2:
	/* bit 2: cmdline valid */
	testl $(1 << 2), MBI_FLAGS(%ebp)
	jz 3f
	movl $msg_cmdline, %esi
	call puts
	movl MBI_CMDLINE(%ebp), %esi
	call puts
	call newline
3:
	/* bit 3: mods_count / mods_addr valid */
	testl $(1 << 3), MBI_FLAGS(%ebp)
	jz 4f
	movl $msg_mods, %esi
	call puts
	movl MBI_MODS_COUNT(%ebp), %eax
	call putdec32
	call newline

	cmpl $0, MBI_MODS_COUNT(%ebp)
	je 4f
	movl MBI_MODS_ADDR(%ebp), %ebx	/* EBX = &mods[0] */
	movl $msg_mod0_size, %esi
	call puts
	movl MOD_END(%ebx), %eax
	subl MOD_START(%ebx), %eax	/* size = mod_end - mod_start */
	movl %eax, %ecx
	call putdec32
	movl $msg_head, %esi
	call puts
	movl MOD_START(%ebx), %esi
	cmpl $HEAD_BYTES, %ecx
	jbe 5f
	movl $HEAD_BYTES, %ecx
5:	call puttext
	call newline
4:
	movl $msg_pass, %esi
	call puts
	xorb %al, %al

/* Write AL to the debug-exit port, then halt forever. */
exit:
	outb %al, $DEBUG_EXIT_PORT
6:	cli
	hlt
	jmp 6b

/* ------------------------------------------------------------------ */
/* Serial helpers. All preserve every register except as noted.        */

/* putc: write AL to COM1, polling LSR.THRE. */
putc:
	pushl %edx
	pushl %eax
	movw $COM1_LSR, %dx
1:	inb %dx, %al
	testb $LSR_THRE, %al
	jz 1b
	popl %eax
	movw $COM1, %dx
	outb %al, %dx
	popl %edx
	ret

newline:
	pushl %eax
	movb $10, %al
	call putc
	popl %eax
	ret

/* puts: write the NUL-terminated string at ESI. */
puts:
	pushl %esi
	pushl %eax
1:	lodsb
	testb %al, %al
	jz 2f
	call putc
	jmp 1b
2:	popl %eax
	popl %esi
	ret

/* puttext: write ECX bytes at ESI, non-printable ones as '.'. */
puttext:
	pushl %esi
	pushl %ecx
	pushl %eax
	jecxz 3f
1:	lodsb
	cmpb $0x20, %al
	jb 2f
	cmpb $0x7e, %al
	jbe 4f
2:	movb $0x2e, %al
4:	call putc
	loop 1b
3:	popl %eax
	popl %ecx
	popl %esi
	ret

/* puthex32: write EAX as 8 hex digits. */
puthex32:
	pushl %eax
	pushl %ebx
	pushl %ecx
	movl %eax, %ebx
	movl $8, %ecx
1:	roll $4, %ebx
	movl %ebx, %eax
	andl $0xf, %eax
	movb hexdigits(%eax), %al
	call putc
	loop 1b
	popl %ecx
	popl %ebx
	popl %eax
	ret

/* putdec32: write EAX as an unsigned decimal number. */
putdec32:
	pushl %eax
	pushl %ecx
	pushl %edx
	pushl %ebx
	movl $10, %ebx
	xorl %ecx, %ecx			/* digit count */
1:	xorl %edx, %edx
	divl %ebx			/* EAX = EAX / 10, EDX = remainder */
	pushl %edx
	incl %ecx
	testl %eax, %eax
	jnz 1b
2:	popl %eax
	addb $0x30, %al
	call putc
	loop 2b
	popl %ebx
	popl %edx
	popl %ecx
	popl %eax
	ret

/* ------------------------------------------------------------------ */
	.section .rodata
hexdigits:	.ascii "0123456789abcdef"
msg_magic_ok:	.asciz "mb: magic ok\n"
msg_fail_magic:	.asciz "mb: FAIL magic\n"
msg_flags:	.asciz "mb: flags=0x"
msg_mem_lower:	.asciz "mb: mem_lower="
msg_mem_upper:	.asciz " mem_upper="
msg_cmdline:	.asciz "mb: cmdline="
msg_mods:	.asciz "mb: mods="
msg_mod0_size:	.asciz "mb: mod0 size="
msg_head:	.asciz " head="
msg_pass:	.asciz "mb: PASS\n"

/* ------------------------------------------------------------------ */
	.bss
	.balign 16
stack:	.skip 4096
stack_top:
