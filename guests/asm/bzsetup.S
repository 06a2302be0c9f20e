/*
 * bzsetup.S - minimal bzImage "setup" part wrapped around linux64.bin.
 *
 *   linux64.bzImage = bzsetup.bin (4 sectors) + linux64.bin
 *
 * The result is a valid bzImage (boot protocol 2.12, LOADED_HIGH, 64-bit
 * entry at code32_start + 0x200) for two kinds of boot loaders:
 *
 *  - a VMM that implements the 64-bit boot protocol (Ferrovisor): it only
 *    reads the setup header below, loads linux64.bin at 1 MiB and enters it
 *    at +0x200 in long mode with its own boot_params; nothing here runs.
 *
 *  - a BIOS-style loader (QEMU -kernel with SeaBIOS/qboot): it copies this
 *    setup to real_addr (0x10000 for QEMU), fills in cmd_line_ptr,
 *    ramdisk_image/size etc. and jumps to real_addr + 0x200 in real mode.
 *    The code below then does what Linux's setup does, minimally:
 *      1. copies the setup header into a fresh zero page at BOOT_PARAMS,
 *      2. collects the e820 map with int 0x15/AX=0xe820,
 *      3. builds an identity map of the first 1 GiB (2 MiB pages),
 *      4. goes real mode -> 32-bit protected mode -> long mode,
 *      5. jumps to code32_start + 0x200 with RSI = BOOT_PARAMS.
 *    This is how linux64.S is verified under QEMU, which has no 64-bit
 *    entry of its own for bzImages.
 *
 * SYSSIZE (16-byte paragraphs of linux64.bin) and INIT_SIZE (bytes of memory
 * linux64 needs, .bss included) are absolute symbols given by build.sh.
 */

	.equ SETUP_SECTS, 3		/* sectors after the boot sector */
	.equ SETUP_SIZE, (SETUP_SECTS + 1) * 512

	/* Scratch memory below the EBDA, unused by SeaBIOS/qboot and QEMU. */
	.equ PAGE_TABLES, 0x70000	/* PML4, PDPT, PD: 3 pages */
	.equ BOOT_PARAMS, 0x74000	/* the zero page handed to the kernel */
	.equ SCRATCH_SEG, 0x7000	/* real-mode segment covering both */
	.equ SCRATCH_SIZE, 0x5000

	.equ SEL_CODE64, 0x08
	.equ SEL_DATA, 0x10
	.equ SEL_CODE32, 0x18

	.equ SMAP, 0x534d4150		/* "SMAP" */
	.equ E820_MAX, 128

	.section .setup, "ax"
	.code16

/* ------------------------------------------------------------------ */
/* Boot sector (sector 0): unused, only the header at its end counts.   */
	.globl _start
_start:
	.org 0x1f1, 0
setup_sects:		.byte SETUP_SECTS
root_flags:		.word 0
syssize:		.long SYSSIZE
ram_size:		.word 0
vid_mode:		.word 0xffff	/* "normal" */
root_dev:		.word 0
boot_flag:		.word 0xaa55

/* ------------------------------------------------------------------ */
/* Setup header proper, entered here (offset 0x200) in real mode.       */
	.org 0x200
	.byte 0xeb, start_of_setup - 1f	/* jmp short start_of_setup */
1:
	.org 0x202
header:			.ascii "HdrS"
version:		.word 0x020c
realmode_swtch:		.long 0
start_sys_seg:		.word 0
kernel_version:		.word 0
type_of_loader:		.byte 0
loadflags:		.byte 0x01	/* LOADED_HIGH */
setup_move_size:	.word 0
code32_start:		.long 0x100000
ramdisk_image:		.long 0
ramdisk_size:		.long 0
bootsect_kludge:	.long 0
heap_end_ptr:		.word 0
ext_loader_ver:		.byte 0
ext_loader_type:	.byte 0
cmd_line_ptr:		.long 0
initrd_addr_max:	.long 0x37ffffff
kernel_alignment:	.long 0x200000
relocatable_kernel:	.byte 0
min_alignment:		.byte 0
xloadflags:		.word 0x0001	/* XLF_KERNEL_64: has the 64-bit entry */
cmdline_size:		.long 0x7ff
hardware_subarch:	.long 0
hardware_subarch_data:	.quad 0
payload_offset:		.long 0
payload_length:		.long 0
setup_data:		.quad 0
pref_address:		.quad 0x100000
init_size:		.long INIT_SIZE
handover_offset:	.long 0
kernel_info_offset:	.long 0
hdr_end:
	.org 0x26c			/* assert: header is 0x1f1..0x26c */

