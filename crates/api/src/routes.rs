//! The API's routes under `/api/v1/` (Cloud Hypervisor's endpoint names),
//! as one table that the server dispatches on and the OpenAPI test checks.
//! Each route turns an HTTP request into a [`vmm::request::Request`] and the
//! controller's answer into a response.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Deserialize;
use vmm::request::{Reply, Request as VmmRequest, RequestError, RequestSender};

use crate::http::{Request, Response};
use crate::server::Handler;

/// The prefix of every route.
pub const PREFIX: &str = "/api/v1/";

/// What a route does with its request.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// Sends this request to the controller (the body must be empty).
    Simple(fn() -> VmmRequest),
    /// `vm.create`: the body is the VM config.
    Create,
    /// `vm.shutdown`: an optional `{"timeout_ms": N}` body.
    Shutdown,
    /// `vmm.shutdown`: answered first, acted on after the answer is sent.
    VmmShutdown,
    /// `vm.resize`: `{"desired_balloon": bytes}`.
    Resize,
    /// Reserved for a capability that is not built yet: 501.
    Reserved,
}

/// One endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// Its name after [`PREFIX`], e.g. `vm.info`.
    pub name: &'static str,
    /// The HTTP method.
    pub method: &'static str,
    /// What it does.
    pub action: Action,
}

const fn route(name: &'static str, method: &'static str, action: Action) -> Route {
    Route {
        name,
        method,
        action,
    }
}

/// Every endpoint.
pub const ROUTES: &[Route] = &[
    route("vmm.ping", "GET", Action::Simple(|| VmmRequest::Ping)),
    route("vmm.shutdown", "PUT", Action::VmmShutdown),
    route("vm.create", "PUT", Action::Create),
    route("vm.boot", "PUT", Action::Simple(|| VmmRequest::Boot)),
    route("vm.pause", "PUT", Action::Simple(|| VmmRequest::Pause)),
    route("vm.resume", "PUT", Action::Simple(|| VmmRequest::Resume)),
    route("vm.shutdown", "PUT", Action::Shutdown),
    route(
        "vm.power-button",
        "PUT",
        Action::Simple(|| VmmRequest::PowerButton),
    ),
    route("vm.reboot", "PUT", Action::Simple(|| VmmRequest::Reboot)),
    route("vm.delete", "PUT", Action::Simple(|| VmmRequest::Delete)),
    route("vm.info", "GET", Action::Simple(|| VmmRequest::Info)),
    route(
        "vm.counters",
        "GET",
        Action::Simple(|| VmmRequest::Counters),
    ),
    route("vm.add-disk", "PUT", Action::Reserved),
    route("vm.add-net", "PUT", Action::Reserved),
    route("vm.add-device", "PUT", Action::Reserved),
    route("vm.remove-device", "PUT", Action::Reserved),
    route("vm.resize", "PUT", Action::Resize),
    route("vm.snapshot", "PUT", Action::Reserved),
    route("vm.restore", "PUT", Action::Reserved),
    route("vm.send-migration", "PUT", Action::Reserved),
    route("vm.receive-migration", "PUT", Action::Reserved),
];

/// The default time `vm.shutdown` gives the guest to power off.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `timeout_ms` accepted (one hour).
pub const MAX_SHUTDOWN_TIMEOUT_MS: u64 = 3_600_000;

/// `vm.shutdown`'s optional body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownBody {
    /// How long the guest has to power off after the button press.
    pub timeout_ms: Option<u64>,
}

/// `vm.resize`'s body (Cloud Hypervisor's names; only the balloon for now).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeBody {
    /// The balloon's new size in bytes.
    pub desired_balloon: Option<u64>,
    /// vCPU hotplug (not supported yet).
    pub desired_vcpus: Option<u32>,
    /// Memory hotplug (not supported yet).
    pub desired_ram: Option<u64>,
}

/// Serves the routes by sending requests to the VMM's controller.
pub struct Router {
    vmm: RequestSender,
    /// Set when `vmm.shutdown` was answered and the controller must be told.
    exit_requested: AtomicBool,
}

impl Router {
    /// A router in front of the controller `vmm`.
    pub fn new(vmm: RequestSender) -> Router {
        Router {
            vmm,
            exit_requested: AtomicBool::new(false),
        }
    }

    fn call(&self, request: VmmRequest) -> Response {
        match self.vmm.call(request) {
            Ok(Reply::Done) => Response::empty(204),
            Ok(Reply::Ping(p)) => Response::json(200, &p),
            Ok(Reply::Info(i)) => Response::json(200, &i),
            Ok(Reply::Counters(c)) => Response::json(200, &c),
            Ok(Reply::Shutdown(s)) => Response::json(200, &s),
            Err(e) => error_response(&e),
        }
    }
}

