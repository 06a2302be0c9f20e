//! `fvctl`: drives a running `ferrovisor` over its API socket, one
//! subcommand per endpoint. Human output by default, `--json` for scripts.
//!
//! Exit status: 0 on success, 1 when the VMM refused or failed the request
//! (its message on stderr), 2 for bad usage or an unreachable socket.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use api::client::{Client, ClientResponse};
use clap::{Parser, Subcommand};
use serde_json::Value;

/// fvctl: control a ferrovisor VM over its API socket.
#[derive(Debug, Parser)]
#[command(name = "fvctl", version, about)]
struct Cli {
    /// The VMM's API socket (ferrovisor --api-socket).
    #[arg(long, value_name = "PATH", env = "FVCTL_API_SOCKET")]
    api_socket: PathBuf,
    /// Print the API's JSON answer instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// vmm.ping: the VMM's version and pid.
    Ping,
    /// vmm.shutdown: stop the VM, if any, and end the VMM process.
    ShutdownVmm,
    /// vm.create: define the VM from a config file (TOML if it ends in .toml, else JSON).
    Create {
        /// The config file (`fvctl info --json` output works too).
        config: PathBuf,
    },
    /// vm.boot.
    Boot,
    /// vm.pause: park every vCPU and device worker; guest time stops.
    Pause,
    /// vm.resume.
    Resume,
    /// vm.shutdown: press the power button, stop the VM by force after the timeout.
    Shutdown {
        /// Milliseconds the guest has to power off by itself.
        #[arg(long, value_name = "MS")]
        timeout_ms: Option<u64>,
    },
    /// vm.power-button: press the ACPI power button.
    PowerButton,
    /// vm.reboot: reset the VM.
    Reboot,
    /// vm.delete: stop and forget the VM.
    Delete,
    /// vm.resize: set the memory balloon's size (e.g. 256M; 0 deflates it).
    Resize {
        /// The balloon's new size (bytes, or with a K/M/G suffix).
        #[arg(long, value_name = "SIZE")]
        balloon: String,
    },
    /// vm.info: state, config and devices.
    Info,
    /// vm.counters: per-device I/O and per-vCPU exit counters.
    Counters,
}

const API: &str = "/api/v1/";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Refused(m)) => {
            eprintln!("fvctl: {m}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(m)) => {
            eprintln!("fvctl: error: {m}");
            ExitCode::from(2)
        }
    }
}

enum Failure {
    /// The VMM answered with an error.
    Refused(String),
    /// fvctl could not ask.
    Usage(String),
}

fn run(cli: &Cli) -> Result<(), Failure> {
    let (method, endpoint, body) = match &cli.command {
        Command::Ping => ("GET", "vmm.ping", None),
        Command::ShutdownVmm => ("PUT", "vmm.shutdown", None),
        Command::Create { config } => {
            let config =
                vmm::config::load_file(config).map_err(|e| Failure::Usage(e.to_string()))?;
            let body = serde_json::to_vec(&config).map_err(|e| Failure::Usage(e.to_string()))?;
            ("PUT", "vm.create", Some(body))
        }
        Command::Boot => ("PUT", "vm.boot", None),
        Command::Pause => ("PUT", "vm.pause", None),
        Command::Resume => ("PUT", "vm.resume", None),
        Command::Shutdown { timeout_ms } => {
            let body = timeout_ms.map(|ms| {
                serde_json::json!({ "timeout_ms": ms })
                    .to_string()
                    .into_bytes()
            });
            ("PUT", "vm.shutdown", body)
        }
        Command::PowerButton => ("PUT", "vm.power-button", None),
        Command::Reboot => ("PUT", "vm.reboot", None),
        Command::Delete => ("PUT", "vm.delete", None),
        Command::Resize { balloon } => {
            let bytes = vmm::config::parse_size("--balloon", balloon)
                .map_err(|e| Failure::Usage(e.to_string()))?;
            let body = serde_json::json!({ "desired_balloon": bytes })
                .to_string()
                .into_bytes();
            ("PUT", "vm.resize", Some(body))
        }
        Command::Info => ("GET", "vm.info", None),
        Command::Counters => ("GET", "vm.counters", None),
    };
    let mut client = Client::connect(&cli.api_socket)
        .map_err(|e| Failure::Usage(format!("{}: {e}", cli.api_socket.display())))?;
    // vm.shutdown may wait for the guest up to its timeout.
    let _ = client.set_timeout(Some(Duration::from_secs(3600 + 60)));
    let response = client
        .request(method, &format!("{API}{endpoint}"), body.as_deref())
        .map_err(|e| Failure::Usage(format!("{endpoint}: {e}")))?;
    if !response.is_success() {
        return Err(Failure::Refused(format!(
            "{endpoint}: HTTP {}: {}",
            response.status,
            error_message(&response)
        )));
    }
    if response.body.is_empty() {
        if cli.json {
            println!("{{}}");
        }
        return Ok(());
    }
    let value: Value = response
        .json()
        .map_err(|e| Failure::Usage(format!("{endpoint}: the answer is not JSON: {e}")))?;
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        print!("{}", human(&cli.command, &value));
    }
    Ok(())
}

fn error_message(response: &ClientResponse) -> String {
    response
        .json::<Value>()
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| response.text())
}

/// The text form of an answer.
fn human(command: &Command, v: &Value) -> String {
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    match command {
        Command::Ping => format!("ferrovisor {} (pid {})\n", s(&v["version"]), s(&v["pid"])),
        Command::Shutdown { .. } => {
            if v["forced"] == Value::Bool(true) {
                "the guest did not power off in time: stopped\n".into()
            } else {
                "the guest powered off\n".into()
            }
        }
        Command::Info => {
            let c = &v["config"];
            let mut out = format!(
                "state: {}\nboot count: {}\nkernel: {}\ncmdline: {}\nvCPUs: {}\nmemory: {} MiB\n",
                s(&v["state"]),
                s(&v["boot_count"]),
                s(&c["payload"]["kernel"]),
                s(&c["payload"]["cmdline"]),
                s(&c["cpus"]["boot_vcpus"]),
                c["memory"]["size"].as_u64().unwrap_or(0) >> 20,
            );
            if let Some(devices) = v["devices"].as_array() {
                out.push_str("devices:\n");
                for d in devices {
                    let place = match (&d["pci_bdf"], &d["io_port"]) {
                        (Value::String(bdf), _) => format!("pci {bdf}"),
                        (_, Value::Number(p)) => format!("io {:#x}", p.as_u64().unwrap_or(0)),
                        _ => String::new(),
                    };
                    out.push_str(&format!(
                        "  {:<12} {:<16} {place}\n",
                        s(&d["id"]),
                        s(&d["type"])
                    ));
                }
            }
            out
        }
        Command::Counters => {
            let mut out = String::new();
            if let Some(map) = v.as_object() {
                for (id, counters) in map {
                    let list: Vec<String> = counters
                        .as_object()
                        .map(|m| m.iter().map(|(k, n)| format!("{k}={n}")).collect())
                        .unwrap_or_default();
                    out.push_str(&format!("{id}: {}\n", list.join(" ")));
                }
            }
            out
        }
        _ => format!("{v}\n"),
    }
}
