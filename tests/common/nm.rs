//! A fake NetworkManager on a private "system" bus: its `Connectivity` and `State`, set by
//! the test, each change announced with `PropertiesChanged` as NetworkManager does.

use super::Bus;

pub const NM_PATH: &str = "/org/freedesktop/NetworkManager";
/// `NMConnectivityState`.
pub const CONNECTIVITY_NONE: u32 = 1;
pub const CONNECTIVITY_LIMITED: u32 = 3;
pub const CONNECTIVITY_FULL: u32 = 4;
/// `NMState`.
pub const STATE_DISCONNECTED: u32 = 20;
pub const STATE_CONNECTED_GLOBAL: u32 = 70;

struct FakeNm {
    connectivity: u32,
    state: u32,
}

#[zbus::interface(name = "org.freedesktop.NetworkManager")]
impl FakeNm {
    #[zbus(property)]
    fn connectivity(&self) -> u32 {
        self.connectivity
    }

    #[zbus(property)]
    fn state(&self) -> u32 {
        self.state
    }
}

/// The fake, owning `org.freedesktop.NetworkManager` until dropped.
pub struct Nm {
    conn: zbus::Connection,
}

impl Nm {
    /// The fake on `bus`, saying `connectivity` (and the `State` that goes with it).
    pub async fn start(bus: &Bus, connectivity: u32) -> Nm {
        let state = if connectivity == CONNECTIVITY_FULL {
            STATE_CONNECTED_GLOBAL
        } else {
            STATE_DISCONNECTED
        };
        let conn = zbus::connection::Builder::address(bus.address.as_str())
            .serve_at(
                NM_PATH,
                FakeNm {
                    connectivity,
                    state,
                },
            )
            .name("org.freedesktop.NetworkManager")
            .build()
            .await
            .expect("fake NetworkManager on the private bus");
        Nm { conn }
    }

    async fn iface(&self) -> zbus::object_server::InterfaceRef<FakeNm> {
        self.conn
            .object_server()
            .interface::<_, FakeNm>(NM_PATH)
            .await
            .expect("the fake's interface")
    }

    /// `Connectivity` becomes `value` (`State` is left as it is).
    pub async fn set_connectivity(&self, value: u32) {
        let iface = self.iface().await;
        iface.get_mut().await.connectivity = value;
        iface
            .get()
            .await
            .connectivity_changed(iface.signal_emitter())
            .await
            .expect("PropertiesChanged");
    }

    /// The network up or down, as NetworkManager says it: `State`, then `Connectivity`.
    pub async fn set_network(&self, up: bool) {
        let iface = self.iface().await;
        {
            let mut fake = iface.get_mut().await;
            (fake.state, fake.connectivity) = if up {
                (STATE_CONNECTED_GLOBAL, CONNECTIVITY_FULL)
            } else {
                (STATE_DISCONNECTED, CONNECTIVITY_NONE)
            };
        }
        let fake = iface.get().await;
        let emitter = iface.signal_emitter();
        fake.state_changed(emitter)
            .await
            .expect("PropertiesChanged");
        fake.connectivity_changed(emitter)
            .await
            .expect("PropertiesChanged");
    }
}
