//! The jail: one VM process in its own mount, PID, IPC and UTS namespaces
//! (optionally a network namespace), its root pivoted into a per-VM
//! directory holding only that VM's files, every capability dropped, running
//! as a uid/gid of its own and inside its own cgroup.
//!
//! The files given to the jail are bind-mounted into its root and handed to
//! the VM's uid (as libvirt's DAC driver does); with modes that keep other
//! users out (0600), two jailed VMs cannot open each other's disks even
//! through a path they could see, and they cannot see each other's paths.

use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::cgroup::{Group, Layout, Limits};

/// What to jail and how.
#[derive(Debug, Clone)]
pub struct JailSpec {
    /// The VM's name: its directory, hostname and cgroup (letters, digits,
    /// `-` and `_`, at most 64).
    pub id: String,
    /// The directory holding every jail (`<base>/<id>/root` is this one's root).
    pub base: PathBuf,
    /// The uid the VMM runs as (not 0).
    pub uid: u32,
    /// The gid the VMM runs as (not 0).
    pub gid: u32,
    /// The VMM binary on the host; it is `/ferrovisor` in the jail.
    pub exec: PathBuf,
    /// Host files and the names they get in the jail's root.
    pub files: Vec<JailFile>,
    /// A network namespace to join (a path like `/run/netns/NAME`).
    pub netns: Option<PathBuf>,
    /// Resource limits for the VM's cgroup.
    pub limits: Limits,
    /// Arguments for the VMM (paths as seen inside the jail).
    pub args: Vec<OsString>,
}

/// A host file given to a jailed VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailFile {
    /// The file on the host.
    pub host: PathBuf,
    /// Its name in the jail's root.
    pub name: String,
    /// Bound read-only and left with its owner (a kernel, an ISO); else
    /// bound read-write and handed to the VM's uid/gid (a disk).
    pub read_only: bool,
}

/// Host directories of shared libraries, bound read-only into every jail so
/// a dynamically linked VMM starts.
const LIBRARY_DIRS: &[&str] = &["/lib", "/lib64", "/usr/lib", "/usr/lib64"];

/// Character devices a VMM needs: path, major, minor.
const DEVICES: &[(&str, u32, u32)] = &[("dev/kvm", 10, 232), ("dev/net/tun", 10, 200)];

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

fn checked<T: Default + PartialOrd>(r: T, what: &str) -> io::Result<T> {
    if r < T::default() {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(r)
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| invalid(format!("{}: contains a NUL byte", path.display())))
}

fn validate(spec: &JailSpec) -> io::Result<()> {
    let id_ok = !spec.id.is_empty()
        && spec.id.len() <= 64
        && spec
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !id_ok {
        return Err(invalid(format!(
            "--id {:?}: use 1 to 64 letters, digits, '-' or '_'",
            spec.id
        )));
    }
    if spec.uid == 0 || spec.gid == 0 {
        return Err(invalid("--uid and --gid must not be 0".into()));
    }
    for JailFile { host, name, .. } in &spec.files {
        let plain = !name.is_empty()
            && name != "."
            && name != ".."
            && !name.contains('/')
            && name != "ferrovisor"
            && !matches!(name.as_str(), "dev" | "proc" | "lib" | "lib64" | "usr");
        if !plain {
            return Err(invalid(format!(
                "--file {}: the name in the jail ({name:?}) must be a plain file name",
                host.display()
            )));
        }
        if !host.is_file() {
            return Err(invalid(format!("--file {}: not a file", host.display())));
        }
    }
    Ok(())
}

/// The jail's root directory for `spec`.
pub fn root_of(spec: &JailSpec) -> PathBuf {
    spec.base.join(&spec.id).join("root")
}

fn chown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| io::Error::new(e.kind(), format!("chown {}: {e}", path.display())))
}

