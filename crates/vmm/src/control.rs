//! The VMM's controller: one thread that owns the VM and serialises
//! everything that changes it: requests from the control plane, guest
//! requests relayed by devices, vCPU faults and host signals. It never waits
//! on a vCPU or a client; API connections wait on it through a channel.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::time::Instant;

use devices::GuestRequest;
use hypervisor::{Hypervisor, KvmKind};
use serde_json::{json, Value};

use crate::boot_files::{self, BootFiles};
use crate::config::{RebootPolicy, VmConfig};
use crate::console::Console;
use crate::events::EventLog;
use crate::instance::{BootContext, Instance};
use crate::request::{
    PingInfo, Reply, Request, RequestError, RequestResult, RequestSender, ShutdownReport, VmInfo,
};
use crate::state::{self, Action, VmState};
use crate::{ConfigError, Error};

/// How a VMM run ended.
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
    /// `vmm.shutdown` was requested.
    VmmShutdown,
}

impl Outcome {
    /// The process exit status for this outcome.
    pub fn exit_status(&self) -> i32 {
        match self {
            Outcome::PowerOff | Outcome::RebootExit | Outcome::Signal(_) | Outcome::VmmShutdown => {
                0
            }
            Outcome::DebugExit(v) => devices::debug_exit::DebugExit::exit_status(*v),
            Outcome::Fault { .. } => crate::EXIT_GUEST_FAULT,
        }
    }
}

/// Something that happened to a VM instance.
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

/// The generation of events that concern whatever instance runs.
pub(crate) const ANY_GENERATION: u64 = u64::MAX;

/// What reaches the controller.
pub(crate) enum Msg {
    /// From the VM or the host.
    Event(Tagged),
    /// From the control plane, with where the answer goes.
    Request(Request, Sender<RequestResult>),
}

/// How the VMM process behaves.
#[derive(Default)]
pub struct VmmOptions {
    /// Whether a control plane serves requests: the process then outlives
    /// its VM (guest power-off leaves it in `shutdown`) until `vmm.shutdown`.
    pub serve_api: bool,
    /// Where lifecycle events go.
    pub event_log: EventLog,
    /// Landlock: `None` off, else on with these rules besides the VM's own
    /// paths, applied when a VM is defined.
    pub landlock: Option<Vec<sandbox::landlock::Rule>>,
}

/// The files and consoles of a booted VM, kept across reboots until `vm.delete`.
struct Prepared {
    files: BootFiles,
    console: Console,
}

/// A pending `vm.shutdown`: who waits and when the guest's time is up.
struct PendingShutdown {
    waiters: Vec<Sender<RequestResult>>,
    deadline: Instant,
}

/// The controller of one VMM process.
pub struct Vmm {
    hv: Hypervisor,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    options: VmmOptions,
    state: Option<VmState>,
    config: Option<VmConfig>,
    prepared: Option<Prepared>,
    instance: Option<Instance>,
    /// Generation of the newest instance; events of older ones are stale.
    generation: u64,
    boot_count: u64,
    shutdown: Option<PendingShutdown>,
    /// The devices announced with `device-added`, withdrawn on `vm.delete`.
    announced: Vec<crate::request::DeviceInfo>,
}

/// What the controller does after an event or a request.
enum Next {
    Continue,
    Exit(Outcome),
}

impl Vmm {
    /// Opens KVM and installs the signal handlers.
    pub fn new(options: VmmOptions) -> Result<Vmm, Error> {
        let hv = Hypervisor::open()?;
        let kind = KvmKind::detect();
        tracing::info!(
            "KVM: {kind}{}",
            if kind.is_hardware_backed() {
                ""
            } else {
                "; guest ring-0 code is emulated, expect slow guests"
            }
        );
        let (tx, rx) = channel();
        crate::signals::install(tx.clone())?;
        Ok(Vmm {
            hv,
            tx,
            rx,
            options,
            state: None,
            config: None,
            prepared: None,
            instance: None,
            generation: 0,
            boot_count: 0,
            shutdown: None,
            announced: Vec::new(),
        })
    }

    /// A handle for the control plane.
    pub fn requests(&self) -> RequestSender {
        RequestSender {
            tx: self.tx.clone(),
        }
    }

