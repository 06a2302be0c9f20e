/*
 * pvh-hello.S - the smallest useful PVH guest, for boot-time benchmarks.
 *
 * A 64-bit ELF (so QEMU's -kernel takes the PVH path) whose PVH note
 * (name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY = 18, desc = u32 physical entry
 * address) points at 32-bit code. The PVH boot ABI enters that code in
 * 32-bit protected mode, paging off, flat segments, EBX = hvm_start_info
 * (unused here).
 *
 * It prints "hello" on COM1, then powers off:
 *   1. outw 0x2000 to port 0x604: SLP_EN with SLP_TYP 0 into QEMU q35's ACPI
 *      PM1a_CNT (ich9 LPC) - a clean power-off, QEMU exits with status 0;
 *   2. outb 0 to port 0xf4: isa-debug-exit (exit status 1) for machines
 *      without that port (microvm) or VMMs that only offer debug-exit;
 *   3. hlt forever if neither was there.
 */

	.equ COM1, 0x3f8
	.equ COM1_LSR, COM1 + 5
	.equ LSR_THRE, 0x20
	.equ PM1A_CNT, 0x604
	.equ SLP_EN, 0x2000
	.equ DEBUG_EXIT_PORT, 0xf4

	.equ XEN_ELFNOTE_PHYS32_ENTRY, 18

/* ------------------------------------------------------------------ */
/* PVH entry note.                                                      */
	.section .note.Xen, "a", @note
	.balign 4
	.long 2f - 1f			/* namesz (including the NUL) */
	.long 4f - 3f			/* descsz */
	.long XEN_ELFNOTE_PHYS32_ENTRY	/* type */
1:	.asciz "Xen"
2:	.balign 4
3:	.long pvh_start32		/* desc: physical entry address */
4:	.balign 4

/* ------------------------------------------------------------------ */
	.text
	.code32
	.globl pvh_start32
pvh_start32:
	cli
	cld
	movl $msg_hello, %esi
	movw $COM1_LSR, %dx
1:	movb (%esi), %bl		/* next character */
	testb %bl, %bl
	jz 3f
2:	inb %dx, %al			/* wait for THR empty */
	testb $LSR_THRE, %al
	jz 2b
	movb %bl, %al
	movw $COM1, %dx
	outb %al, %dx
	movw $COM1_LSR, %dx
	incl %esi
	jmp 1b
3:
	/* ACPI power-off on q35 (PM1a_CNT.SLP_EN, SLP_TYP 0 = S5). */
	movw $PM1A_CNT, %dx
	movw $SLP_EN, %ax
	outw %ax, %dx

	/* Fallback: isa-debug-exit. */
	xorb %al, %al
	outb %al, $DEBUG_EXIT_PORT

4:	hlt
	jmp 4b

	.section .rodata
msg_hello:	.asciz "hello\n"
