//! A log of every signal the daemon emits on a bus.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tandem::api::MessageDict;
use zbus::MatchRule;

use super::bus::on_messages;
use super::{Bus, WAIT};

/// One signal of `org.tandem.Messages1`, as seen on the bus.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    Received(MessageDict),
    Status {
        id: String,
        status: String,
        channel: String,
    },
    Presence {
        number: String,
        presence: String,
    },
    ConversationRead {
        peer: String,
    },
    MessageDeleted {
        id: String,
        peer: String,
    },
    ConversationDeleted {
        peer: String,
    },
    ContactsChanged,
}

impl Signal {
    /// The signal a message carries, if it is one of `org.tandem.Messages1`'s.
    fn of(msg: &zbus::Message) -> Option<Signal> {
        let header = msg.header();
        let body = msg.body();
        match header.member()?.as_str() {
            "MessageReceived" => {
                let (m,) = body.deserialize::<(MessageDict,)>().ok()?;
                Some(Signal::Received(m))
            }
            "MessageStatusChanged" => {
                let (id, status, channel) = body.deserialize().ok()?;
                Some(Signal::Status {
                    id,
                    status,
                    channel,
                })
            }
            "PresenceChanged" => {
                let (number, presence) = body.deserialize().ok()?;
                Some(Signal::Presence { number, presence })
            }
            "ConversationRead" => {
                let (peer,) = body.deserialize().ok()?;
                Some(Signal::ConversationRead { peer })
            }
            "MessageDeleted" => {
                let (id, peer) = body.deserialize().ok()?;
                Some(Signal::MessageDeleted { id, peer })
            }
            "ConversationDeleted" => {
                let (peer,) = body.deserialize().ok()?;
                Some(Signal::ConversationDeleted { peer })
            }
            "ContactsChanged" => Some(Signal::ContactsChanged),
            _ => None,
        }
    }
}

/// Every `org.tandem.Messages1` signal on a bus, from any sender, recorded from the moment
/// of creation (so signals of a daemon started later are not missed).
#[derive(Clone)]
pub struct SignalLog {
    seen: Arc<Mutex<Vec<Signal>>>,
}

impl SignalLog {
    pub async fn start(bus: &Bus) -> SignalLog {
        let rule = MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface("org.tandem.Messages1")
            .build()
            .expect("match rule");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = SignalLog { seen: seen.clone() };
        on_messages(bus, rule, move |msg| {
            if let Some(signal) = Signal::of(&msg) {
                seen.lock().expect("signal log").push(signal);
            }
        })
        .await;
        log
    }

    pub fn all(&self) -> Vec<Signal> {
        self.seen.lock().expect("signal log").clone()
    }

    pub fn received(&self) -> Vec<MessageDict> {
        self.all()
            .into_iter()
            .filter_map(|s| match s {
                Signal::Received(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    /// The statuses announced for one message, in order.
    pub fn statuses(&self, id: &str) -> Vec<String> {
        self.all()
            .into_iter()
            .filter_map(|s| match s {
                Signal::Status { id: i, status, .. } if i == id => Some(status),
                _ => None,
            })
            .collect()
    }

    /// Waits until `signal` is in the log.
    pub async fn wait_for(&self, signal: &Signal) {
        self.wait_until(&format!("{signal:?}"), |s| s.all().contains(signal))
            .await
    }

    /// How many `ContactsChanged` were seen.
    pub fn contacts_changed(&self) -> usize {
        self.all()
            .iter()
            .filter(|s| **s == Signal::ContactsChanged)
            .count()
    }

    /// Waits until `check` holds for the log.
    pub async fn wait_until(&self, what: &str, check: impl Fn(&SignalLog) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !check(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; signals: {:#?}",
                self.all()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}
