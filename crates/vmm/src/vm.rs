//! The VM lifecycle: build a VM instance from the configuration, run its
//! vCPUs, wait for the first event that ends it (a guest request, a fault, a
//! host signal), stop every vCPU, and either boot a fresh instance (reboot)
//! or return the outcome that becomes the exit status.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use arch::cpuid::Topology;
use arch::loader::{self, BootImage};
use arch::{layout, memory_map, mptable};
use devices::{debug_exit::DebugExit, serial, GuestRequest, GuestRequestSink};
use hypervisor::{Hypervisor, KvmKind, Vcpu};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::config::{RebootPolicy, VmConfig};
use crate::console::Console;
use crate::platform;
use crate::vcpu::{self, VcpuRunner};
use crate::{memory, ConfigError, Error};

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest powered off.
    PowerOff,
    /// The guest reset and `--on-reboot exit` was given.
    RebootExit,
    /// The guest wrote this value to the debug-exit port.
    DebugExit(u32),
    /// A vCPU faulted.
    Fault {
        /// The vCPU.
        vcpu: u32,
        /// Why, with its registers.
        reason: String,
    },
    /// The VMM received this signal and shut the guest down.
    Signal(i32),
}

impl Outcome {
    /// The process exit status for this outcome.
    pub fn exit_status(&self) -> i32 {
        match self {
            Outcome::PowerOff | Outcome::RebootExit | Outcome::Signal(_) => 0,
            Outcome::DebugExit(v) => DebugExit::exit_status(*v),
            Outcome::Fault { .. } => crate::EXIT_GUEST_FAULT,
        }
    }
}

/// Something that may end a VM instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// A device relayed a guest request.
    Guest(GuestRequest),
    /// A vCPU faulted.
    Fault { vcpu: u32, reason: String },
    /// A host signal asked the VMM to stop.
    Signal(i32),
}

/// An event and the generation of the VM instance that raised it (host
/// signals carry [`ANY_GENERATION`]); events of an earlier instance are dropped.
pub(crate) struct Tagged {
    pub generation: u64,
    pub event: Event,
}

const ANY_GENERATION: u64 = u64::MAX;

/// The files the VM boots, read once so that a reboot cannot see them change.
struct BootFiles {
    kernel: Vec<u8>,
    initramfs: Option<Vec<u8>>,
    /// The disks, opened once; a reboot keeps them open.
    disks: Vec<Arc<dyn block::DiskFile>>,
    /// The virtio-console device: its sockets and clients outlive reboots.
    channels: Option<Arc<Mutex<virtio::console::Console>>>,
}

/// Boots the VM described by `config` and runs it until it ends.
pub fn run(config: &VmConfig) -> Result<Outcome, Error> {
    let hv = Hypervisor::open()?;
    let kind = KvmKind::detect();
    validate_cpus(config, hv.max_vcpus())?;
    let files = read_boot_files(config)?;
    let console =
        Console::new(&config.serial).map_err(|e| ConfigError::new("--serial", e.to_string()))?;
    tracing::info!(
        "KVM: {kind}{}",
        if kind.is_hardware_backed() {
            ""
        } else {
            "; guest ring-0 code is emulated, expect slow guests"
        }
    );

    let (events_tx, events_rx) = channel();
    install_signal_handlers(events_tx.clone())?;
    for generation in 0.. {
        let outcome = run_instance(
            config, &hv, &files, &console, &events_tx, &events_rx, generation,
        )?;
        match outcome {
            InstanceEnd::Reset if config.on_reboot == RebootPolicy::Restart => {
                tracing::info!("guest reset: booting again");
                let port = console.port();
                let mut uart = port.lock().unwrap_or_else(|p| p.into_inner());
                uart.reset().map_err(Error::io("resetting the UART"))?;
            }
            InstanceEnd::Reset => return Ok(Outcome::RebootExit),
            InstanceEnd::Done(outcome) => return Ok(outcome),
        }
    }
    unreachable!("the generation counter cannot run out")
}

fn validate_cpus(config: &VmConfig, kvm_max: usize) -> Result<(), Error> {
    let boot = config.cpus.boot;
    let why = if boot as usize > kvm_max {
        format!("KVM on this host allows at most {kvm_max} vCPUs")
    } else if boot > mptable::MAX_CPUS {
        format!(
            "at most {} vCPUs until x2APIC and the ACPI MADT land",
            mptable::MAX_CPUS
        )
    } else {
        return Ok(());
    };
    Err(ConfigError::new("--cpus", format!("boot={boot}: {why}")).into())
}

