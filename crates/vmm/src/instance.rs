//! One running VM instance: KVM VM, guest RAM, devices and vCPU threads,
//! built from the configuration and torn down in order. A reboot replaces
//! the instance; the files and consoles it was built from live on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arch::loader::{self, BootImage};
use arch::{layout, mptable, GuestMemory};
use devices::{serial, GuestRequestSink};
use hypervisor::{Hypervisor, Kicker, Vcpu, Vm};
use vm_device::Counters;
use vmm_sys_util::signal::Killable;

use crate::boot_files::BootFiles;
use crate::config::VmConfig;
use crate::console::Console;
use crate::control::{Event, Msg, Tagged};
use crate::platform;
use crate::request::DeviceInfo;
use crate::vcpu::{self, VcpuGate, VcpuRunner};
use crate::{memory, Error};

/// How long a pause waits for the vCPUs to leave the guest.
const VCPU_PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A VM instance that is running or paused.
///
/// Fields drop in declaration order, which is the teardown order: devices
/// (and their workers) first, then the VM and its memory slots, and only
/// then the guest RAM the slots point at.
pub(crate) struct Instance {
    buses: platform::Buses,
    threads: Vec<(Kicker, JoinHandle<Vcpu>)>,
    stop: Arc<AtomicBool>,
    gate: Arc<VcpuGate>,
    vcpu_counters: Vec<Arc<Counters>>,
    /// Guest time when paused (`None` inside: KVM could not read it).
    paused_clock: Option<Option<hypervisor::kvm_bindings::kvm_clock_data>>,
    vm: Arc<Vm>,
    mem: GuestMemory,
}

/// What building an instance needs besides the configuration.
pub(crate) struct BootContext<'a> {
    pub hv: &'a Hypervisor,
    pub files: &'a BootFiles,
    pub console: &'a Console,
    pub events: &'a Sender<Msg>,
    pub generation: u64,
}

impl Instance {
    /// Builds the instance and starts its vCPUs.
    pub fn start(config: &VmConfig, ctx: BootContext) -> Result<Instance, Error> {
        let vm = Arc::new(ctx.hv.create_vm()?);
        vm.set_x86_system_pages(layout::KVM_TSS_ADDR)?;
        vm.create_platform_irqchip()?;
        let size = config.memory.size;
        let mem = memory::create(&config.memory)?;
        memory::register(&vm, &mem)?;

        let topology = config.cpus.topology();
        let apic_ids: Vec<u32> = (0..config.cpus.max_vcpus())
            .map(|i| topology.apic_id(i))
            .collect();
        let acpi_config = arch::acpi::AcpiConfig {
            cpus: config.cpus.boot,
            apic_ids: apic_ids.clone(),
            mem_size: size,
        };
        let rsdp = arch::acpi::write_tables(&mem, &acpi_config)?;
        let image = BootImage {
            kernel: &ctx.files.kernel,
            initramfs: ctx.files.initramfs.as_deref(),
            cmdline: &config.payload.cmdline,
            acpi_rsdp: Some(rsdp),
        };
        let path = config.payload.kernel.display().to_string();
        let loaded =
            loader::load(&mem, size, &image).map_err(|source| Error::Load { path, source })?;
        tracing::info!(
            "booting {} kernel at {:#x} with {} vCPUs and {} MiB",
            loaded.format,
            loaded.entry.rip,
            config.cpus.boot,
            size >> 20
        );
        // The MP table has 8-bit APIC IDs: guests past them use the MADT.
        let boot_ids = &apic_ids[..config.cpus.boot as usize];
        if let Err(e) = mptable::write(&mem, boot_ids) {
            tracing::debug!("no MP table: {e}");
        }

        let stop = Arc::new(AtomicBool::new(false));
        let sink = request_sink(ctx.events.clone(), ctx.generation, stop.clone());
        let buses = platform::Buses::new(config, ctx.console, sink, &vm, &mem, ctx.files)?;
        {
            let port = ctx.console.port();
            let uart = port.lock().unwrap_or_else(|p| p.into_inner());
            vm.register_irqfd(uart.irq(), serial::COM1_IRQ)?;
        }
        let mut instance = Instance {
            buses,
            threads: Vec::new(),
            stop,
            gate: Arc::new(VcpuGate::default()),
            vcpu_counters: Vec::new(),
            paused_clock: None,
            vm,
            mem,
        };
        // On an error the instance drops, which stops the vCPUs already started.
        instance.start_vcpus(config, &ctx, &loaded.entry)?;
        Ok(instance)
    }

