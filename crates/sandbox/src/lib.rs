//! Isolation of a Ferrovisor process (the sVirt of Ferrovisor): seccomp
//! filters per thread kind, Landlock, cgroups and the jail that `fvjail`
//! builds. The crate knows nothing of VMs; the VMM tells it which thread is
//! which and which paths a VM may reach.

pub mod cgroup;
pub mod jail;
pub mod landlock;
pub mod seccomp;
pub mod selinux;
pub mod thread;
