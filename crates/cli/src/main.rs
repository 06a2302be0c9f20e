//! `ferrovisor`: boots and runs one guest per process.
//!
//! Exit status: the guest's debug-exit status `(v << 1) | 1` when it used the
//! debug-exit port; 0 after power-off, `--on-reboot exit` or SIGTERM/SIGINT;
//! 2 for bad configuration; 3 for a guest fault; 1 for a VMM failure.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use std::sync::Arc;

use vmm::config::{self, VmConfig};
use vmm::{ConfigError, Outcome, Vmm, VmmOptions};

/// Ferrovisor: a KVM virtual machine monitor.
#[derive(Debug, Parser)]
#[command(name = "ferrovisor", version, about)]
struct Cli {
    /// Serve the REST API (HTTP/1.1 under /api/v1/) on this Unix socket. Without a VM
    /// on the command line, wait for vm.create and vm.boot.
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
    /// The VM config as TOML (`.toml`) or JSON (else); `fvctl info --json` output works too.
    #[arg(long, value_name = "FILE", conflicts_with_all = VM_FLAGS)]
    config: Option<PathBuf>,
    /// Append lifecycle and device events to this file as JSON lines.
    #[arg(long, value_name = "PATH")]
    event_log: Option<PathBuf>,
    /// Kernel image: ELF with a PVH note, ELF vmlinux, bzImage or multiboot v1 ELF.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initramfs (PVH and multiboot: module 0).
    #[arg(long, value_name = "PATH")]
    initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long)]
    cmdline: Option<String>,
    /// vCPUs: boot=N[,max=M][,topology=SOCKETS:CORES:THREADS][,model=host|NAME]
    /// [,features=+FEAT,-FEAT...][,kvm_pv=on|off] (default boot=1, model=host, kvm_pv=on).
    #[arg(long, value_name = "boot=N,...")]
    cpus: Option<String>,
    /// List the named CPU models and whether this host can run each, then exit.
    #[arg(long, conflicts_with_all = VM_FLAGS)]
    cpu_models: bool,
    /// Guest RAM: size=SIZE (K, M, G, T suffixes; default size=512M).
    #[arg(long, value_name = "size=SIZE")]
    memory: Option<String>,
    /// COM1 backend: tty (default), off, file=PATH or socket=PATH.
    #[arg(long)]
    serial: Option<String>,
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
    /// A virtio-balloon device: size=SIZE[,deflate_on_oom=on][,free_page_reporting=on][,id=NAME].
    /// Resize it at run time with vm.resize {"desired_balloon": BYTES}.
    #[arg(long, value_name = "size=SIZE,...")]
    balloon: Option<String>,
    /// A virtio-net card on a TAP device: tap=NAME|fd=N[,mac=MAC][,ip=IP][,mask=MASK][,num_queues=N]
    /// [,queue_size=N][,id=NAME][,offload_tso=on|off][,offload_csum=on|off]. Repeatable.
    #[arg(long, value_name = "tap=NAME,...")]
    net: Vec<String>,
    /// Give the guest a virtio-rng device (PCI) fed from the host's getrandom.
    #[arg(long)]
    rng: bool,
    /// What a guest reboot does: restart (default) or exit.
    #[arg(long, value_name = "restart|exit")]
    on_reboot: Option<String>,
    /// seccomp filters per thread kind: on (default; a forbidden system call kills
    /// the process with SIGSYS and a log line naming it), log (the kernel logs
    /// it and the call goes through) or off.
    #[arg(
        long,
        value_name = "on|off|log",
        default_value = "on",
        env = "FERROVISOR_SECCOMP"
    )]
    seccomp: sandbox::seccomp::Mode,
    /// Landlock: on (default, where the kernel supports it) limits the process to the
    /// VM's own files and sockets, /dev/kvm, /dev/net/tun and --landlock-rules paths.
    #[arg(
        long,
        value_name = "on|off",
        default_value = "on",
        env = "FERROVISOR_LANDLOCK"
    )]
    landlock: OnOff,
    /// Another path the VMM may reach under Landlock: path=PATH[,access=ro|rw|create].
    /// Repeatable.
    #[arg(long, value_name = "path=PATH,access=ro|rw|create")]
    landlock_rules: Vec<String>,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive).
    #[arg(long, default_value = "warn", env = "FERROVISOR_LOG")]
    log_level: String,
}

/// A switch flag's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

/// The flags that describe a VM, which `--config` replaces.
const VM_FLAGS: [&str; 13] = [
    "balloon",
    "kernel",
    "initramfs",
    "cmdline",
    "cpus",
    "memory",
    "serial",
    "debug_exit",
    "disk",
    "channel",
    "net",
    "rng",
    "on_reboot",
];

