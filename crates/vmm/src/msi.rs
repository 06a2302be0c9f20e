//! MSI delivery through KVM: each MSI-X vector a guest uses gets a GSI with an
//! MSI route and an irqfd, so raising it is one eventfd write and vhost-style
//! in-kernel paths can use the same irqfd. Routes are reprogrammed only when
//! the guest changes a vector's message.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hypervisor::{GsiRoute, Vm};
use pci::{MsiMessage, MsiSender};
use vmm_sys_util::eventfd::EventFd;

/// First GSI for MSI routes (0–23 are the ISA and IOAPIC interrupts).
const FIRST_MSI_GSI: u32 = 24;
/// KVM's limit on routing entries (KVM_MAX_IRQ_ROUTES).
const MAX_ROUTES: u32 = 4096;

/// The VM's GSI routing table.
pub struct MsiRouter {
    vm: Arc<Vm>,
    state: Mutex<RouterState>,
}

struct RouterState {
    next_gsi: u32,
    msi: BTreeMap<u32, MsiMessage>,
}

impl MsiRouter {
    /// A router with only the legacy routes.
    pub fn new(vm: Arc<Vm>) -> MsiRouter {
        MsiRouter {
            vm,
            state: Mutex::new(RouterState {
                next_gsi: FIRST_MSI_GSI,
                msi: BTreeMap::new(),
            }),
        }
    }

    /// A sender for one device.
    pub fn sender(self: &Arc<Self>) -> Arc<dyn MsiSender> {
        Arc::new(DeviceMsi {
            router: self.clone(),
            vectors: Mutex::new(BTreeMap::new()),
        })
    }

    fn allocate(&self) -> Option<u32> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let gsi = state.next_gsi;
        // Legacy routes take 40 entries; keep the table within KVM's limit.
        if state.msi.len() as u32 + 40 >= MAX_ROUTES {
            return None;
        }
        state.next_gsi += 1;
        Some(gsi)
    }

    /// Points `gsi` at `message` and installs the whole table.
    fn route(&self, gsi: u32, message: MsiMessage) -> hypervisor::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.msi.insert(gsi, message);
        let mut routes = GsiRoute::legacy_defaults();
        routes.extend(state.msi.iter().map(|(gsi, m)| GsiRoute::Msi {
            gsi: *gsi,
            address: m.address,
            data: m.data,
        }));
        self.vm.set_gsi_routes(&routes)
    }
}

struct Vector {
    gsi: u32,
    irqfd: EventFd,
    message: MsiMessage,
}

/// One device's vectors.
struct DeviceMsi {
    router: Arc<MsiRouter>,
    vectors: Mutex<BTreeMap<u16, Vector>>,
}

impl DeviceMsi {
    /// Sets up or updates the route of `vector`; `None` when routing is
    /// unavailable (then the message is injected directly).
    fn prepare(
        &self,
        vectors: &mut BTreeMap<u16, Vector>,
        vector: u16,
        message: MsiMessage,
    ) -> Option<()> {
        if let Some(v) = vectors.get_mut(&vector) {
            if v.message != message {
                self.router.route(v.gsi, message).ok()?;
                v.message = message;
            }
            return Some(());
        }
        let gsi = self.router.allocate()?;
        let irqfd = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).ok()?;
        self.router.route(gsi, message).ok()?;
        self.router.vm.register_irqfd(&irqfd, gsi).ok()?;
        vectors.insert(
            vector,
            Vector {
                gsi,
                irqfd,
                message,
            },
        );
        Some(())
    }
}

impl MsiSender for DeviceMsi {
    fn send(&self, vector: u16, message: MsiMessage) {
        let mut vectors = self.vectors.lock().unwrap_or_else(|p| p.into_inner());
        let fired = self.prepare(&mut vectors, vector, message).and_then(|()| {
            let v = vectors.get(&vector)?;
            v.irqfd.write(1).ok()
        });
        if fired.is_none() {
            if let Err(e) = self.router.vm.signal_msi(message.address, message.data) {
                tracing::debug!(
                    "MSI {:#x}/{:#x} not delivered: {e}",
                    message.address,
                    message.data
                );
            }
        }
    }
}