/// Builds the root on the host: directories, device nodes, mount points.
fn prepare_root(spec: &JailSpec, root: &Path) -> io::Result<()> {
    if spec.base.join(&spec.id).exists() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists: a jail with id {} is running or was not cleaned up",
                spec.base.join(&spec.id).display(),
                spec.id
            ),
        ));
    }
    fs::create_dir_all(root.join("dev/net"))?;
    fs::create_dir_all(root.join("proc"))?;
    for (path, major, minor) in DEVICES {
        let node = root.join(path);
        if !Path::new("/").join(path).exists() {
            continue;
        }
        let c = cstring(&node)?;
        // SAFETY: mknod with a valid NUL-terminated path and plain integers.
        let r = unsafe {
            libc::mknod(
                c.as_ptr(),
                libc::S_IFCHR | 0o600,
                libc::makedev(*major, *minor),
            )
        };
        checked(r, &format!("mknod {}", node.display()))?;
        chown(&node, spec.uid, spec.gid)?;
    }
    for dir in LIBRARY_DIRS {
        let host = Path::new(dir);
        let inside = root.join(dir.trim_start_matches('/'));
        match fs::symlink_metadata(host) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Some(parent) = inside.parent() {
                    fs::create_dir_all(parent)?;
                }
                symlink(fs::read_link(host)?, &inside)?;
            }
            Ok(m) if m.is_dir() => fs::create_dir_all(&inside)?,
            _ => {}
        }
    }
    fs::write(root.join("ferrovisor"), b"")?;
    for file in &spec.files {
        fs::write(root.join(&file.name), b"")?;
        if !file.read_only {
            chown(&file.host, spec.uid, spec.gid)?;
        }
    }
    // The VMM creates its sockets and logs in its root.
    chown(root, spec.uid, spec.gid)?;
    fs::set_permissions(root, fs::Permissions::from_mode(0o700))?;
    fs::set_permissions(spec.base.join(&spec.id), fs::Permissions::from_mode(0o711))?;
    Ok(())
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
) -> io::Result<()> {
    let source = source.map(cstring).transpose()?;
    let target_c = cstring(target)?;
    let fstype = fstype.map(|t| CString::new(t).unwrap_or_default());
    // SAFETY: mount(2) with NUL-terminated strings (or NULL) that outlive the call.
    let r = unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target_c.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            std::ptr::null(),
        )
    };
    checked(r, &format!("mount {}", target.display())).map(|_| ())
}

fn bind(source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
    mount(Some(source), target, None, libc::MS_BIND | libc::MS_REC)?;
    let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    mount(None, target, None, flags)
}

/// In the new namespaces: mounts, pivot_root, hostname, network namespace.
fn enter_root(spec: &JailSpec, root: &Path) -> io::Result<()> {
    if let Some(netns) = &spec.netns {
        let file = fs::File::open(netns)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", netns.display())))?;
        // SAFETY: setns on a descriptor we own, for the network namespace.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        checked(r, &format!("joining {}", netns.display()))?;
    }
    mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE)?;
    mount(Some(root), root, None, libc::MS_BIND | libc::MS_REC)?;
    for dir in LIBRARY_DIRS {
        let host = Path::new(dir);
        if fs::symlink_metadata(host).is_ok_and(|m| m.is_dir()) {
            bind(host, &root.join(dir.trim_start_matches('/')), true)?;
        }
    }
    bind(&spec.exec, &root.join("ferrovisor"), true)?;
    for file in &spec.files {
        bind(&file.host, &root.join(&file.name), file.read_only)?;
    }
    mount(
        Some(Path::new("proc")),
        &root.join("proc"),
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    )?;
    std::env::set_current_dir(root)?;
    let dot = CString::new(".").unwrap_or_default();
    // SAFETY: pivot_root(".", ".") with a valid string: the old root is
    // stacked under the new one and detached right after.
    let r = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    checked(r, "pivot_root")?;
    // SAFETY: umount2 of "." (the old root) with a valid string.
    let r = unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) };
    checked(r, "detaching the old root")?;
    std::env::set_current_dir("/")?;
    let host = spec.id.as_bytes();
    // SAFETY: sethostname with a pointer and length of our buffer (UTS namespace).
    let r = unsafe { libc::sethostname(host.as_ptr().cast(), host.len()) };
    checked(r, "sethostname")?;
    Ok(())
}

/// Drops every capability (bounding set included) and becomes uid/gid.
fn drop_privileges(uid: u32, gid: u32) -> io::Result<()> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments; EINVAL past the last cap.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            break;
        }
    }
    // SAFETY: plain integer system calls changing our own credentials.
    unsafe {
        checked(libc::setgroups(0, std::ptr::null()), "setgroups")?;
        checked(libc::setresgid(gid, gid, gid), "setresgid")?;
        checked(libc::setresuid(uid, uid, uid), "setresuid")?;
        checked(
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ),
            "clearing ambient capabilities",
        )?;
        checked(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            "no_new_privs",
        )?;
    }
    Ok(())
}

fn exec_vmm(spec: &JailSpec) -> io::Error {
    let program = CString::new("/ferrovisor").unwrap_or_default();
    let mut args: Vec<CString> = vec![program.clone()];
    for a in &spec.args {
        match CString::new(a.as_bytes()) {
            Ok(c) => args.push(c),
            Err(_) => return invalid("an argument contains a NUL byte".into()),
        }
    }
    // Only Ferrovisor's own variables pass into the jail.
    let env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k.as_bytes().starts_with(b"FERROVISOR_") || k == OsStr::new("CI"))
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: argv and envp are NULL-terminated arrays of strings that live
    // until execve, which only returns on failure.
    unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// The child's path: wait for the parent's go, enter the root, drop
