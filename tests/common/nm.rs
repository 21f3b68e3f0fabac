//! A fake NetworkManager on a private "system" bus: its `Connectivity` and `State`, set by
//! the test, each change announced with `PropertiesChanged` as NetworkManager does.

use super::Bus;

use tandem::net::Connectivity;

const NM_PATH: &str = "/org/freedesktop/NetworkManager";

/// What NetworkManager says for `connectivity`: `NMConnectivityState`, and the `NMState`
/// that goes with it (connected-global when full, else disconnected).
fn nm_values(connectivity: Connectivity) -> (u32, u32) {
    let value = match connectivity {
        Connectivity::Unknown => 0,
        Connectivity::NoNetwork => 1,
        Connectivity::Portal => 2,
        Connectivity::Limited => 3,
        Connectivity::Full => 4,
    };
    (value, if value == 4 { 70 } else { 20 })
}

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
    pub async fn start(bus: &Bus, connectivity: Connectivity) -> Nm {
        let (connectivity, state) = nm_values(connectivity);
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

    /// `Connectivity` becomes `connectivity` (`State` is left as it is).
    pub async fn set_connectivity(&self, connectivity: Connectivity) {
        let iface = self.iface().await;
        iface.get_mut().await.connectivity = nm_values(connectivity).0;
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
            let now = if up {
                Connectivity::Full
            } else {
                Connectivity::NoNetwork
            };
            (fake.connectivity, fake.state) = nm_values(now);
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