    /// Runs the controller: boots `config` at once when given, then serves
    /// events and requests until the process should end.
    pub fn run(mut self, config: Option<VmConfig>) -> Result<Outcome, Error> {
        if let Some(config) = config {
            self.create(config)?;
            self.boot()?;
        }
        loop {
            let msg = match self.shutdown.as_ref().map(|s| s.deadline) {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self.rx.recv_timeout(left) {
                        Ok(msg) => msg,
                        Err(RecvTimeoutError::Timeout) => {
                            self.stopped("forced", true);
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => return Ok(Outcome::VmmShutdown),
                    }
                }
                None => match self.rx.recv() {
                    Ok(msg) => msg,
                    Err(_) => return Ok(Outcome::VmmShutdown),
                },
            };
            let next = match msg {
                Msg::Event(t) if t.generation == self.generation => self.on_event(t.event)?,
                Msg::Event(t) if t.generation == ANY_GENERATION => self.on_event(t.event)?,
                Msg::Event(_) => Next::Continue,
                Msg::Request(request, reply) => self.on_request(request, reply),
            };
            if let Next::Exit(outcome) = next {
                return Ok(outcome);
            }
        }
    }

    fn emit(&self, event: &str, properties: Value) {
        self.options.event_log.emit("vm", event, properties);
    }

    fn check(&self, action: Action) -> Result<Option<VmState>, RequestError> {
        state::transition(self.state, action).map_err(|e| RequestError::Conflict(e.to_string()))
    }

    fn create(&mut self, config: VmConfig) -> Result<(), Error> {
        let config = config.validate()?;
        boot_files::validate_cpus(&config, &self.hv)?;
        self.config = Some(config);
        self.state = Some(VmState::Created);
        self.boot_count = 0;
        self.emit("created", Value::Null);
        Ok(())
    }

    /// Boots from `created` or `shutdown`.
    fn boot(&mut self) -> Result<(), Error> {
        let Some(config) = self.config.clone() else {
            return Err(Error::Internal("boot without a config".into()));
        };
        if self.prepared.is_none() {
            let files = boot_files::read_boot_files(&config)?;
            let console = Console::new(&config.serial)
                .map_err(|e| ConfigError::new("--serial", e.to_string()))?;
            self.prepared = Some(Prepared { files, console });
            // The VM's files are open (disks with their backing chains):
            // from here on the process reaches only what the VM needs.
            if let Some(extra) = &self.options.landlock {
                crate::isolation::apply_landlock(&config, extra)?;
            }
            crate::isolation::run_test_open_probe();
        }
        self.start_instance(&config)?;
        let first = self.boot_count == 0;
        self.boot_count += 1;
        self.state = Some(VmState::Running);
        if first {
            if let Some(instance) = &self.instance {
                self.announced = instance.devices();
                for d in &self.announced {
                    self.emit("device-added", json!(d));
                }
            }
        }
        self.emit("booted", json!({"boot_count": self.boot_count}));
        Ok(())
    }

    fn start_instance(&mut self, config: &VmConfig) -> Result<(), Error> {
        let Some(prepared) = &self.prepared else {
            return Err(Error::Internal("boot files are missing".into()));
        };
        self.generation += 1;
        let ctx = BootContext {
            hv: &self.hv,
            files: &prepared.files,
            console: &prepared.console,
            events: &self.tx,
            generation: self.generation,
        };
        self.instance = Some(Instance::start(config, ctx)?);
        Ok(())
    }

    /// Replaces the instance with a fresh one (guest reset, `vm.reboot`).
    fn restart(&mut self) -> Result<(), Error> {
        if let Some(instance) = self.instance.take() {
            instance.stop();
        }
        self.hold_serial_input(false);
        if let Some(prepared) = &self.prepared {
            let port = prepared.console.port();
            let mut uart = port.lock().unwrap_or_else(|p| p.into_inner());
            uart.reset().map_err(Error::io("resetting the UART"))?;
        }
        let Some(config) = self.config.clone() else {
            return Err(Error::Internal("reboot without a config".into()));
        };
        self.start_instance(&config)?;
        self.boot_count += 1;
        self.state = Some(VmState::Running);
        self.emit("booted", json!({"boot_count": self.boot_count}));
        Ok(())
    }