/// The status code of a controller error.
pub fn error_response(e: &RequestError) -> Response {
    let status = match e {
        RequestError::BadRequest(_) => 400,
        RequestError::Conflict(_) => 409,
        RequestError::Failed(_) => 500,
        RequestError::Unavailable => 503,
    };
    Response::error(status, e.to_string())
}

/// Whether `body` counts as no body: empty, whitespace or `{}`.
fn is_empty_body(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    let t = text.trim();
    t.is_empty() || t.chars().filter(|c| !c.is_whitespace()).collect::<String>() == "{}"
}

/// Parses a JSON body into `T`, naming the failing field.
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            format!("{}", e.inner())
        } else {
            format!("{path}: {}", e.inner())
        }
    })?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

fn json_content_type(request: &Request) -> bool {
    request.header("content-type").is_none_or(|t| {
        t.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    })
}

impl Handler for Router {
    fn handle(&self, request: &Request) -> Response {
        let Some(name) = request.path.strip_prefix(PREFIX) else {
            return Response::error(
                404,
                format!("no route {}; the API is under {PREFIX}", request.path),
            );
        };
        let matching: Vec<&Route> = ROUTES.iter().filter(|r| r.name == name).collect();
        if matching.is_empty() {
            return Response::error(404, format!("unknown endpoint {name}"));
        }
        let Some(route) = matching.iter().find(|r| r.method == request.method) else {
            let allowed: Vec<&str> = matching.iter().map(|r| r.method).collect();
            let mut response = Response::error(
                405,
                format!(
                    "{name} takes {}, not {}",
                    allowed.join(", "),
                    request.method
                ),
            );
            response.allow = Some(allowed.join(", "));
            return response;
        };
        if !request.body.is_empty() && !json_content_type(request) {
            return Response::error(415, "bodies must be application/json");
        }
        match route.action {
            Action::Simple(make) => {
                if !is_empty_body(&request.body) {
                    return Response::error(400, format!("{name} takes no body"));
                }
                self.call(make())
            }
            Action::Create => {
                if request.body.is_empty() {
                    return Response::error(400, "vm.create needs the VM config as its body");
                }
                let value: serde_json::Value = match parse_body(&request.body) {
                    Ok(v) => v,
                    Err(e) => return Response::error(400, format!("vm.create: {e}")),
                };
                match vmm::config::from_document(value) {
                    Ok(config) => self.call(VmmRequest::Create(Box::new(config))),
                    Err(e) => Response::error(400, format!("vm.create: {e}")),
                }
            }
            Action::Shutdown => {
                let timeout = if is_empty_body(&request.body) {
                    DEFAULT_SHUTDOWN_TIMEOUT
                } else {
                    match parse_body::<ShutdownBody>(&request.body) {
                        Ok(ShutdownBody {
                            timeout_ms: Some(ms),
                        }) if ms > MAX_SHUTDOWN_TIMEOUT_MS => {
                            return Response::error(
                                400,
                                format!(
                                    "vm.shutdown: timeout_ms: at most {MAX_SHUTDOWN_TIMEOUT_MS}"
                                ),
                            )
                        }
                        Ok(b) => b
                            .timeout_ms
                            .map_or(DEFAULT_SHUTDOWN_TIMEOUT, Duration::from_millis),
                        Err(e) => return Response::error(400, format!("vm.shutdown: {e}")),
                    }
                };
                self.call(VmmRequest::Shutdown { timeout })
            }
            Action::Resize => {
                let body: ResizeBody = match parse_body(&request.body) {
                    Ok(b) => b,
                    Err(e) => return Response::error(400, format!("vm.resize: {e}")),
                };
                if body.desired_vcpus.is_some() || body.desired_ram.is_some() {
                    return Response::error(
                        400,
                        "vm.resize: desired_vcpus and desired_ram are not supported yet; desired_balloon is",
                    );
                }
                match body.desired_balloon {
                    Some(bytes) => self.call(VmmRequest::ResizeBalloon(bytes)),
                    None => Response::error(400, "vm.resize: desired_balloon is required"),
                }
            }
            Action::VmmShutdown => {
                if !is_empty_body(&request.body) {
                    return Response::error(400, format!("{name} takes no body"));
                }
                self.exit_requested.store(true, Ordering::SeqCst);
                let mut response = Response::empty(204);
                response.close = true;
                response
            }
            Action::Reserved => Response::error(
                501,
                format!("{name} is reserved for a later release and not implemented yet"),
            ),
        }
    }

    fn responded(&self, request: &Request, _response: &Response) {
        if request.path.strip_prefix(PREFIX) == Some("vmm.shutdown")
            && self.exit_requested.swap(false, Ordering::SeqCst)
        {
            let _ = self.vmm.call(VmmRequest::VmmShutdown);
        }
    }
}
