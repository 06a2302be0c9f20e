//! The VM lifecycle as an explicit transition table: every request and
//! guest event is an [`Action`], and only the table says which state it
//! leads to. Anything not in the table is refused with the current state.

use serde::{Deserialize, Serialize};

/// Where a VM is in its life (no VM at all is `None` in the controller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Configured, not booted.
    Created,
    /// vCPUs and devices running.
    Running,
    /// vCPUs and device workers parked; guest time frozen.
    Paused,
    /// Stopped (guest power-off, `vm.shutdown`); can boot again.
    Shutdown,
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VmState::Created => "created",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Shutdown => "shutdown",
        })
    }
}

/// Something that changes a VM's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `vm.create`.
    Create,
    /// `vm.boot`.
    Boot,
    /// `vm.pause`.
    Pause,
    /// `vm.resume`.
    Resume,
    /// `vm.shutdown`, or the guest powering off.
    Shutdown,
    /// `vm.power-button`.
    PowerButton,
    /// `vm.reboot`, or a guest reset that restarts.
    Reboot,
    /// `vm.delete`.
    Delete,
    /// `vm.resize`.
    Resize,
}

impl Action {
    /// The endpoint that asks for this action.
    pub fn endpoint(self) -> &'static str {
        match self {
            Action::Create => "vm.create",
            Action::Boot => "vm.boot",
            Action::Pause => "vm.pause",
            Action::Resume => "vm.resume",
            Action::Shutdown => "vm.shutdown",
            Action::PowerButton => "vm.power-button",
            Action::Reboot => "vm.reboot",
            Action::Delete => "vm.delete",
            Action::Resize => "vm.resize",
        }
    }
}

use Action as A;
use VmState as S;

/// Every allowed transition: (from, action, to). `None` is "no VM".
const TRANSITIONS: &[(Option<VmState>, Action, Option<VmState>)] = &[
    (None, A::Create, Some(S::Created)),
    (Some(S::Created), A::Boot, Some(S::Running)),
    (Some(S::Shutdown), A::Boot, Some(S::Running)),
    (Some(S::Running), A::Pause, Some(S::Paused)),
    (Some(S::Paused), A::Resume, Some(S::Running)),
    (Some(S::Running), A::Shutdown, Some(S::Shutdown)),
    (Some(S::Paused), A::Shutdown, Some(S::Shutdown)),
    (Some(S::Running), A::PowerButton, Some(S::Running)),
    (Some(S::Running), A::Reboot, Some(S::Running)),
    (Some(S::Paused), A::Reboot, Some(S::Running)),
    (Some(S::Running), A::Resize, Some(S::Running)),
    (Some(S::Paused), A::Resize, Some(S::Paused)),
    (Some(S::Created), A::Delete, None),
    (Some(S::Running), A::Delete, None),
    (Some(S::Paused), A::Delete, None),
    (Some(S::Shutdown), A::Delete, None),
];

/// A request the current state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} is not allowed {}", .action.endpoint(), describe(.state))]
pub struct InvalidTransition {
    /// The state the VM is in (`None`: no VM).
    pub state: Option<VmState>,
    /// What was asked.
    pub action: Action,
}

fn describe(state: &Option<VmState>) -> String {
    match state {
        None => "when no VM is created".into(),
        Some(s) => format!("in state {s}"),
    }
}

/// The state `action` leads to from `state`, or why it is refused.
pub fn transition(
    state: Option<VmState>,
    action: Action,
) -> Result<Option<VmState>, InvalidTransition> {
    TRANSITIONS
        .iter()
        .find(|(from, a, _)| *from == state && *a == action)
        .map(|(_, _, to)| *to)
        .ok_or(InvalidTransition { state, action })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lifecycle_follows_the_table() {
        let mut s = None;
        for a in [
            A::Create,
            A::Boot,
            A::Pause,
            A::Resume,
            A::PowerButton,
            A::Reboot,
            A::Shutdown,
            A::Boot,
            A::Delete,
        ] {
            s = transition(s, a).unwrap();
        }
        assert_eq!(s, None);
    }

    #[test]
    fn refusals_name_the_state() {
        let e = transition(Some(S::Created), A::Pause).unwrap_err();
        assert_eq!(e.to_string(), "vm.pause is not allowed in state created");
        let e = transition(None, A::Boot).unwrap_err();
        assert_eq!(
            e.to_string(),
            "vm.boot is not allowed when no VM is created"
        );
        assert!(transition(Some(S::Running), A::Create).is_err());
        assert!(transition(Some(S::Paused), A::Pause).is_err());
        assert!(transition(Some(S::Paused), A::PowerButton).is_err());
        assert!(transition(Some(S::Shutdown), A::Resume).is_err());
    }

    #[test]
    fn each_transition_is_listed_once() {
        for (i, (from, a, _)) in TRANSITIONS.iter().enumerate() {
            assert!(
                !TRANSITIONS[i + 1..]
                    .iter()
                    .any(|(f, b, _)| f == from && b == a),
                "{from:?} {a:?}"
            );
        }
    }
}
