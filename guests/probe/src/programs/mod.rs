//! The test programs, selected with `probe=NAME` on the command line.
//!
//! To add one, write a `fn(&StartInfo) -> Outcome` in its own module and
//! list it in [`PROGRAMS`].

mod acpi;
mod balloon;
mod blk;
mod blkbench;
mod boot;
mod channel;
mod cpuid;
mod echo;
mod fault;
mod mem;
mod net;
mod pci;
mod poweroff;
mod reboot;
mod rng;
mod ticks;

use crate::bail;
use crate::exit::Reason;
use crate::start_info::StartInfo;

/// `Ok` prints `probe: PASS`, `Err(reason)` prints `probe: FAIL <reason>`.
pub type Outcome = Result<(), Reason>;

struct Program {
    name: &'static str,
    run: fn(&StartInfo) -> Outcome,
}

const PROGRAMS: &[Program] = &[
    Program {
        name: "boot",
        run: boot::run,
    },
    Program {
        name: "echo",
        run: echo::run,
    },
    Program {
        name: "poweroff",
        run: poweroff::run,
    },
    Program {
        name: "reboot",
        run: reboot::run,
    },
    Program {
        name: "fault",
        run: fault::run,
    },
    Program {
        name: "acpi",
        run: acpi::run,
    },
    Program {
        name: "pci",
        run: pci::run,
    },
    Program {
        name: "rng",
        run: rng::run,
    },
    Program {
        name: "channel",
        run: channel::run,
    },
    Program {
        name: "blk",
        run: blk::run,
    },
    Program {
        name: "blkbench",
        run: blkbench::run,
    },
    Program {
        name: "balloon",
        run: balloon::run,
    },
    Program {
        name: "ticks",
        run: ticks::run,
    },
    Program {
        name: "cpuid",
        run: cpuid::run,
    },
    Program {
        name: "mem",
        run: mem::run,
    },
    Program {
        name: "net",
        run: net::run,
    },
];

/// Runs the program called `name`.
pub fn run(name: &str, info: &StartInfo) -> Outcome {
    match PROGRAMS.iter().find(|program| program.name == name) {
        Some(program) => (program.run)(info),
        None => bail!("unknown program {}", name),
    }
}
