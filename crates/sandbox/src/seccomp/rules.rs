//! The system calls each kind of thread may make: the filters as data.
//!
//! Every entry says why the call is there. [`THREAD_BASE`] is what any Rust
//! thread needs (allocation, futexes, thread exit, the SIGSYS handler's own
//! calls); each kind adds what its work needs. The main thread's filter is the
//! union of all of them: the threads it starts inherit its filter.

use std::collections::BTreeMap;

use kvm_bindings::{kvm_irq_level, kvm_irq_routing, kvm_irqfd, kvm_msi, kvm_regs, kvm_sregs};
use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::ThreadKind;

/// One allowed system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// The call with any arguments.
    Any(i64),
    /// `ioctl` with one of these request numbers.
    Ioctls(&'static [u64]),
    /// `ioctl` with any request of this type (`_IOC_TYPE`, e.g. KVMIO).
    IoctlType(u8),
    /// The call when argument `arg` (0-based) is one of `values`.
    Args {
        /// The system call.
        nr: i64,
        /// Which argument.
        arg: u8,
        /// The values it may take.
        values: &'static [u64],
    },
}

use Allowed::{Any, Args, IoctlType, Ioctls};

const KVMIO: u64 = 0xAE;

/// `_IOR(KVMIO, nr, size)`: direction read (2) in bits 30-31, the size in
/// bits 16-29, the type and the number below.
const fn kvm_ior(nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

/// `_IOW(KVMIO, nr, size)`: direction write (1).
const fn kvm_iow(nr: u64, size: usize) -> u64 {
    (1 << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

const KVM_IRQ_LINE: u64 = kvm_iow(0x61, std::mem::size_of::<kvm_irq_level>());
const KVM_SET_GSI_ROUTING: u64 = kvm_iow(0x6a, std::mem::size_of::<kvm_irq_routing>());
const KVM_IRQFD: u64 = kvm_iow(0x76, std::mem::size_of::<kvm_irqfd>());
const KVM_SIGNAL_MSI: u64 = kvm_iow(0xa5, std::mem::size_of::<kvm_msi>());

const KVM_RUN: u64 = (KVMIO << 8) | 0x80;
const KVM_GET_REGS: u64 = kvm_ior(0x81, std::mem::size_of::<kvm_regs>());
const KVM_GET_SREGS: u64 = kvm_ior(0x83, std::mem::size_of::<kvm_sregs>());

/// Every thread: memory, futexes, time, randomness for hash maps, logging to
/// stderr, thread exit, and the SIGSYS handler (sigaction, sigprocmask,
/// getpid/gettid/tgkill of SIGSYS).
const THREAD_BASE: &[Allowed] = &[
    Any(libc::SYS_brk),
    Any(libc::SYS_mmap),
    Any(libc::SYS_munmap),
    Any(libc::SYS_mremap),
    Any(libc::SYS_mprotect),
    Any(libc::SYS_madvise),
    Any(libc::SYS_futex),
    Any(libc::SYS_sched_yield),
    Any(libc::SYS_clock_nanosleep),
    Any(libc::SYS_getrandom),
    Any(libc::SYS_write),
    Any(libc::SYS_close),
    Any(libc::SYS_sigaltstack),
    Any(libc::SYS_rt_sigreturn),
    // A sleep interrupted by a signal (SIGTERM lands on any thread) resumes
    // through restart_syscall.
    Any(libc::SYS_restart_syscall),
    Any(libc::SYS_rt_sigprocmask),
    Args {
        nr: libc::SYS_rt_sigaction,
        arg: 0,
        values: &[libc::SIGSYS as u64],
    },
    Any(libc::SYS_getpid),
    Any(libc::SYS_gettid),
    Args {
        nr: libc::SYS_tgkill,
        arg: 2,
        values: &[libc::SIGSYS as u64],
    },
    Any(libc::SYS_exit),
    // F_GETFD: the standard library checks a descriptor is open before
    // closing it (debug builds).
    Args {
        nr: libc::SYS_fcntl,
        arg: 1,
        values: &[libc::F_GETFD as u64],
    },
];

/// vCPU threads: KVM_RUN, register dumps for fault reports, eventfd writes
/// (MSI-X and device notifications). The PCI config and MSI-X paths update
/// interrupt routes, irqfds and ioeventfds on the VM descriptor, and a
/// driver's DRIVER_OK activates the device from the vCPU thread: its queue
/// eventfds and epoll set are made there (the worker threads themselves come
/// from the spawner), and a NIC's TAP gets the negotiated offloads.
const VCPU: &[Allowed] = &[
    Ioctls(&[KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS, TUNSETOFFLOAD]),
    // COM1 output to a socket client (the UART is emulated on the vCPU).
    Any(libc::SYS_sendto),
    IoctlType(KVMIO as u8),
    Any(libc::SYS_eventfd2),
    Any(libc::SYS_epoll_create1),
    Any(libc::SYS_epoll_ctl),
    Args {
        nr: libc::SYS_fcntl,
        arg: 1,
        values: &[libc::F_DUPFD_CLOEXEC as u64],
    },
];

const FIONBIO: u64 = 0x5421;
/// `_IOW('T', 208, unsigned int)`: a TAP's offloads.
const TUNSETOFFLOAD: u64 = libc::TUNSETOFFLOAD;

/// The API acceptor and connection threads: sockets only.
const API: &[Allowed] = &[
    Any(libc::SYS_accept4),
    Any(libc::SYS_recvfrom),
    Any(libc::SYS_sendto),
    Any(libc::SYS_poll),
    Any(libc::SYS_setsockopt),
    Any(libc::SYS_fcntl),
    // set_nonblocking on accepted connections.
    Ioctls(&[FIONBIO]),
];

/// The signal thread: waits on signal-hook's socket pair.
const SIGNALS: &[Allowed] = &[Any(libc::SYS_recvfrom)];

/// Serial input pumps: read stdin or a socket, accept a client (with a
/// read timeout set on it).
const SERIAL_INPUT: &[Allowed] = &[
    Any(libc::SYS_read),
    Any(libc::SYS_recvfrom),
    Any(libc::SYS_setsockopt),
    Any(libc::SYS_accept4),
    Any(libc::SYS_fcntl),
];

/// Every virtio worker: epoll on its eventfds, signals the guest by
/// eventfd. A device's first interrupt on an MSI-X vector sets up its route
/// and irqfd (an eventfd and three KVM ioctls); INTx raises a line.
const VIRTIO_WORKER: &[Allowed] = &[
    Any(libc::SYS_epoll_wait),
    Any(libc::SYS_read),
    Any(libc::SYS_eventfd2),
    Ioctls(&[KVM_SET_GSI_ROUTING, KVM_IRQFD, KVM_SIGNAL_MSI, KVM_IRQ_LINE]),
];

/// The virtio-blk queue worker hands requests to its I/O threads.
const VIRTIO_BLOCK: &[Allowed] = VIRTIO_WORKER;

/// Block I/O threads: positional vectored I/O, flush (fdatasync), discard
/// and write-zeroes (fallocate); qcow2 metadata with pread64/pwrite64.
const BLOCK_IO: &[Allowed] = &[
    Any(libc::SYS_pread64),
    Any(libc::SYS_pwrite64),
    Any(libc::SYS_preadv),
    Any(libc::SYS_pwritev),
    Any(libc::SYS_fdatasync),
    Any(libc::SYS_fallocate),
];

/// The virtio-rng worker reads the host's getrandom (in the base set).
const VIRTIO_RNG: &[Allowed] = VIRTIO_WORKER;

/// The balloon worker releases guest pages (madvise, in the base set).
const VIRTIO_BALLOON: &[Allowed] = &[
    Any(libc::SYS_epoll_wait),
    Any(libc::SYS_read),
    Any(libc::SYS_eventfd2),
    Ioctls(&[KVM_SET_GSI_ROUTING, KVM_IRQFD, KVM_SIGNAL_MSI, KVM_IRQ_LINE]),
];

/// The virtio-console worker: its sockets and files.
const VIRTIO_CONSOLE: &[Allowed] = &[
    Any(libc::SYS_epoll_wait),
    Any(libc::SYS_eventfd2),
    Ioctls(&[KVM_SET_GSI_ROUTING, KVM_IRQFD, KVM_SIGNAL_MSI, KVM_IRQ_LINE]),
    Any(libc::SYS_epoll_ctl),
    Any(libc::SYS_read),
    Any(libc::SYS_accept4),
    Any(libc::SYS_recvfrom),
    Any(libc::SYS_sendto),
    Any(libc::SYS_fcntl),
];

/// virtio-net workers: frames move with one readv/writev each between
/// guest memory and the TAP queue; the control-queue worker changes the
/// TAP's offloads when the driver asks (TUNSETOFFLOAD).
const VIRTIO_NET: &[Allowed] = &[
    Any(libc::SYS_epoll_wait),
    Any(libc::SYS_eventfd2),
    Ioctls(&[
        KVM_SET_GSI_ROUTING,
        KVM_IRQFD,
        KVM_SIGNAL_MSI,
        KVM_IRQ_LINE,
        TUNSETOFFLOAD,
    ]),
    Any(libc::SYS_read),
    Any(libc::SYS_readv),
    Any(libc::SYS_writev),
];

/// The main thread builds and tears down VMs: files (openat, statx),
/// KVM and terminals (ioctl), guest memory (memfd_create, ftruncate),
/// sockets for the serial port and channels (socket, bind, listen; stale
/// ones unlinked), eventfds, Landlock. Its spawner thread starts every other
/// thread (clone3, and what a new thread does before its own filter: rseq,
/// set_robust_list, sched_getaffinity, prctl, seccomp), so the filter also
/// holds every other kind's calls.
const VMM: &[Allowed] = &[
    Any(libc::SYS_read),
    Any(libc::SYS_openat),
    Any(libc::SYS_newfstatat),
    Any(libc::SYS_statx),
    Any(libc::SYS_unlink),
    Any(libc::SYS_fcntl),
    Any(libc::SYS_ioctl),
    Any(libc::SYS_ftruncate),
    Any(libc::SYS_memfd_create),
    Any(libc::SYS_eventfd2),
    Any(libc::SYS_socket),
    Any(libc::SYS_bind),
    Any(libc::SYS_listen),
    Any(libc::SYS_shutdown),
    Any(libc::SYS_clone3),
    Any(libc::SYS_rseq),
    Any(libc::SYS_set_robust_list),
    Any(libc::SYS_prctl),
    Any(libc::SYS_seccomp),
    Any(libc::SYS_landlock_create_ruleset),
    Any(libc::SYS_landlock_add_rule),
    Any(libc::SYS_landlock_restrict_self),
    Any(libc::SYS_sched_getaffinity),
    Any(libc::SYS_tgkill),
    Any(libc::SYS_exit_group),
];

impl Allowed {
    /// The system call number.
    pub fn nr(self) -> i64 {
        match self {
            Any(nr) | Args { nr, .. } => nr,
            Ioctls(_) | IoctlType(_) => libc::SYS_ioctl,
        }
    }
}

/// The calls every thread may make.
pub fn base_syscalls() -> &'static [Allowed] {
    THREAD_BASE
}

/// The calls `kind` adds to the base set (for the main thread, without the
/// other kinds' calls it also holds).
pub fn own_syscalls(kind: ThreadKind) -> &'static [Allowed] {
    own_rules(kind)
}

fn own_rules(kind: ThreadKind) -> &'static [Allowed] {
    match kind {
        ThreadKind::Vmm => VMM,
        ThreadKind::Vcpu => VCPU,
        ThreadKind::Api => API,
        ThreadKind::Signals => SIGNALS,
        ThreadKind::SerialInput => SERIAL_INPUT,
        ThreadKind::VirtioBlock => VIRTIO_BLOCK,
        ThreadKind::BlockIo => BLOCK_IO,
        ThreadKind::VirtioRng => VIRTIO_RNG,
        ThreadKind::VirtioBalloon => VIRTIO_BALLOON,
        ThreadKind::VirtioConsole => VIRTIO_CONSOLE,
        ThreadKind::VirtioNet => VIRTIO_NET,
    }
}

