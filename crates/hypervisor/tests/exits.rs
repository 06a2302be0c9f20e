//! Tier-2 tests: tiny hand-assembled real-mode guests on real KVM, one per
//! exit path the VMM serves.

use hypervisor::{Hypervisor, Vcpu, VcpuExit, Vm};

const MEM_SIZE: usize = 0x10000;
const CODE: u64 = 0x1000;

/// Opens KVM, or says why not; under `CI=true` a missing /dev/kvm fails the test.
fn kvm() -> Option<Hypervisor> {
    match Hypervisor::open() {
        Ok(hv) => Some(hv),
        Err(e) => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(!ci, "KVM is required under CI=true: {e}");
            eprintln!("KVM test not run: {e}");
            None
        }
    }
}

/// Guest RAM for one test; unmapped on drop (after the VM, declared first, is gone).
struct Ram {
    ptr: *mut u8,
}

impl Ram {
    fn new() -> Ram {
        // SAFETY: an anonymous private mapping with no address hint.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        Ram { ptr: ptr.cast() }
    }

    fn write(&self, addr: u64, bytes: &[u8]) {
        assert!(addr as usize + bytes.len() <= MEM_SIZE);
        // SAFETY: bounds checked above; the mapping is MEM_SIZE bytes long.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(addr as usize), bytes.len())
        };
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe { libc::munmap(self.ptr.cast(), MEM_SIZE) };
    }
}

/// A VM with 64 KiB of RAM and one real-mode vCPU about to run `code` at 0x1000.
fn real_mode_guest(hv: &Hypervisor, code: &[u8], data: &[(u64, &[u8])]) -> (Vcpu, Vm, Ram) {
    let vm = hv.create_vm().unwrap();
    let ram = Ram::new();
    ram.write(CODE, code);
    for (addr, bytes) in data {
        ram.write(*addr, bytes);
    }
    // SAFETY: `ram` is returned with the VM and dropped after it.
    unsafe { vm.map_memory(0, 0, MEM_SIZE as u64, ram.ptr as u64) }.unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.regs().unwrap();
    regs.rip = CODE;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    (vcpu, vm, ram)
}

#[test]
fn port_out_and_in() {
    let Some(hv) = kvm() else { return };
    // mov al, 0x42; out 0x10, al; in al, 0x11; out 0x12, al; hlt
    let code = [0xb0, 0x42, 0xe6, 0x10, 0xe4, 0x11, 0xe6, 0x12, 0xf4];
    let (mut vcpu, _vm, _ram) = real_mode_guest(&hv, &code, &[]);
    match vcpu.run().unwrap() {
        VcpuExit::IoOut { port: 0x10, data } => assert_eq!(data, &[0x42]),
        other => panic!("expected an OUT to 0x10, got {other:?}"),
    }
    match vcpu.run().unwrap() {
        VcpuExit::IoIn { port: 0x11, data } => data[0] = 0x99,
        other => panic!("expected an IN from 0x11, got {other:?}"),
    }
    match vcpu.run().unwrap() {
        VcpuExit::IoOut { port: 0x12, data } => {
            assert_eq!(data, &[0x99], "the IN value reached the guest")
        }
        other => panic!("expected an OUT to 0x12, got {other:?}"),
    }
    assert!(
        matches!(vcpu.run().unwrap(), VcpuExit::Hlt),
        "HLT exits without an in-kernel LAPIC"
    );
}

#[test]
fn mmio_write_and_read() {
    let Some(hv) = kvm() else { return };
    // mov ax, 0x2000; mov ds, ax; mov byte [0], 0x55; mov al, [1]; out 0x13, al; hlt
    let code = [
        0xb8, 0x00, 0x20, 0x8e, 0xd8, 0xc6, 0x06, 0x00, 0x00, 0x55, 0xa0, 0x01, 0x00, 0xe6, 0x13,
        0xf4,
    ];
    let (mut vcpu, _vm, _ram) = real_mode_guest(&hv, &code, &[]);
    match vcpu.run().unwrap() {
        VcpuExit::MmioWrite {
            addr: 0x20000,
            data,
        } => assert_eq!(data, &[0x55]),
        other => panic!("expected an MMIO write at 0x20000, got {other:?}"),
    }
    match vcpu.run().unwrap() {
        VcpuExit::MmioRead {
            addr: 0x20001,
            data,
        } => data[0] = 0x77,
        other => panic!("expected an MMIO read at 0x20001, got {other:?}"),
    }
    match vcpu.run().unwrap() {
        VcpuExit::IoOut { port: 0x13, data } => {
            assert_eq!(data, &[0x77], "the MMIO value reached the guest")
        }
        other => panic!("expected an OUT to 0x13, got {other:?}"),
    }
}

/// Switches the vCPU to flat 32-bit protected mode with an empty IDT.
fn enter_protected_mode(vcpu: &Vcpu) {
    let seg = |selector: u16, type_: u8| hypervisor::kvm_bindings::kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        db: 1,
        s: 1,
        g: 1,
        ..Default::default()
    };
    let mut s = vcpu.sregs().unwrap();
    s.cs = seg(0x8, 0xb);
    s.ds = seg(0x10, 0x3);
    s.es = s.ds;
    s.fs = s.ds;
    s.gs = s.ds;
    s.ss = s.ds;
    s.cr0 = 0x11;
    s.idt.base = 0;
    s.idt.limit = 0;
    vcpu.set_sregs(&s).unwrap();
}

#[test]
fn triple_fault_is_a_shutdown_exit() {
    let Some(hv) = kvm() else { return };
    // ud2 with an empty IDT: #UD cannot be delivered -> #DF -> triple fault.
    let (mut vcpu, _vm, _ram) = real_mode_guest(&hv, &[0x0f, 0x0b], &[]);
    enter_protected_mode(&vcpu);
    let exit = vcpu.run().unwrap();
    assert!(matches!(exit, VcpuExit::Shutdown), "got {exit:?}");
    let dump = vcpu.register_dump().to_string();
    assert!(
        dump.contains("rip=0x1000") && dump.contains("cr0=0x11"),
        "{dump}"
    );
}

#[test]
fn kicker_makes_run_return() {
    let Some(hv) = kvm() else { return };
    // jmp $ : spins forever in the guest.
    let (mut vcpu, _vm, _ram) = real_mode_guest(&hv, &[0xeb, 0xfe], &[]);
    vcpu.kicker().request_exit();
    assert!(matches!(vcpu.run().unwrap(), VcpuExit::Interrupted));
}

#[test]
fn capabilities_are_reported() {
    let Some(hv) = kvm() else { return };
    assert!(hv.max_vcpus() >= 1);
    let cpuid = hv.supported_cpuid().unwrap();
    assert!(cpuid.as_slice().iter().any(|e| e.function == 0));
}
