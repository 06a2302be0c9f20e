//! The console's worker thread: one epoll over the queue eventfds, the
//! ports' host fds, a wake eventfd and a stop eventfd. Every wakeup runs the
//! engine until it would block, then re-arms exactly the host fds the held
//! chains wait for (level-triggered, so nothing is missed and nothing spins).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::control::RateLimit;
use super::engine::Engine;
use super::host::Interest;
use crate::worker::PauseControl;

const STOP: u64 = u64::MAX;
const WAKE: u64 = u64::MAX - 1;
const CONTROL: u64 = u64::MAX - 2;

/// A running console worker; dropping it stops and joins the thread.
pub(super) struct ConsoleWorker {
    stop: EventFd,
    wake: EventFd,
    control: Arc<PauseControl>,
    thread: Option<JoinHandle<()>>,
}

impl ConsoleWorker {
    /// Starts the thread serving `engine`, woken by `events` (queue index, eventfd).
    pub fn spawn(engine: Engine, events: Vec<(u16, EventFd)>) -> io::Result<ConsoleWorker> {
        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let wake = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let control = PauseControl::new()?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            control.event().as_raw_fd(),
            EpollEvent::new(EventSet::IN, CONTROL),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, WAKE),
        )?;
        let mut queues = HashMap::new();
        for (index, event) in events {
            let token = u64::from(index);
            epoll.ctl(
                ControlOperation::Add,
                event.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token),
            )?;
            queues.insert(token, event);
        }
        let stop_fd = stop.try_clone()?;
        let wake_fd = wake.try_clone()?;
        let thread_control = control.clone();
        let thread = sandbox::thread::spawn(
            sandbox::seccomp::ThreadKind::VirtioConsole,
            "virtio-console".into(),
            move || {
                let fds = Fds {
                    stop: &stop_fd,
                    wake: &wake_fd,
                    control: &thread_control,
                };
                run(&epoll, engine, &queues, fds)
            },
        )?;
        Ok(ConsoleWorker {
            stop,
            wake,
            control,
            thread: Some(thread),
        })
    }

    /// Parks the thread (it serves chains synchronously, so nothing is in
    /// flight); `false` if it did not park in time.
    pub fn pause(&self) -> bool {
        self.control.pause(self.thread.as_ref())
    }

    /// Lets the thread run again.
    pub fn resume(&self) {
        self.control.resume();
    }

    /// Makes the thread run the engine again (new `emerg_wr` bytes).
    pub fn wake(&self) {
        let _ = self.wake.write(1);
    }
}

impl Drop for ConsoleWorker {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        self.control.resume();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("virtio-console: the worker thread panicked");
            }
        }
    }
}

/// The worker's own eventfds.
struct Fds<'a> {
    stop: &'a EventFd,
    wake: &'a EventFd,
    control: &'a PauseControl,
}

fn run(epoll: &Epoll, mut engine: Engine, queues: &HashMap<u64, EventFd>, fds: Fds) {
    let Fds {
        stop,
        wake,
        control,
    } = fds;
    let mut registry = Registry::default();
    let mut ready = [EpollEvent::default(); 32];
    loop {
        engine.pump();
        registry.sync(epoll, &engine.interests());
        let n = match epoll.wait(-1, &mut ready) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("virtio-console: worker epoll failed: {e}");
                return;
            }
        };
        for event in &ready[..n] {
            match event.data() {
                STOP => {
                    let _ = stop.read();
                    return;
                }
                WAKE => {
                    let _ = wake.read();
                }
                CONTROL => control.park_if_asked(|| {}),
                token => match queues.get(&token) {
                    // Drain the counter; the pump serves every queue.
                    Some(e) => {
                        let _ = e.read();
                    }
                    None => engine.host_event(token, event.events()),
                },
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Registered {
    fd: RawFd,
    generation: u64,
    events: u32,
    /// epoll accepted it (regular files and /dev/null cannot be polled:
    /// they never block, so the pump simply retries them).
    added: bool,
}

/// The host fds registered with the epoll, by token.
#[derive(Default)]
struct Registry {
    current: HashMap<u64, Registered>,
    warn: RateLimit,
}

impl Registry {
    fn sync(&mut self, epoll: &Epoll, wanted: &[Interest]) {
        // Removals first: a new fd may reuse the number of a closed one.
        let stale: Vec<u64> = self
            .current
            .iter()
            .filter(|(token, r)| {
                !wanted
                    .iter()
                    .any(|w| w.token == **token && w.fd == r.fd && w.generation == r.generation)
            })
            .map(|(token, _)| *token)
            .collect();
        for token in stale {
            if let Some(r) = self.current.remove(&token) {
                if r.added {
                    // Fails harmlessly when closing the fd already removed it.
                    let _ = epoll.ctl(ControlOperation::Delete, r.fd, EpollEvent::default());
                }
            }
        }
        for w in wanted {
            let event = EpollEvent::new(EventSet::from_bits_truncate(w.events), w.token);
            match self.current.get_mut(&w.token) {
                Some(r) if r.events == w.events => {}
                Some(r) => {
                    r.events = w.events;
                    if r.added {
                        if let Err(e) = epoll.ctl(ControlOperation::Modify, w.fd, event) {
                            r.added = epoll.ctl(ControlOperation::Add, w.fd, event).is_ok();
                            if !r.added && self.warn.allow() {
                                tracing::warn!("virtio-console: epoll modify failed: {e}");
                            }
                        }
                    }
                }
                None => {
                    let added = match epoll.ctl(ControlOperation::Add, w.fd, event) {
                        Ok(()) => true,
                        Err(e) => {
                            if e.raw_os_error() != Some(libc::EPERM) && self.warn.allow() {
                                tracing::warn!("virtio-console: epoll add failed: {e}");
                            }
                            false
                        }
                    };
                    self.current.insert(
                        w.token,
                        Registered {
                            fd: w.fd,
                            generation: w.generation,
                            events: w.events,
                            added,
                        },
                    );
                }
            }
        }
    }
}