/// The entries of `kind`'s filter: the base set, its own, and for the main
/// thread every other kind's too.
pub fn allowed_syscalls(kind: ThreadKind) -> Vec<Allowed> {
    let mut all: Vec<Allowed> = THREAD_BASE.to_vec();
    if kind == ThreadKind::Vmm {
        for k in ThreadKind::ALL {
            all.extend_from_slice(own_rules(k));
        }
    } else {
        all.extend_from_slice(own_rules(kind));
    }
    all
}

fn condition(arg: u8, value: u64) -> SeccompCondition {
    // Arguments are compared in full (64 bits): the values here are small,
    // non-negative constants, so a match cannot come from high garbage bits.
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, value)
        .unwrap_or_else(|e| unreachable!("argument index {arg} is below 6: {e}"))
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).unwrap_or_else(|e| unreachable!("a rule has a condition: {e}"))
}

/// The seccompiler rule map of `kind`: per system call, the argument rules
/// of which one must match (an empty list: any arguments).
pub(crate) fn rules(kind: ThreadKind) -> BTreeMap<i64, Vec<SeccompRule>> {
    // `None`: any arguments.
    let mut map: BTreeMap<i64, Option<Vec<SeccompRule>>> = BTreeMap::new();
    let mut add = |nr: i64, new: Option<Vec<SeccompRule>>| {
        let entry = map.entry(nr).or_insert_with(|| Some(Vec::new()));
        match (entry.as_mut(), new) {
            (Some(rules), Some(more)) => rules.extend(more),
            _ => *entry = None,
        }
    };
    for allowed in allowed_syscalls(kind) {
        match allowed {
            Any(nr) => add(nr, None),
            Ioctls(requests) => add(
                libc::SYS_ioctl,
                Some(
                    requests
                        .iter()
                        .map(|r| rule(vec![condition(1, *r)]))
                        .collect(),
                ),
            ),
            IoctlType(t) => {
                let masked = SeccompCondition::new(
                    1,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(0xff00),
                    u64::from(t) << 8,
                )
                .unwrap_or_else(|e| unreachable!("argument 1 exists: {e}"));
                add(libc::SYS_ioctl, Some(vec![rule(vec![masked])]));
            }
            Args { nr, arg, values } => add(
                nr,
                Some(
                    values
                        .iter()
                        .map(|v| rule(vec![condition(arg, *v)]))
                        .collect(),
                ),
            ),
        }
    }
    map.into_iter()
        .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_ioctl_numbers_are_the_kernels() {
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(KVM_IRQFD, 0x4020_ae76);
        assert_eq!(KVM_SET_GSI_ROUTING, 0x4008_ae6a);
        assert_eq!(KVM_SIGNAL_MSI, 0x4020_aea5);
        assert_eq!(KVM_IRQ_LINE, 0x4008_ae61);
    }

    #[test]
    fn the_main_filter_holds_every_other() {
        let vmm = rules(ThreadKind::Vmm);
        for kind in ThreadKind::ALL {
            for nr in rules(kind).keys() {
                assert!(vmm.contains_key(nr), "{kind:?} allows {nr}, vmm does not");
            }
        }
    }

    #[test]
    fn guest_facing_threads_cannot_open_files_or_start_threads() {
        for kind in [
            ThreadKind::Vcpu,
            ThreadKind::Api,
            ThreadKind::VirtioBlock,
            ThreadKind::BlockIo,
            ThreadKind::VirtioRng,
            ThreadKind::VirtioBalloon,
            ThreadKind::VirtioConsole,
            ThreadKind::VirtioNet,
        ] {
            let r = rules(kind);
            for nr in [
                libc::SYS_open,
                libc::SYS_openat,
                libc::SYS_execve,
                libc::SYS_clone,
                libc::SYS_clone3,
                libc::SYS_socket,
                libc::SYS_ptrace,
            ] {
                assert!(!r.contains_key(&nr), "{kind:?} allows {nr}");
            }
        }
    }
}