impl Cli {
    /// The VM the command line describes, if any.
    fn vm_config(&self) -> Result<Option<VmConfig>, ConfigError> {
        if let Some(path) = &self.config {
            return config::load_file(path).map(Some);
        }
        let Some(kernel) = &self.kernel else {
            let other_flag = self.initramfs.is_some()
                || self.cmdline.is_some()
                || self.cpus.is_some()
                || self.memory.is_some()
                || self.serial.is_some()
                || self.debug_exit
                || !self.disk.is_empty()
                || !self.channel.is_empty()
                || !self.net.is_empty()
                || self.rng
                || self.balloon.is_some()
                || self.on_reboot.is_some();
            if other_flag || self.api_socket.is_none() {
                return Err(ConfigError::new(
                    "--kernel",
                    "required (or give --config FILE, or --api-socket PATH to wait for vm.create)",
                ));
            }
            return Ok(None);
        };
        let mut c = VmConfig::with_kernel(kernel.clone());
        c.payload.initramfs = self.initramfs.clone();
        c.payload.cmdline = self.cmdline.clone().unwrap_or_default();
        if let Some(cpus) = &self.cpus {
            c.cpus = config::parse_cpus(cpus)?;
        }
        if let Some(memory) = &self.memory {
            c.memory = config::parse_memory(memory)?;
        }
        if let Some(serial) = &self.serial {
            c.serial = config::parse_serial(serial)?;
        }
        c.debug_exit = self.debug_exit;
        if let Some(policy) = &self.on_reboot {
            c.on_reboot = config::parse_on_reboot(policy)?;
        }
        c.rng = self.rng.then_some(config::RngConfig { id: None });
        if let Some(b) = &self.balloon {
            c.balloon = Some(config::parse_balloon(b)?);
        }
        c.disks = self
            .disk
            .iter()
            .map(|d| config::parse_disk(d))
            .collect::<Result<_, _>>()?;
        c.channels = self
            .channel
            .iter()
            .map(|ch| config::parse_channel(ch))
            .collect::<Result<_, _>>()?;
        c.net = self
            .net
            .iter()
            .map(|n| config::parse_net(n))
            .collect::<Result<_, _>>()?;
        c.validate().map(Some)
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
    if cli.cpu_models {
        return match vmm::cpu_model::list_models() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ferrovisor: error: {e}");
                status(e.exit_status())
            }
        };
    }
    let config = match cli.vm_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferrovisor: error: {e}");
            return status(vmm::EXIT_CONFIG);
        }
    };
    match run(&cli, config) {
        Ok(outcome) => {
            match &outcome {
                Outcome::Fault { vcpu, reason } => {
                    eprintln!("ferrovisor: guest fault on vCPU {vcpu}: {reason}")
                }
                Outcome::Signal(s) => tracing::info!("signal {s}: guest stopped"),
                Outcome::RebootExit => tracing::info!("guest rebooted; exiting (--on-reboot exit)"),
                Outcome::PowerOff => tracing::info!("guest powered off"),
                Outcome::VmmShutdown => tracing::info!("vmm.shutdown: exiting"),
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

/// Binds the API socket (before any thread starts: the bind sets the umask),
/// starts the controller and the API server, and runs until the VMM ends.
fn run(cli: &Cli, config: Option<VmConfig>) -> Result<Outcome, vmm::Error> {
    let server = match &cli.api_socket {
        Some(path) => Some(
            api::server::Server::bind(path)
                .map_err(|e| ConfigError::new("--api-socket", e.to_string()))?,
        ),
        None => None,
    };
    let event_log = match &cli.event_log {
        Some(path) => vmm::events::EventLog::open(path)
            .map_err(|e| ConfigError::new("--event-log", format!("{}: {e}", path.display())))?,
        None => vmm::events::EventLog::default(),
    };
    let landlock = match cli.landlock {
        OnOff::Off => None,
        OnOff::On => {
            let mut rules = cli
                .landlock_rules
                .iter()
                .map(|r| vmm::isolation::parse_rule(r))
                .collect::<Result<Vec<_>, _>>()?;
            // The API socket is removed on exit; the event log is appended to.
            if let Some(path) = &cli.api_socket {
                rules.push(vmm::isolation::socket_rule(path));
            }
            if let Some(path) = &cli.event_log {
                rules.push(sandbox::landlock::Rule::new(
                    path,
                    sandbox::landlock::Permission::ReadWrite,
                ));
            }
            Some(rules)
        }
    };
    let options = VmmOptions {
        serve_api: server.is_some(),
        event_log,
        landlock,
    };
    sandbox::seccomp::configure(cli.seccomp).map_err(|e| vmm::Error::Internal(e.to_string()))?;
    if cli.seccomp != sandbox::seccomp::Mode::Off {
        sandbox::thread::start_spawner().map_err(|e| vmm::Error::Io {
            what: "starting the thread spawner".into(),
            source: e,
        })?;
    }
    let controller = Vmm::new(options)?;
    let api = match server {
        Some(server) => {
            let router = Arc::new(api::routes::Router::new(controller.requests()));
            Some(server.serve(router).map_err(|e| vmm::Error::Io {
                what: "starting the API server".into(),
                source: e,
            })?)
        }
        None => None,
    };
    sandbox::seccomp::enter(sandbox::seccomp::ThreadKind::Vmm)
        .map_err(|e| vmm::Error::Internal(e.to_string()))?;
    let outcome = controller.run(config);
    if let Some(api) = api {
        api.shutdown();
    }
    outcome
}
