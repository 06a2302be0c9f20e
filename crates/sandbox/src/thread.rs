//! Starting filtered threads.
//!
//! seccomp filters are inherited, so a thread started by a vCPU or a device
//! worker would need its parent's filter to allow everything the child does.
//! Instead, every filtered thread is started by one spawner thread, which runs
//! under the main thread's (broadest) filter; the new thread then installs its
//! own filter first. The vCPU and device filters therefore never need `clone`.

use std::io;
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

use crate::seccomp::{self, ThreadKind};

type Job = Box<dyn FnOnce() + Send>;

static SPAWNER: OnceLock<Mutex<Sender<Job>>> = OnceLock::new();

/// Starts the spawner thread. Call after [`seccomp::configure`] and before
/// the main thread enters its own filter. Without it, [`spawn`] starts
/// threads directly (tests and `--seccomp off`).
pub fn start_spawner() -> io::Result<()> {
    if SPAWNER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = channel::<Job>();
    std::thread::Builder::new()
        .name("spawner".into())
        .spawn(move || {
            seccomp::enter_or_abort(ThreadKind::Vmm);
            for job in rx {
                job();
            }
        })?;
    // A lost race leaves a second idle spawner; harmless.
    let _ = SPAWNER.set(Mutex::new(tx));
    Ok(())
}

/// Runs `f` on the spawner thread and returns its result; `None` when there
/// is no spawner. Landlock uses it: the spawner must be restricted too, as
/// threads it starts inherit its domain.
pub fn run_on_spawner<T, F>(f: F) -> Option<io::Result<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let spawner = SPAWNER.get()?;
    let (reply_tx, reply_rx) = channel();
    let job: Job = Box::new(move || {
        let _ = reply_tx.send(f());
    });
    let sent = spawner.lock().unwrap_or_else(|p| p.into_inner()).send(job);
    Some(match sent {
        Ok(()) => reply_rx
            .recv()
            .map_err(|_| io::Error::other("the spawner thread is gone")),
        Err(_) => Err(io::Error::other("the spawner thread is gone")),
    })
}

/// Starts thread `name` of `kind`: it installs `kind`'s filter, then runs `f`.
pub fn spawn<F, T>(kind: ThreadKind, name: String, f: F) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let body = move || {
        seccomp::enter_or_abort(kind);
        f()
    };
    let Some(spawner) = SPAWNER.get() else {
        return std::thread::Builder::new().name(name).spawn(body);
    };
    let (reply_tx, reply_rx) = channel();
    let job: Job = Box::new(move || {
        let _ = reply_tx.send(std::thread::Builder::new().name(name).spawn(body));
    });
    spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(job)
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawned_threads_run_and_join() {
        let h = spawn(ThreadKind::BlockIo, "t".into(), || 41 + 1).unwrap();
        assert_eq!(h.join().unwrap(), 42);
        start_spawner().unwrap();
        let h = spawn(ThreadKind::BlockIo, "t2".into(), || {
            std::thread::current().name().map(str::to_owned)
        })
        .unwrap();
        assert_eq!(h.join().unwrap().as_deref(), Some("t2"));
    }
}
