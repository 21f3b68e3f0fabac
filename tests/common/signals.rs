//! A log of every signal the daemon emits on a bus.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::StreamExt;
use tandem::api::MessageDict;
use zbus::{MatchRule, MessageStream};

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
}

/// Every `org.tandem.Messages1` signal on a bus, from any sender, recorded from the moment
/// of creation (so signals of a daemon started later are not missed).
#[derive(Clone)]
pub struct SignalLog {
    seen: Arc<Mutex<Vec<Signal>>>,
}

impl SignalLog {
    pub async fn start(bus: &Bus) -> SignalLog {
        let conn = bus.connect().await;
        let rule = MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface("org.tandem.Messages1")
            .build()
            .expect("match rule");
        let mut stream = MessageStream::for_match_rule(rule, &conn, None)
            .await
            .expect("signal stream");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = SignalLog { seen: seen.clone() };
        tokio::spawn(async move {
            let _conn = conn;
            while let Some(Ok(msg)) = stream.next().await {
                let header = msg.header();
                let member = header.member().map(|m| m.to_string()).unwrap_or_default();
                let body = msg.body();
                let signal = match member.as_str() {
                    "MessageReceived" => body
                        .deserialize::<(MessageDict,)>()
                        .ok()
                        .map(|(m,)| Signal::Received(m)),
                    "MessageStatusChanged" => body
                        .deserialize::<(String, String, String)>()
                        .ok()
                        .map(|(id, status, channel)| Signal::Status {
                            id,
                            status,
                            channel,
                        }),
                    "PresenceChanged" => body
                        .deserialize::<(String, String)>()
                        .ok()
                        .map(|(number, presence)| Signal::Presence { number, presence }),
                    _ => None,
                };
                if let Some(signal) = signal {
                    seen.lock().expect("signal log").push(signal);
                }
            }
        });
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