/// privileges, exec the VMM. Never returns.
fn child(spec: &JailSpec, root: &Path, go: OwnedFd) -> ! {
    let mut go = fs::File::from(go);
    let mut byte = [0u8; 1];
    if go.read_exact(&mut byte).is_err() || byte[0] != b'g' {
        // SAFETY: _exit ends the child without running the parent's destructors.
        unsafe { libc::_exit(125) };
    }
    let label = || {
        if crate::selinux::enabled() {
            crate::selinux::set_exec_label(&spec.id)
        } else {
            Ok(())
        }
    };
    let prepared = label()
        .and_then(|()| enter_root(spec, root))
        .and_then(|()| drop_privileges(spec.uid, spec.gid));
    let error = match prepared {
        Ok(()) => exec_vmm(spec),
        Err(e) => e,
    };
    let _ = writeln!(io::stderr(), "fvjail: {}: {error}", spec.id);
    // SAFETY: as above.
    unsafe { libc::_exit(126) }
}

static CHILD_PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward_signal(signal: libc::c_int) {
    let pid = CHILD_PID.load(std::sync::atomic::Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, signal) };
    }
}

/// Runs the VMM in a jail built from `spec` and waits for it. Returns the
/// VMM's exit status (128 + N when signal N killed it). The jail's directory
/// and cgroup are removed afterwards.
pub fn run(spec: &JailSpec, on_started: impl FnOnce(u32)) -> io::Result<i32> {
    validate(spec)?;
    let root = root_of(spec);
    let cleanup = JailDir(spec.base.join(&spec.id));
    if let Err(e) = prepare_root(spec, &root) {
        if e.kind() != io::ErrorKind::AlreadyExists {
            drop(cleanup);
        } else {
            std::mem::forget(cleanup);
        }
        return Err(e);
    }
    let selinux = crate::selinux::enabled();
    if selinux {
        for file in spec.files.iter().filter(|f| !f.read_only) {
            crate::selinux::label_file(&file.host, &spec.id)?;
        }
    } else {
        tracing::info!(
            "SELinux is not enabled on this host: no per-VM MCS labels (the other layers apply)"
        );
    }
    let group = Group::create(&Layout::detect()?, &spec.id, &spec.limits)?;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors into our array.
    let piped = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    checked(piped, "pipe2")?;
    // SAFETY: both descriptors were just created and are owned here alone.
    let (go_read, go_write) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let flags = libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::SIGCHLD;
    // SAFETY: clone without a new stack behaves as fork; this process is
    // single-threaded here, so the child may run arbitrary code.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    let pid = checked(pid, "clone")? as libc::pid_t;
    if pid == 0 {
        drop(go_write);
        child(spec, &root, go_read);
    }
    drop(go_read);
    CHILD_PID.store(pid, std::sync::atomic::Ordering::Relaxed);
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: installs an async-signal-safe forwarding handler.
        unsafe {
            libc::signal(
                signal,
                forward_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
    let added = group.add(pid as u32);
    let mut go = fs::File::from(go_write);
    if let Err(e) = added {
        drop(go);
        wait(pid)?;
        return Err(e);
    }
    go.write_all(b"g")?;
    drop(go);
    on_started(pid as u32);
    let status = wait(pid)?;
    drop(group);
    drop(cleanup);
    Ok(status)
}

fn wait(pid: libc::pid_t) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child, writing into `status`.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        libc::WEXITSTATUS(status)
    })
}

/// Removes a jail's directory (mount points, device nodes, sockets) when dropped.
struct JailDir(PathBuf);

impl Drop for JailDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            tracing::warn!("removing {}: {e}", self.0.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> JailSpec {
        JailSpec {
            id: "vm-1".into(),
            base: "/srv/fvjail".into(),
            uid: 1000,
            gid: 1000,
            exec: "/usr/bin/ferrovisor".into(),
            files: vec![],
            netns: None,
            limits: Limits::default(),
            args: vec![],
        }
    }

    #[test]
    fn ids_names_and_credentials_are_checked() {
        assert!(validate(&spec()).is_ok());
        for id in ["", "../x", "a/b", "x y", &"a".repeat(65)] {
            let s = JailSpec {
                id: id.into(),
                ..spec()
            };
            assert!(validate(&s).is_err(), "{id:?}");
        }
        let s = JailSpec { uid: 0, ..spec() };
        assert!(validate(&s).is_err());
        for name in ["..", "a/b", "ferrovisor", "dev", ""] {
            let s = JailSpec {
                files: vec![JailFile {
                    host: "/etc/hostname".into(),
                    name: name.into(),
                    read_only: true,
                }],
                ..spec()
            };
            assert!(validate(&s).is_err(), "{name:?}");
        }
        let s = JailSpec {
            files: vec![JailFile {
                host: "/nonexistent".into(),
                name: "disk".into(),
                read_only: false,
            }],
            ..spec()
        };
        assert!(validate(&s).is_err());
        assert_eq!(root_of(&spec()), PathBuf::from("/srv/fvjail/vm-1/root"));
    }
}
