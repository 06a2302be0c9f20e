//! Host signals: the real-time signal that kicks vCPU threads out of
//! `KVM_RUN`, and SIGTERM/SIGINT/SIGHUP, which stop the VMM cleanly.

use std::sync::mpsc::Sender;

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::control::{Event, Msg, Tagged, ANY_GENERATION};
use crate::Error;

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal that interrupts a vCPU's `KVM_RUN`.
pub(crate) fn kick_signal() -> i32 {
    SIGRTMIN()
}

/// Installs the kick handler and a thread that turns termination signals
/// into events for the controller.
pub(crate) fn install(events: Sender<Msg>) -> Result<(), Error> {
    register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| Error::Internal(format!("installing the vCPU kick handler: {e}")))?;
    let mut signals =
        signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT, libc::SIGHUP])
            .map_err(Error::io("installing signal handlers"))?;
    sandbox::thread::spawn(
        sandbox::seccomp::ThreadKind::Signals,
        "signals".into(),
        move || {
            for signal in signals.forever() {
                let _ = events.send(Msg::Event(Tagged {
                    generation: ANY_GENERATION,
                    event: Event::Signal(signal),
                }));
            }
        },
    )
    .map_err(Error::io("starting the signal thread"))?;
    Ok(())
}
