//! A device worker thread: waits on its queues' eventfds, a stop eventfd
//! and a control eventfd, and runs the device's queue handler when the guest
//! notifies. A pause parks the thread once its handler has finished every
//! request in flight, so guest memory stays still until it resumes.

use sandbox::seccomp::ThreadKind;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Handles notifications of the queues a worker serves.
pub trait QueueHandler: Send + 'static {
    /// The guest notified queue number `index` (an index into the worker's list).
    fn process(&mut self, index: usize);
    /// Finishes every request in flight (their used entries written and the
    /// guest notified) before the worker parks for a pause.
    fn quiesce(&mut self);
}

/// What a worker thread is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Running,
    PauseRequested,
    Paused,
}

/// Pause requests to a worker thread and its answers.
pub(crate) struct PauseControl {
    state: Mutex<RunState>,
    changed: Condvar,
    wake: EventFd,
}

/// How long a pause waits for a worker before giving up on it (a worker
/// blocked in host I/O that long is reported, not waited on forever).
const PAUSE_TIMEOUT: Duration = Duration::from_secs(30);

impl PauseControl {
    pub(crate) fn new() -> io::Result<Arc<PauseControl>> {
        Ok(Arc::new(PauseControl {
            state: Mutex::new(RunState::Running),
            changed: Condvar::new(),
            wake: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The eventfd the worker's epoll watches for pause requests.
    pub(crate) fn event(&self) -> &EventFd {
        &self.wake
    }

    /// Asks the worker to park and waits until it has; `false` if it did not
    /// within [`PAUSE_TIMEOUT`] (or has exited).
    pub(crate) fn pause(&self, thread: Option<&JoinHandle<()>>) -> bool {
        let mut state = self.lock();
        if *state == RunState::Paused {
            return true;
        }
        *state = RunState::PauseRequested;
        let _ = self.wake.write(1);
        let deadline = std::time::Instant::now() + PAUSE_TIMEOUT;
        while *state != RunState::Paused {
            if thread.is_none_or(|t| t.is_finished()) {
                return false;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let wait = left.min(Duration::from_millis(100));
            state = self
                .changed
                .wait_timeout(state, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Lets a parked (or parking) worker continue.
    pub(crate) fn resume(&self) {
        *self.lock() = RunState::Running;
        self.changed.notify_all();
    }

    /// On the worker thread after its control event fired: if a pause is
    /// asked for, run `quiesce`, report parked and wait for the resume.
    pub(crate) fn park_if_asked(&self, quiesce: impl FnOnce()) {
        let _ = self.wake.read();
        let mut state = self.lock();
        if *state != RunState::PauseRequested {
            return;
        }
        drop(state);
        quiesce();
        state = self.lock();
        if *state != RunState::PauseRequested {
            return;
        }
        *state = RunState::Paused;
        self.changed.notify_all();
        while *state == RunState::Paused {
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Pauses every worker of a device; true when all parked. Every one is
/// asked, even after one fails, so none keeps running.
pub fn pause_all(workers: &[Worker]) -> bool {
    workers.iter().fold(true, |all, w| w.pause() & all)
}

/// Resumes every worker of a device.
pub fn resume_all(workers: &[Worker]) {
    for w in workers {
        w.resume();
    }
}

/// A running worker; dropping it stops and joins the thread.
pub struct Worker {
    stop: EventFd,
    control: Arc<PauseControl>,
    thread: Option<JoinHandle<()>>,
}

const STOP_TOKEN: u64 = u64::MAX;
const CONTROL_TOKEN: u64 = u64::MAX - 1;

impl Worker {
    /// Starts thread `name` of `kind` (its seccomp filter) serving `events`
    /// (one per queue) with `handler`.
    pub fn spawn(
        name: String,
        kind: ThreadKind,
        events: Vec<EventFd>,
        handler: impl QueueHandler,
    ) -> io::Result<Worker> {
        Worker::spawn_with_fds(name, kind, events, Vec::new(), handler)
    }

    /// Like [`Worker::spawn`], and also watches host descriptors `fds`
    /// (edge-triggered, readable or writable): their readiness calls the
    /// handler with index `events.len() + i`, nothing drained. The handler
    /// must own the descriptors, so they live as long as the thread.
    pub fn spawn_with_fds(
        name: String,
        kind: ThreadKind,
        events: Vec<EventFd>,
        fds: Vec<std::os::fd::RawFd>,
        mut handler: impl QueueHandler,
    ) -> io::Result<Worker> {
        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let control = PauseControl::new()?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd_ref(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            control.event().as_raw_fd_ref(),
            EpollEvent::new(EventSet::IN, CONTROL_TOKEN),
        )?;
        for (i, e) in events.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                e.as_raw_fd_ref(),
                EpollEvent::new(EventSet::IN, i as u64),
            )?;
        }
        let first_fd = events.len();
        for (i, fd) in fds.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                *fd,
                EpollEvent::new(
                    EventSet::IN | EventSet::OUT | EventSet::EDGE_TRIGGERED,
                    (first_fd + i) as u64,
                ),
            )?;
        }
        let fd_tokens = first_fd..first_fd + fds.len();
        let stop_fd = stop.try_clone()?;
        let thread_control = control.clone();
        let thread = sandbox::thread::spawn(kind, name, move || {
            let mut ready = [EpollEvent::default(); 8];
            loop {
                let n = match epoll.wait(-1, &mut ready) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::error!("device worker epoll failed: {e}");
                        return;
                    }
                };
                for event in &ready[..n] {
                    let token = event.data();
                    if token == STOP_TOKEN {
                        let _ = stop_fd.read();
                        return;
                    }
                    if token == CONTROL_TOKEN {
                        thread_control.park_if_asked(|| handler.quiesce());
                        continue;
                    }
                    let index = token as usize;
                    if let Some(e) = events.get(index) {
                        // Drain the counter; several notifications need one pass.
                        let _ = e.read();
                        handler.process(index);
                    } else if fd_tokens.contains(&index) {
                        handler.process(index);
                    }
                }
            }
        })?;
        Ok(Worker {
            stop,
            control,
            thread: Some(thread),
        })
    }

    /// Parks the thread once its requests in flight are done; `false` if
    /// it did not park in time.
    pub fn pause(&self) -> bool {
        self.control.pause(self.thread.as_ref())
    }

    /// Lets the thread serve its queues again.
    pub fn resume(&self) {
        self.control.resume();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        self.control.resume();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Raw file descriptor access for epoll registration.
trait AsRawFdRef {
    fn as_raw_fd_ref(&self) -> std::os::fd::RawFd;
}

impl AsRawFdRef for EventFd {
    fn as_raw_fd_ref(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{channel, Sender};
    use std::time::Duration;

    struct Forward(Sender<usize>);

    impl QueueHandler for Forward {
        fn process(&mut self, index: usize) {
            let _ = self.0.send(index);
        }
        fn quiesce(&mut self) {
            let _ = self.0.send(usize::MAX);
        }
    }

    #[test]
    fn a_paused_worker_quiesces_then_serves_nothing_until_resumed() {
        let a = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (tx, rx) = channel();
        let w = Worker::spawn(
            "test".into(),
            ThreadKind::VirtioRng,
            vec![a.try_clone().unwrap()],
            Forward(tx),
        )
        .unwrap();
        assert!(w.pause());
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(usize::MAX));
        a.write(1).unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        assert!(w.pause(), "pausing twice is harmless");
        w.resume();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(0));
        // Dropping a paused worker stops it too.
        assert!(w.pause());
        let _ = rx.recv_timeout(Duration::from_secs(5));
        drop(w);
    }

    #[test]
    fn notifications_reach_the_handler_and_drop_stops() {
        let a = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let b = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (tx, rx) = channel();
        let w = Worker::spawn(
            "test".into(),
            ThreadKind::VirtioRng,
            vec![a.try_clone().unwrap(), b.try_clone().unwrap()],
            Forward(tx),
        )
        .unwrap();
        b.write(1).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(1));
        a.write(3).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(0));
        drop(w);
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
    }
}
