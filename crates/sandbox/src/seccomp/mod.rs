//! seccomp filters, one per kind of thread, installed by each thread as it
//! starts ([`enter`]).
//!
//! The process chooses a [`Mode`] once ([`configure`], before any VM thread
//! starts); every filter is compiled then, so a broken rule fails the start-up
//! and never a running guest. In [`Mode::On`] a call outside the filter traps:
//! the SIGSYS handler writes one line naming the thread kind and the system
//! call, then ends the process with SIGSYS. [`Mode::Log`] lets the call through
//! and the kernel logs it (audit). [`Mode::Off`] installs nothing.
//!
//! Filters are inherited: a thread started by a filtered thread runs under
//! both filters. The VMM's main thread starts the vCPU and device threads, so
//! its own filter ([`ThreadKind::Vmm`]) is the broadest.

mod rules;
mod syscall_names;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

pub use rules::{allowed_syscalls, base_syscalls, own_syscalls, Allowed};

/// What the filters do with a system call they do not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Kill the process with SIGSYS after logging the call (the default).
    On,
    /// Install no filter.
    Off,
    /// Let the call through; the kernel logs it.
    Log,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "on" | "true" => Ok(Mode::On),
            "off" | "false" => Ok(Mode::Off),
            "log" => Ok(Mode::Log),
            other => Err(format!("{other:?}: expected on, off or log")),
        }
    }
}

/// The kinds of thread a Ferrovisor process runs, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThreadKind {
    /// The main thread: the controller that builds, boots and stops VMs.
    Vmm,
    /// A vCPU thread (KVM_RUN and port/MMIO exits).
    Vcpu,
    /// The REST API acceptor and its connection threads.
    Api,
    /// The thread that turns SIGTERM/SIGINT/SIGHUP into controller events.
    Signals,
    /// The threads feeding host input (stdin, a socket) to the serial port.
    SerialInput,
    /// A virtio-blk queue worker.
    VirtioBlock,
    /// A virtio-blk I/O thread (reads, writes, flushes, discards).
    BlockIo,
    /// The virtio-rng worker.
    VirtioRng,
    /// The virtio-balloon worker.
    VirtioBalloon,
    /// The virtio-console (virtio-serial) worker.
    VirtioConsole,
    /// A virtio-net queue-pair worker.
    VirtioNet,
}

impl ThreadKind {
    /// Every kind, in a fixed order.
    pub const ALL: [ThreadKind; 11] = [
        ThreadKind::Vmm,
        ThreadKind::Vcpu,
        ThreadKind::Api,
        ThreadKind::Signals,
        ThreadKind::SerialInput,
        ThreadKind::VirtioBlock,
        ThreadKind::BlockIo,
        ThreadKind::VirtioRng,
        ThreadKind::VirtioBalloon,
        ThreadKind::VirtioConsole,
        ThreadKind::VirtioNet,
    ];

    /// The kind's name in logs, flags and the test trigger.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Api => "api",
            ThreadKind::Signals => "signals",
            ThreadKind::SerialInput => "serial-input",
            ThreadKind::VirtioBlock => "virtio-blk",
            ThreadKind::BlockIo => "blk-io",
            ThreadKind::VirtioRng => "virtio-rng",
            ThreadKind::VirtioBalloon => "virtio-balloon",
            ThreadKind::VirtioConsole => "virtio-console",
            ThreadKind::VirtioNet => "virtio-net",
        }
    }

    /// The kind named `name`.
    pub fn from_name(name: &str) -> Option<ThreadKind> {
        ThreadKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Why the filters could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filter did not compile (a bug in the rules).
    #[error("seccomp filter for {kind} threads: {source}")]
    Compile {
        /// The thread kind.
        kind: &'static str,
        /// What seccompiler said.
        source: seccompiler::BackendError,
    },
    /// The kernel refused a filter.
    #[error("installing the seccomp filter for {kind} threads: {source}")]
    Install {
        /// The thread kind.
        kind: &'static str,
        /// What seccompiler said.
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("installing the SIGSYS handler: {0}")]
    Handler(std::io::Error),
    /// `configure` ran twice with different modes.
    #[error("seccomp was already configured in mode {0:?}")]
    AlreadyConfigured(Mode),
}