    /// The instance is gone: tear it down, enter `shutdown`, answer anyone
    /// waiting on `vm.shutdown`.
    fn stopped(&mut self, reason: &str, forced: bool) {
        if let Some(instance) = self.instance.take() {
            instance.stop();
        }
        self.hold_serial_input(false);
        if self.state.is_some() {
            self.state = Some(VmState::Shutdown);
        }
        self.emit("shutdown", json!({ "reason": reason }));
        if let Some(pending) = self.shutdown.take() {
            for waiter in pending.waiters {
                let _ = waiter.send(Ok(Reply::Shutdown(ShutdownReport { forced })));
            }
        }
    }

    /// Outside an API, the process ends with the VM; with one, it stays.
    fn end(&self, outcome: Outcome) -> Next {
        if self.options.serve_api {
            Next::Continue
        } else {
            Next::Exit(outcome)
        }
    }

    fn on_event(&mut self, event: Event) -> Result<Next, Error> {
        Ok(match event {
            Event::Guest(GuestRequest::PowerOff) => {
                self.stopped("guest power-off", false);
                self.end(Outcome::PowerOff)
            }
            Event::Guest(GuestRequest::Reset) => {
                let policy = self.config.as_ref().map(|c| c.on_reboot);
                self.emit("reset", Value::Null);
                if policy == Some(RebootPolicy::Restart) {
                    tracing::info!("guest reset: booting again");
                    if let Err(e) = self.restart() {
                        if !self.options.serve_api {
                            return Err(e);
                        }
                        tracing::error!("rebooting the guest: {e}");
                        self.stopped("reboot failed", true);
                    }
                    Next::Continue
                } else {
                    self.stopped("guest reset (on_reboot exit)", false);
                    self.end(Outcome::RebootExit)
                }
            }
            Event::Guest(GuestRequest::DebugExit(v)) => {
                self.stopped("debug exit", false);
                Next::Exit(Outcome::DebugExit(v))
            }
            Event::Fault { vcpu, reason } => {
                self.emit("guest-panic", json!({"vcpu": vcpu, "reason": reason}));
                self.stopped("guest fault", true);
                if self.options.serve_api {
                    tracing::error!("guest fault on vCPU {vcpu}: {reason}");
                }
                self.end(Outcome::Fault { vcpu, reason })
            }
            Event::Signal(s) => {
                self.stopped("host signal", true);
                Next::Exit(Outcome::Signal(s))
            }
        })
    }

    fn on_request(&mut self, request: Request, reply: Sender<RequestResult>) -> Next {
        if let Request::Shutdown { timeout } = request {
            if let Err(e) = self.request_shutdown(timeout, reply.clone()) {
                let _ = reply.send(Err(e));
            }
            return Next::Continue;
        }
        let exit = matches!(request, Request::VmmShutdown);
        let result = self.serve(request);
        let _ = reply.send(result);
        if exit {
            Next::Exit(Outcome::VmmShutdown)
        } else {
            Next::Continue
        }
    }