fn read_limited(flag: &'static str, path: &std::path::Path, limit: u64) -> Result<Vec<u8>, Error> {
    let meta = std::fs::metadata(path)
        .map_err(|e| ConfigError::new(flag, format!("{}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(
            ConfigError::new(flag, format!("{}: not a regular file", path.display())).into(),
        );
    }
    if meta.len() > limit {
        return Err(ConfigError::new(
            flag,
            format!(
                "{}: {} bytes do not fit in {} bytes of guest RAM",
                path.display(),
                meta.len(),
                limit
            ),
        )
        .into());
    }
    std::fs::read(path)
        .map_err(|e| ConfigError::new(flag, format!("{}: {e}", path.display())).into())
}

fn read_boot_files(config: &VmConfig) -> Result<BootFiles, Error> {
    let ram = memory_map::low_ram_end(config.memory.size);
    let kernel = read_limited("--kernel", &config.kernel, ram)?;
    let initramfs = match &config.initramfs {
        Some(path) => Some(read_limited("--initramfs", path, ram)?),
        None => None,
    };
    let mut disks: Vec<Arc<dyn block::DiskFile>> = Vec::new();
    for disk in &config.disks {
        let options = block::OpenOptions {
            read_only: disk.readonly,
            direct: disk.direct,
        };
        let file = block::RawFile::open(&disk.path, options)
            .map_err(|e| ConfigError::new("--disk", format!("{}: {e}", disk.path.display())))?;
        disks.push(Arc::new(file));
    }
    let channels = if config.channels.is_empty() {
        None
    } else {
        Some(Arc::new(Mutex::new(crate::channels::create(
            &config.channels,
        )?)))
    };
    Ok(BootFiles {
        kernel,
        initramfs,
        disks,
        channels,
    })
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn kick_signal() -> i32 {
    SIGRTMIN()
}

fn install_signal_handlers(events: Sender<Tagged>) -> Result<(), Error> {
    register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| Error::Internal(format!("installing the vCPU kick handler: {e}")))?;
    let mut signals =
        signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
            .map_err(Error::io("installing signal handlers"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                let _ = events.send(Tagged {
                    generation: ANY_GENERATION,
                    event: Event::Signal(signal),
                });
            }
        })
        .map_err(Error::io("starting the signal thread"))?;
    Ok(())
}

enum InstanceEnd {
    Reset,
    Done(Outcome),
}

