//! What the control plane can ask of the VMM, and what it answers: the
//! transport-neutral side of the HTTP API (the `api` crate maps routes to
//! these). Answers are serde types, so they are the API's JSON bodies.

use std::collections::BTreeMap;
use std::sync::mpsc::{channel, Sender};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::state::VmState;

/// A request to the VMM's controller.
#[derive(Debug)]
pub enum Request {
    /// `vmm.ping`.
    Ping,
    /// `vmm.shutdown`: stop the VM, if any, and end the process.
    VmmShutdown,
    /// `vm.create`: store a validated configuration.
    Create(Box<VmConfig>),
    /// `vm.boot`.
    Boot,
    /// `vm.pause`.
    Pause,
    /// `vm.resume`.
    Resume,
    /// `vm.shutdown`: press the power button, force the stop after `timeout`.
    Shutdown {
        /// How long the guest has to power off by itself.
        timeout: Duration,
    },
    /// `vm.power-button`.
    PowerButton,
    /// `vm.reboot`.
    Reboot,
    /// `vm.delete`.
    Delete,
    /// `vm.resize`: the balloon's new target size in bytes.
    ResizeBalloon(u64),
    /// `vm.info`.
    Info,
    /// `vm.counters`.
    Counters,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Reply {
    /// Done; nothing to report (HTTP 204).
    Done,
    /// `vmm.ping`.
    Ping(PingInfo),
    /// `vm.info`.
    Info(Box<VmInfo>),
    /// `vm.counters`: device or vCPU id → counter name → value.
    Counters(BTreeMap<String, BTreeMap<String, u64>>),
    /// `vm.shutdown`: how the VM stopped.
    Shutdown(ShutdownReport),
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The request is wrong (a bad config, a bad body): HTTP 400.
    #[error("{0}")]
    BadRequest(String),
    /// The VM's state does not allow it: HTTP 409.
    #[error("{0}")]
    Conflict(String),
    /// The VMM failed doing it: HTTP 500.
    #[error("{0}")]
    Failed(String),
    /// The controller is gone (the VMM is exiting): HTTP 503.
    #[error("the VMM is shutting down")]
    Unavailable,
}

/// The answer to a request.
pub type RequestResult = Result<Reply, RequestError>;

/// `vmm.ping`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingInfo {
    /// The VMM's version.
    pub version: String,
    /// Its process id.
    pub pid: u32,
}

/// `vm.info`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    /// The VM's state.
    pub state: VmState,
    /// The configuration (feed it back as `--config` or to `vm.create`).
    pub config: VmConfig,
    /// Boots of this VM since `vm.create`, reboots included.
    pub boot_count: u64,
    /// Every device, once booted.
    pub devices: Vec<DeviceInfo>,
}

/// One device of a booted VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Its id (what `vm.remove-device` and `vm.counters` use).
    pub id: String,
    /// What it is (`virtio-blk`, `virtio-rng`, `virtio-console`, `serial`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// PCI address (`0000:00:01.0`) of a PCI device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_bdf: Option<String>,
    /// First I/O port of a legacy device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_port: Option<u16>,
}

/// How `vm.shutdown` ended the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownReport {
    /// `true`: the guest did not power off within the timeout and was stopped.
    pub forced: bool,
}

/// A handle that sends requests to the controller and waits for answers;
/// cheap to clone into every API connection.
#[derive(Clone)]
pub struct RequestSender {
    pub(crate) tx: Sender<crate::control::Msg>,
}

impl RequestSender {
    /// Sends `request` and waits for its answer.
    pub fn call(&self, request: Request) -> RequestResult {
        let (reply_tx, reply_rx) = channel();
        self.tx
            .send(crate::control::Msg::Request(request, reply_tx))
            .map_err(|_| RequestError::Unavailable)?;
        reply_rx.recv().unwrap_or(Err(RequestError::Unavailable))
    }
}