/* ------------------------------------------------------------------ */
start_of_setup:
	cli
	cld
	/* Entered at CS = DS + 0x20, IP = 0: reload CS = DS so that the
	 * offsets of this file are valid in every segment register. */
	pushw %ds
	pushw $1f
	lret
1:
	movw %ds, %ax
	movw %ax, %es

	/* EBX = linear address of this setup (kept until long mode). */
	xorl %ebx, %ebx
	movw %ds, %bx
	shll $4, %ebx

	/* ---- zero the page tables and the zero page ---- */
	pushw %es
	movw $SCRATCH_SEG, %ax
	movw %ax, %es
	xorw %di, %di
	xorl %eax, %eax
	movw $(SCRATCH_SIZE / 4), %cx
	rep stosl

	/* ---- identity map 0..1 GiB: PML4[0] -> PDPT, PDPT[0] -> PD ---- */
	movl $(PAGE_TABLES + 0x1000 + 0x3), %es:0x0000	/* present|rw */
	movl $(PAGE_TABLES + 0x2000 + 0x3), %es:0x1000
	movw $0x2000, %di
	movl $0x83, %eax			/* present|rw|2MiB page */
	movw $512, %cx
2:	movl %eax, %es:(%di)
	addl $0x200000, %eax
	addw $8, %di
	loop 2b

	/* ---- copy the setup header (with what the loader filled in) ---- */
	movw $(BOOT_PARAMS - PAGE_TABLES + 0x1f1), %di
	movw $0x1f1, %si
	movw $(hdr_end - 0x1f1), %cx
	rep movsb

	/* ---- e820 map into boot_params.e820_table (0x2d0) ---- */
	movw $(BOOT_PARAMS - PAGE_TABLES + 0x2d0), %di
	xorw %bp, %bp				/* BP = entry count */
	pushl %ebx
	xorl %ebx, %ebx				/* continuation value */
3:	movl $0xe820, %eax
	movl $SMAP, %edx
	movl $20, %ecx
	int $0x15
	jc 4f
	cmpl $SMAP, %eax
	jne 4f
	incw %bp
	addw $20, %di
	cmpw $E820_MAX, %bp
	jae 4f
	testl %ebx, %ebx
	jnz 3b
4:	popl %ebx
	movw %bp, %ax
	movb %al, %es:(BOOT_PARAMS - PAGE_TABLES + 0x1e8)
	popw %es

	/* ---- patch linear addresses into the GDT descriptor and far ptrs ---- */
	leal gdt(%ebx), %eax
	movl %eax, gdt_desc + 2
	leal pm32(%ebx), %eax
	movl %eax, pm32_ptr
	leal lm64(%ebx), %eax
	movl %eax, lm64_ptr

	/* ---- real mode -> 32-bit protected mode ---- */
	lgdtl gdt_desc
	movl %cr0, %eax
	orl $1, %eax				/* PE */
	movl %eax, %cr0
	ljmpl *pm32_ptr

	.code32
pm32:
	movw $SEL_DATA, %ax
	movw %ax, %ds
	movw %ax, %es
	movw %ax, %fs
	movw %ax, %gs
	movw %ax, %ss

	/* ---- protected mode -> long mode ---- */
	movl %cr4, %eax
	orl $0x20, %eax				/* PAE */
	movl %eax, %cr4
	movl $PAGE_TABLES, %eax
	movl %eax, %cr3
	movl $0xc0000080, %ecx			/* EFER */
	rdmsr
	orl $0x100, %eax			/* LME */
	wrmsr
	movl %cr0, %eax
	orl $0x80000000, %eax			/* PG */
	movl %eax, %cr0
	ljmp *lm64_ptr(%ebx)

	.code64
lm64:
	movl $BOOT_PARAMS, %esi
	movl 0x214(%rsi), %eax			/* code32_start */
	addq $0x200, %rax			/* 64-bit entry */
	jmp *%rax

/* ------------------------------------------------------------------ */
	.balign 8
gdt:
	.quad 0
	.quad 0x00af9a000000ffff		/* 0x08: 64-bit code */
	.quad 0x00cf92000000ffff		/* 0x10: flat data */
	.quad 0x00cf9a000000ffff		/* 0x18: 32-bit code */
gdt_end:
gdt_desc:
	.word gdt_end - gdt - 1
	.long 0					/* linear base, patched */
pm32_ptr:
	.long 0					/* linear offset, patched */
	.word SEL_CODE32
lm64_ptr:
	.long 0					/* linear offset, patched */
	.word SEL_CODE64

	.org SETUP_SIZE, 0			/* pad (and assert the size) */