/// Builds one VM instance, runs it, and tears it down.
fn run_instance(
    config: &VmConfig,
    hv: &Hypervisor,
    files: &BootFiles,
    console: &Console,
    events_tx: &Sender<Tagged>,
    events_rx: &Receiver<Tagged>,
    generation: u64,
) -> Result<InstanceEnd, Error> {
    let vm = Arc::new(hv.create_vm()?);
    vm.set_x86_system_pages(layout::KVM_TSS_ADDR)?;
    vm.create_platform_irqchip()?;
    let size = config.memory.size;
    let mem = memory::create(size)?;
    memory::register(&vm, &mem)?;

    let acpi_config = arch::acpi::AcpiConfig {
        cpus: config.cpus.boot,
        mem_size: size,
    };
    let rsdp = arch::acpi::write_tables(&mem, &acpi_config)?;
    let image = BootImage {
        kernel: &files.kernel,
        initramfs: files.initramfs.as_deref(),
        cmdline: &config.cmdline,
        acpi_rsdp: Some(rsdp),
    };
    let path = config.kernel.display().to_string();
    let loaded = loader::load(&mem, size, &image).map_err(|source| Error::Load { path, source })?;
    if generation == 0 {
        tracing::info!(
            "booting {} kernel at {:#x} with {} vCPUs and {} MiB",
            loaded.format,
            loaded.entry.rip,
            config.cpus.boot,
            size >> 20
        );
    }
    mptable::write(&mem, config.cpus.boot)?;

    let stop = Arc::new(AtomicBool::new(false));
    let sink = request_sink(events_tx.clone(), generation, stop.clone());
    let buses = platform::Buses::new(
        config,
        console,
        sink,
        &vm,
        &mem,
        &files.disks,
        files.channels.as_ref(),
    )?;
    let (pio, mmio) = (buses.pio.clone(), buses.mmio.clone());
    {
        let port = console.port();
        let uart = port.lock().unwrap_or_else(|p| p.into_inner());
        vm.register_irqfd(uart.irq(), serial::COM1_IRQ)?;
    }

    let supported = hv.supported_cpuid()?;
    let topology = Topology {
        cpus: config.cpus.boot,
    };
    let mut threads: Vec<(hypervisor::Kicker, JoinHandle<Vcpu>)> = Vec::new();
    let mut start_error = None;
    for id in 0..config.cpus.boot {
        let spawned = vm.create_vcpu(id).map_err(Error::from).and_then(|vcpu| {
            vcpu::configure(
                &vcpu,
                &supported,
                topology,
                &mem,
                (id == 0).then_some(&loaded.entry),
            )?;
            let kicker = vcpu.kicker();
            let runner = VcpuRunner {
                vcpu,
                pio: pio.clone(),
                mmio: mmio.clone(),
                events: events_tx.clone(),
                generation,
                stop: stop.clone(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || runner.run())
                .map_err(Error::io("starting a vCPU thread"))?;
            Ok((kicker, handle))
        });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                start_error = Some(e);
                break;
            }
        }
    }

    let end = match start_error {
        Some(e) => Err(e),
        None => Ok(wait_for_end(events_rx, generation)),
    };
    stop_vcpus(&stop, threads);
    // Reading smaps costs a few hundred microseconds: only for a shown log line.
    let resident = tracing::enabled!(tracing::Level::INFO)
        .then(|| memory::resident_kib(&mem))
        .flatten();
    if let Some((total, guest)) = resident {
        tracing::info!(
            "memory rss_kib={total} guest_kib={guest} own_kib={}",
            total.saturating_sub(guest)
        );
    }
    // Devices (and their workers) first, then the VM and its memory slots,
    // and only then the guest RAM the slots point at.
    drop((pio, mmio, buses));
    drop(vm);
    drop(mem);
    end
}

/// Waits for the event that ends instance `generation`.
fn wait_for_end(events: &Receiver<Tagged>, generation: u64) -> InstanceEnd {
    loop {
        let Ok(tagged) = events.recv() else {
            return InstanceEnd::Done(Outcome::Fault {
                vcpu: 0,
                reason: "event channel closed".into(),
            });
        };
        if tagged.generation != generation && tagged.generation != ANY_GENERATION {
            continue;
        }
        return match tagged.event {
            Event::Guest(GuestRequest::PowerOff) => InstanceEnd::Done(Outcome::PowerOff),
            Event::Guest(GuestRequest::Reset) => InstanceEnd::Reset,
            Event::Guest(GuestRequest::DebugExit(v)) => InstanceEnd::Done(Outcome::DebugExit(v)),
            Event::Fault { vcpu, reason } => InstanceEnd::Done(Outcome::Fault { vcpu, reason }),
            Event::Signal(s) => InstanceEnd::Done(Outcome::Signal(s)),
        };
    }
}

/// Stops every vCPU: raise the stop flag, make `KVM_RUN` return, join.
fn stop_vcpus(stop: &AtomicBool, threads: Vec<(hypervisor::Kicker, JoinHandle<Vcpu>)>) {
    stop.store(true, Ordering::Release);
    for (kicker, handle) in &threads {
        // The vCPU lives until its thread is joined below, so the kicker is valid.
        kicker.request_exit();
        if let Err(e) = handle.kill(kick_signal()) {
            tracing::debug!("kicking a vCPU thread: {e}");
        }
    }
    for (_, handle) in threads {
        if handle.join().is_err() {
            tracing::error!("a vCPU thread panicked");
        }
    }
}

fn request_sink(
    events: Sender<Tagged>,
    generation: u64,
    stop: Arc<AtomicBool>,
) -> GuestRequestSink {
    let events = Mutex::new(events);
    Arc::new(move |request| {
        stop.store(true, Ordering::Release);
        let sender = events.lock().unwrap_or_else(|p| p.into_inner());
        let _ = sender.send(Tagged {
            generation,
            event: Event::Guest(request),
        });
    })
}
