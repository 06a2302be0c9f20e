//! `ferrovisor`: boots and runs one guest per process.
//!
//! Exit status: the guest's debug-exit status `(v << 1) | 1` when it used the
//! debug-exit port; 0 after power-off, `--on-reboot exit` or SIGTERM/SIGINT;
//! 2 for bad configuration; 3 for a guest fault; 1 for a VMM failure.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmm::config::{self, VmConfig};
use vmm::{ConfigError, Outcome};

/// Ferrovisor: a KVM virtual machine monitor.
#[derive(Debug, Parser)]
#[command(name = "ferrovisor", version, about)]
struct Cli {
    /// Kernel image: ELF with a PVH note, ELF vmlinux, bzImage or multiboot v1 ELF.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// Initramfs (PVH and multiboot: module 0).
    #[arg(long, value_name = "PATH")]
    initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// vCPUs: boot=N.
    #[arg(long, default_value = "boot=1", value_name = "boot=N")]
    cpus: String,
    /// Guest RAM: size=SIZE (K, M, G, T suffixes).
    #[arg(long, default_value = "size=512M", value_name = "size=SIZE")]
    memory: String,
    /// COM1 backend: tty, off, file=PATH or socket=PATH.
    #[arg(long, default_value = "tty")]
    serial: String,
    /// Enable QEMU's isa-debug-exit on port 0xf4: a write of v ends ferrovisor with status (v << 1) | 1.
    #[arg(long)]
    debug_exit: bool,
    /// A virtio-blk disk: path=FILE[,readonly=on][,direct=on][,serial=ID][,num_queues=N][,queue_size=N]
    /// [,logical_block_size=N][,physical_block_size=N][,discard=on|off][,id=NAME][,addr=SLOT]. Repeatable.
    #[arg(long, value_name = "path=FILE,...")]
    disk: Vec<String>,
    /// A virtio-serial port: name=NAME,socket=PATH (the VMM listens) or name=NAME,path=FILE
    /// (guest output to a file), optionally console=on. Repeatable; all ports share one device.
    #[arg(long, value_name = "name=NAME,socket=PATH")]
    channel: Vec<String>,
    /// Give the guest a virtio-rng device (PCI) fed from the host's getrandom.
    #[arg(long)]
    rng: bool,
    /// What a guest reboot does: restart or exit.
    #[arg(long, default_value = "restart", value_name = "restart|exit")]
    on_reboot: String,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, default_value = "warn", env = "FERROVISOR_LOG")]
    log_level: String,
}

impl Cli {
    fn into_config(self) -> Result<VmConfig, ConfigError> {
        Ok(VmConfig {
            kernel: self.kernel,
            initramfs: self.initramfs,
            cmdline: self.cmdline,
            cpus: config::parse_cpus(&self.cpus)?,
            memory: config::parse_memory(&self.memory)?,
            serial: config::parse_serial(&self.serial)?,
            debug_exit: self.debug_exit,
            on_reboot: config::parse_on_reboot(&self.on_reboot)?,
            rng: self.rng,
            disks: self
                .disk
                .iter()
                .map(|d| config::parse_disk(d))
                .collect::<Result<_, _>>()?,
            channels: self
                .channel
                .iter()
                .map(|c| config::parse_channel(c))
                .collect::<Result<_, _>>()?,
        })
    }
}

fn init_logging(filter: &str) -> Result<(), String> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| format!("--log-level: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_target(false)
        .init();
    Ok(())
}

/// clap's message without its usage and tips, on one line.
fn one_line(text: &str) -> String {
    text.lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn status(code: i32) -> ExitCode {
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            eprintln!("ferrovisor: {}", one_line(&e.to_string()));
            return status(vmm::EXIT_CONFIG);
        }
    };
    if let Err(e) = init_logging(&cli.log_level) {
        eprintln!("ferrovisor: error: {e}");
        return status(vmm::EXIT_CONFIG);
    }
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferrovisor: error: {e}");
            return status(vmm::EXIT_CONFIG);
        }
    };
    match vmm::run(&config) {
        Ok(outcome) => {
            match &outcome {
                Outcome::Fault { vcpu, reason } => {
                    eprintln!("ferrovisor: guest fault on vCPU {vcpu}: {reason}")
                }
                Outcome::Signal(s) => tracing::info!("signal {s}: guest stopped"),
                Outcome::RebootExit => tracing::info!("guest rebooted; exiting (--on-reboot exit)"),
                Outcome::PowerOff => tracing::info!("guest powered off"),
                Outcome::DebugExit(v) => {
                    tracing::info!("guest wrote {v:#x} to the debug-exit port")
                }
            }
            status(outcome.exit_status())
        }
        Err(e) => {
            eprintln!("ferrovisor: error: {e}");
            status(e.exit_status())
        }
    }
}
