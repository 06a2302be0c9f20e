//! A device worker thread: waits on its queues' eventfds and a stop eventfd,
//! and runs the device's queue handler when the guest notifies.

use std::io;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Handles notifications of the queues a worker serves.
pub trait QueueHandler: Send + 'static {
    /// The guest notified queue number `index` (an index into the worker's list).
    fn process(&mut self, index: usize);
}

/// A running worker; dropping it stops and joins the thread.
pub struct Worker {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

const STOP_TOKEN: u64 = u64::MAX;

impl Worker {
    /// Starts thread `name` serving `events` (one per queue) with `handler`.
    pub fn spawn(
        name: String,
        events: Vec<EventFd>,
        mut handler: impl QueueHandler,
    ) -> io::Result<Worker> {
        let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd_ref(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        for (i, e) in events.iter().enumerate() {
            epoll.ctl(
                ControlOperation::Add,
                e.as_raw_fd_ref(),
                EpollEvent::new(EventSet::IN, i as u64),
            )?;
        }
        let stop_fd = stop.try_clone()?;
        let thread = std::thread::Builder::new().name(name).spawn(move || {
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
                    let index = token as usize;
                    if let Some(e) = events.get(index) {
                        // Drain the counter; several notifications need one pass.
                        let _ = e.read();
                        handler.process(index);
                    }
                }
            }
        })?;
        Ok(Worker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
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
    }

    #[test]
    fn notifications_reach_the_handler_and_drop_stops() {
        let a = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let b = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (tx, rx) = channel();
        let w = Worker::spawn(
            "test".into(),
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