struct Filters {
    mode: Mode,
    programs: BTreeMap<ThreadKind, BpfProgram>,
    /// The kind whose threads make a forbidden call on purpose (tests only).
    trigger: Option<ThreadKind>,
}

static FILTERS: OnceLock<Filters> = OnceLock::new();

/// The environment variable naming a thread kind whose threads make a
/// forbidden system call right after installing their filter. For tests of
/// the filters themselves; nothing else sets it.
pub const TEST_TRIGGER_ENV: &str = "FERROVISOR_TEST_SECCOMP_TRIGGER";

/// The system call the test trigger makes: no filter allows it, and it
/// only reads the calling process's execution domain.
const TRIGGER_SYSCALL: libc::c_long = libc::SYS_personality;

/// Compiles every filter for `mode` and installs the SIGSYS handler. Call once,
/// on the main thread, before any thread that should be filtered starts.
pub fn configure(mode: Mode) -> Result<(), Error> {
    let trigger = std::env::var(TEST_TRIGGER_ENV)
        .ok()
        .and_then(|name| ThreadKind::from_name(&name));
    let mut programs = BTreeMap::new();
    if mode != Mode::Off {
        let mismatch = match mode {
            Mode::Log => SeccompAction::Log,
            _ => SeccompAction::Trap,
        };
        for kind in ThreadKind::ALL {
            let filter = SeccompFilter::new(
                rules::rules(kind),
                mismatch.clone(),
                SeccompAction::Allow,
                TargetArch::x86_64,
            )
            .map_err(|source| Error::Compile {
                kind: kind.name(),
                source,
            })?;
            let program = BpfProgram::try_from(filter).map_err(|source| Error::Compile {
                kind: kind.name(),
                source,
            })?;
            programs.insert(kind, program);
        }
        install_sigsys_handler()?;
    }
    let filters = Filters {
        mode,
        programs,
        trigger,
    };
    if FILTERS.set(filters).is_err() {
        let current = FILTERS.get().map(|f| f.mode).unwrap_or(Mode::Off);
        if current != mode {
            return Err(Error::AlreadyConfigured(current));
        }
    }
    Ok(())
}

/// The mode chosen by [`configure`] (`Off` before it runs).
pub fn mode() -> Mode {
    FILTERS.get().map_or(Mode::Off, |f| f.mode)
}

thread_local! {
    /// The kind of the calling thread (`kind as u8`, an index into
    /// [`ThreadKind::ALL`]), for the SIGSYS line (`u8::MAX`: none).
    static KIND: Cell<u8> = const { Cell::new(u8::MAX) };
}

/// Installs the filter of `kind` on the calling thread. Without
/// [`configure`], or in [`Mode::Off`], it does nothing.
pub fn enter(kind: ThreadKind) -> Result<(), Error> {
    let Some(filters) = FILTERS.get() else {
        return Ok(());
    };
    let Some(program) = filters.programs.get(&kind) else {
        return Ok(());
    };
    KIND.with(|k| k.set(kind as u8));
    seccompiler::apply_filter(program).map_err(|source| Error::Install {
        kind: kind.name(),
        source,
    })?;
    tracing::debug!("seccomp: {} filter installed", kind.name());
    if filters.trigger == Some(kind) {
        tracing::warn!(
            "seccomp: {TEST_TRIGGER_ENV}={}: making a forbidden call",
            kind.name()
        );
        // SAFETY: personality(0xffffffff) only queries the execution domain.
        unsafe { libc::syscall(TRIGGER_SYSCALL, 0xffff_ffff_u64) };
    }
    Ok(())
}

/// [`enter`] for threads that cannot return an error: a thread that should
/// be filtered must not run unfiltered, so a failure ends the process.
pub fn enter_or_abort(kind: ThreadKind) {
    if let Err(e) = enter(kind) {
        eprintln!("ferrovisor: error: {e}");
        std::process::abort();
    }
}

/// The name of system call `nr` ("" when unknown).
pub fn syscall_name(nr: i64) -> &'static str {
    usize::try_from(nr)
        .ok()
        .and_then(|n| syscall_names::NAMES.get(n))
        .copied()
        .unwrap_or("")
}