    fn serve(&mut self, request: Request) -> RequestResult {
        let failed = |e: Error| match e {
            Error::Config(_) | Error::Load { .. } => RequestError::BadRequest(e.to_string()),
            _ => RequestError::Failed(e.to_string()),
        };
        match request {
            Request::Ping => Ok(Reply::Ping(PingInfo {
                version: env!("CARGO_PKG_VERSION").into(),
                pid: std::process::id(),
            })),
            Request::VmmShutdown => {
                if self.instance.is_some() {
                    self.stopped("vmm shutdown", true);
                }
                Ok(Reply::Done)
            }
            Request::Create(config) => {
                self.check(Action::Create)?;
                self.create(*config).map_err(failed)?;
                Ok(Reply::Done)
            }
            Request::Boot => {
                self.check(Action::Boot)?;
                self.boot().map_err(failed)?;
                Ok(Reply::Done)
            }
            Request::Pause => {
                let next = self.check(Action::Pause)?;
                self.with_instance(Instance::pause).map_err(failed)?;
                self.hold_serial_input(true);
                self.state = next;
                self.emit("paused", Value::Null);
                Ok(Reply::Done)
            }
            Request::Resume => {
                let next = self.check(Action::Resume)?;
                self.hold_serial_input(false);
                self.with_instance(|i| {
                    i.resume();
                    Ok(())
                })
                .map_err(failed)?;
                self.state = next;
                self.emit("resumed", Value::Null);
                Ok(Reply::Done)
            }
            Request::PowerButton => {
                self.check(Action::PowerButton)?;
                self.with_instance(|i| {
                    i.press_power_button();
                    Ok(())
                })
                .map_err(failed)?;
                self.emit("power-button", Value::Null);
                Ok(Reply::Done)
            }
            Request::ResizeBalloon(bytes) => {
                self.check(Action::Resize)?;
                let memory = self.config.as_ref().map_or(0, |c| c.memory.size);
                if bytes >= memory {
                    return Err(RequestError::BadRequest(format!(
                        "desired_balloon={bytes}: must be below the guest's memory ({memory})"
                    )));
                }
                let instance = self
                    .instance
                    .as_ref()
                    .ok_or_else(|| RequestError::Failed("no running instance".into()))?;
                instance
                    .resize_balloon(bytes)
                    .map_err(RequestError::BadRequest)?;
                self.emit("balloon-resized", json!({ "size": bytes }));
                Ok(Reply::Done)
            }
            Request::Reboot => {
                self.check(Action::Reboot)?;
                if let Err(e) = self.restart() {
                    self.stopped("reboot failed", true);
                    return Err(failed(e));
                }
                Ok(Reply::Done)
            }
            Request::Delete => {
                self.check(Action::Delete)?;
                if self.instance.is_some() {
                    self.stopped("deleted", true);
                }
                self.prepared = None;
                self.config = None;
                self.state = None;
                for d in std::mem::take(&mut self.announced) {
                    self.emit("device-removed", json!(d));
                }
                self.emit("deleted", Value::Null);
                Ok(Reply::Done)
            }
            Request::Info => {
                let (Some(state), Some(config)) = (self.state, &self.config) else {
                    return Err(RequestError::Conflict("no VM is created".into()));
                };
                Ok(Reply::Info(Box::new(VmInfo {
                    state,
                    config: config.clone(),
                    boot_count: self.boot_count,
                    devices: self
                        .instance
                        .as_ref()
                        .map(Instance::devices)
                        .unwrap_or_default(),
                })))
            }
            Request::Counters => match &self.instance {
                Some(i) => Ok(Reply::Counters(i.counters())),
                None => Err(RequestError::Conflict(format!(
                    "vm.counters needs a booted VM; the VM is {}",
                    self.state
                        .map_or("not created".to_string(), |s| format!("in state {s}"))
                ))),
            },
            Request::Shutdown { .. } => Err(RequestError::Failed("misrouted request".into())),
        }
    }

    /// Keeps typed bytes out of the UART while paused (they wait in the pump).
    fn hold_serial_input(&self, hold: bool) {
        if let Some(prepared) = &self.prepared {
            let port = prepared.console.port();
            let mut uart = port.lock().unwrap_or_else(|p| p.into_inner());
            uart.set_input_paused(hold);
        }
    }

    fn with_instance(
        &mut self,
        f: impl FnOnce(&mut Instance) -> Result<(), Error>,
    ) -> Result<(), Error> {
        match self.instance.as_mut() {
            Some(i) => f(i),
            None => Err(Error::Internal("the VM has no running instance".into())),
        }
    }

    /// `vm.shutdown`: a running guest gets the power button and `timeout` to
    /// power off; a paused one is stopped at once.
    fn request_shutdown(
        &mut self,
        timeout: std::time::Duration,
        reply: Sender<RequestResult>,
    ) -> Result<(), RequestError> {
        self.check(Action::Shutdown)?;
        if self.state == Some(VmState::Paused) {
            self.stopped("shutdown while paused", true);
            let _ = reply.send(Ok(Reply::Shutdown(ShutdownReport { forced: true })));
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        match &mut self.shutdown {
            Some(pending) => {
                pending.waiters.push(reply);
                pending.deadline = pending.deadline.min(deadline);
            }
            None => {
                self.shutdown = Some(PendingShutdown {
                    waiters: vec![reply],
                    deadline,
                });
            }
        }
        if let Some(i) = &self.instance {
            i.press_power_button();
        }
        self.emit(
            "power-button",
            json!({"shutdown_timeout_ms": timeout.as_millis() as u64}),
        );
        Ok(())
    }
}