    fn start_vcpus(
        &mut self,
        config: &VmConfig,
        ctx: &BootContext,
        entry: &arch::cpu::EntryPoint,
    ) -> Result<(), Error> {
        // Every vCPU exists and is configured before any runs: INIT/SIPI
        // the boot vCPU sends to a vCPU not created yet would be lost.
        let topology = config.cpus.topology();
        let mut cpuid = None;
        let mut vcpus = Vec::with_capacity(config.cpus.boot as usize);
        for index in 0..config.cpus.boot {
            // KVM's vCPU ID is the APIC ID.
            let vcpu = self.vm.create_vcpu(topology.apic_id(index))?;
            let cpuid = match &cpuid {
                Some(c) => c,
                None => cpuid.insert(crate::cpu_model::vm_cpuid(ctx.hv, &config.cpus, &vcpu)?),
            };
            vcpu::configure(
                &vcpu,
                cpuid,
                (index, topology),
                &self.mem,
                (index == 0).then_some(entry),
            )?;
            if index == 0 && ctx.generation <= 1 {
                let named = config.cpus.model != "host";
                crate::cpu_model::warn_if_overridden(&vcpu, cpuid, named);
            }
            vcpus.push(vcpu);
            self.vcpu_counters
                .push(Arc::new(Counters::new(vcpu::COUNTER_NAMES)));
        }
        // Application processors first, the boot vCPU last.
        for (index, vcpu) in vcpus.into_iter().enumerate().rev() {
            let kicker = vcpu.kicker();
            let counters = self.vcpu_counters[index].clone();
            let runner = VcpuRunner {
                vcpu,
                pio: self.buses.pio.clone(),
                mmio: self.buses.mmio.clone(),
                events: ctx.events.clone(),
                generation: ctx.generation,
                stop: self.stop.clone(),
                gate: self.gate.clone(),
                counters,
            };
            let handle = sandbox::thread::spawn(
                sandbox::seccomp::ThreadKind::Vcpu,
                format!("vcpu{index}"),
                move || runner.run(),
            )
            .map_err(Error::io("starting a vCPU thread"))?;
            self.threads.push((kicker, handle));
        }
        Ok(())
    }

    fn kick_all(&self) {
        for (kicker, handle) in &self.threads {
            // The vCPU lives until its thread is joined, so the kicker is valid.
            kicker.request_exit();
            if let Err(e) = handle.kill(crate::signals::kick_signal()) {
                tracing::debug!("kicking a vCPU thread: {e}");
            }
        }
    }

    /// Parks every vCPU, then every device worker, and freezes guest time.
    pub fn pause(&mut self) -> Result<(), Error> {
        if self.paused_clock.is_some() {
            return Ok(());
        }
        self.gate.close();
        self.kick_all();
        let threads = &self.threads;
        let running = || threads.iter().filter(|(_, h)| !h.is_finished()).count();
        if !self.gate.wait_parked(running, VCPU_PAUSE_TIMEOUT) {
            self.gate.open();
            return Err(Error::Internal("the vCPUs did not stop within 10 s".into()));
        }
        let pci = self.buses.pci.lock().unwrap_or_else(|p| p.into_inner());
        if !pci.pause_all() {
            pci.resume_all();
            drop(pci);
            self.gate.open();
            return Err(Error::Internal(
                "a device worker did not finish its requests in time".into(),
            ));
        }
        drop(pci);
        let clock = match self.vm.clock() {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("guest time keeps running while paused: {e}");
                None
            }
        };
        self.paused_clock = Some(clock);
        Ok(())
    }

    /// Restores guest time, then resumes the devices and the vCPUs.
    pub fn resume(&mut self) {
        let Some(clock) = self.paused_clock.take() else {
            return;
        };
        if let Some(clock) = clock {
            if let Err(e) = self.vm.set_clock(&clock) {
                tracing::warn!("guest time jumps over the pause: {e}");
            }
        }
        self.buses
            .pci
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .resume_all();
        self.gate.open();
    }

    /// Presses the ACPI power button (the guest sees an SCI if it enabled it).
    pub fn press_power_button(&self) {
        self.buses
            .power
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .press_power_button();
    }

    /// Sets the balloon's target size.
    pub fn resize_balloon(&self, bytes: u64) -> Result<(), String> {
        match &self.buses.balloon {
            Some(b) => b.resize(bytes),
            None => Err("the VM has no balloon (--balloon)".into()),
        }
    }

    /// Every device of the instance.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.buses.devices.iter().map(|(d, _)| d.clone()).collect()
    }

    /// Counters of every device that has them and of every vCPU. The
    /// balloon is asked for fresh guest statistics for the next call.
    pub fn counters(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        if let Some(b) = &self.buses.balloon {
            b.request_stats();
        }
        let to_map = |c: &Counters| {
            c.snapshot()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect::<BTreeMap<_, _>>()
        };
        let mut all = BTreeMap::new();
        for (info, counters) in &self.buses.devices {
            if let Some(c) = counters {
                all.insert(info.id.clone(), to_map(c));
            }
        }
        for (i, c) in self.vcpu_counters.iter().enumerate() {
            all.insert(format!("vcpu{i}"), to_map(c));
        }
        all
    }

    /// Stops the vCPUs and tears the instance down.
    pub fn stop(self) {
        drop(self);
    }

    fn stop_vcpus(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Parked vCPUs see the stop flag once woken.
        self.gate.open();
        self.kick_all();
        for (_, handle) in self.threads.drain(..) {
            if handle.join().is_err() {
                tracing::error!("a vCPU thread panicked");
            }
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Paused device workers stop all the same: dropping a worker wakes it.
        self.stop_vcpus();
        // Reading smaps costs a few hundred microseconds: only for a shown log line.
        let resident = tracing::enabled!(tracing::Level::INFO)
            .then(|| memory::resident_kib(&self.mem))
            .flatten();
        if let Some((total, guest)) = resident {
            tracing::info!(
                "memory rss_kib={total} guest_kib={guest} own_kib={}",
                total.saturating_sub(guest)
            );
        }
    }
}

fn request_sink(events: Sender<Msg>, generation: u64, stop: Arc<AtomicBool>) -> GuestRequestSink {
    let events = Mutex::new(events);
    Arc::new(move |request| {
        stop.store(true, Ordering::Release);
        let sender = events.lock().unwrap_or_else(|p| p.into_inner());
        let _ = sender.send(Msg::Event(Tagged {
            generation,
            event: Event::Guest(request),
        }));
    })
}