fn install_sigsys_handler() -> Result<(), Error> {
    // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction =
        on_sigsys as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: installs a handler for SIGSYS; `action` is fully initialised.
    if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
        return Err(Error::Handler(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Offset of `si_syscall` in a SIGSYS `siginfo_t` on x86_64: signo, errno and
/// code (16 bytes with padding), then the call address (8 bytes).
const SI_SYSCALL_OFFSET: usize = 24;

/// A fixed buffer for formatting in a signal handler (no allocation).
struct LineBuf {
    bytes: [u8; 160],
    len: usize,
}

impl LineBuf {
    fn push(&mut self, s: &[u8]) {
        for b in s {
            if self.len < self.bytes.len() {
                self.bytes[self.len] = *b;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The SIGSYS handler: logs the forbidden call, then dies of SIGSYS.
/// Only async-signal-safe calls (write, sigaction, sigprocmask, raise).
extern "C" fn on_sigsys(_signal: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let nr = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a SIGSYS siginfo, whose si_syscall
        // (an int) lies at SI_SYSCALL_OFFSET.
        unsafe {
            info.cast::<u8>()
                .add(SI_SYSCALL_OFFSET)
                .cast::<i32>()
                .read()
        }
    };
    let kind = KIND
        .try_with(|k| k.get())
        .ok()
        .and_then(|i| ThreadKind::ALL.get(usize::from(i)))
        .map_or("unfiltered", |k| k.name());
    let mut line = LineBuf {
        bytes: [0; 160],
        len: 0,
    };
    line.push(b"ferrovisor: seccomp: a ");
    line.push(kind.as_bytes());
    line.push(b" thread made the forbidden system call ");
    let name = syscall_name(i64::from(nr));
    if name.is_empty() {
        line.push(b"number ");
    } else {
        line.push(name.as_bytes());
        line.push(b" (");
    }
    line.push_number(u64::from(nr.unsigned_abs()));
    if !name.is_empty() {
        line.push(b")");
    }
    line.push(b"; killing the process\n");
    // SAFETY: write(2) of our own buffer to stderr; async-signal-safe.
    unsafe { libc::write(2, line.bytes.as_ptr().cast(), line.len) };
    // SAFETY: restore the default action (terminate with a core) and raise
    // SIGSYS again, unblocked; all async-signal-safe.
    unsafe {
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGSYS, &default, std::ptr::null_mut());
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGSYS);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(libc::SIGSYS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_filter_compiles() {
        for kind in ThreadKind::ALL {
            let filter = SeccompFilter::new(
                rules::rules(kind),
                SeccompAction::Trap,
                SeccompAction::Allow,
                TargetArch::x86_64,
            )
            .unwrap();
            let program = BpfProgram::try_from(filter).unwrap();
            assert!(!program.is_empty(), "{kind:?}");
        }
    }

    #[test]
    fn kinds_are_listed_in_declaration_order() {
        // The SIGSYS handler finds a thread's kind as ALL[kind as u8].
        for (i, kind) in ThreadKind::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, i, "{kind:?}");
        }
    }

    #[test]
    fn kinds_round_trip_by_name() {
        for kind in ThreadKind::ALL {
            assert_eq!(ThreadKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(ThreadKind::from_name("nope"), None);
        assert_eq!("log".parse::<Mode>(), Ok(Mode::Log));
        assert!("maybe".parse::<Mode>().is_err());
    }

    #[test]
    fn syscall_names_match_libc_numbers() {
        assert_eq!(syscall_name(libc::SYS_read), "read");
        assert_eq!(syscall_name(libc::SYS_ioctl), "ioctl");
        assert_eq!(syscall_name(libc::SYS_personality), "personality");
        assert_eq!(syscall_name(-1), "");
        assert_eq!(syscall_name(100_000), "");
    }

    #[test]
    fn no_filter_allows_the_test_trigger() {
        for kind in ThreadKind::ALL {
            assert!(
                !rules::rules(kind).contains_key(&TRIGGER_SYSCALL),
                "{kind:?} allows the trigger syscall"
            );
        }
    }
}
