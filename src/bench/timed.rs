//! bench::timed: the timed loop that `sms-latency` and `ip-latency` share. One sender's
//! daemon sends messages to one receiver's daemon, one at a time; each is timed from
//! just before the sender's `SendMessage` call to the receiver's `MessageReceived` of
//! exactly that text. Then the loop waits until the sender's daemon reports the message
//! `delivered`, pauses, and lets the scenario probe its floor before the next message.
//!
//! Must not: send a message before the previous one is settled (received, delivered
//! and the pause over, so that the daemons' clean-up is done), so that each figure is one
//! message on a quiet system; or time anything but the send-to-announcement interval.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use zbus::OwnedVariant;

use super::BenchError;
use crate::api::{MessageReceivedStream, MessageStatusChangedStream, MessagesProxy};
use crate::domain::Status;

/// How long one message may take before the run counts as broken.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// How many messages a latency scenario times, and how it paces them.
#[derive(Debug, Clone)]
pub struct LatencyParams {
    /// Messages timed.
    pub messages: usize,
    /// Messages sent first and not timed (connection set-up, caches).
    pub warmup: usize,
    /// Pause after each settled message, before the probe and the next message.
    pub pause: Duration,
}

impl LatencyParams {
    pub fn new(quick: bool) -> LatencyParams {
        LatencyParams {
            messages: if quick { 20 } else { 1000 },
            warmup: 3,
            pause: Duration::from_millis(5),
        }
    }
}

/// One series of timed messages.
pub(super) struct Series<'a> {
    /// For the progress lines.
    pub scenario: &'static str,
    pub sender: &'a MessagesProxy<'a>,
    pub receiver: &'a MessagesProxy<'a>,
    /// The sender's number, as the receiver's daemon shows it.
    pub from: &'a str,
    pub to: &'a str,
    /// `SendMessage`'s options.
    pub options: HashMap<String, OwnedVariant>,
    /// The channel every message must arrive by.
    pub channel: &'static str,
    pub params: &'a LatencyParams,
}

impl Series<'_> {
    /// Sends `warmup + messages` messages; after each has settled and the pause is
    /// over, calls `probe(i, text)` (`i` counts from 0, warm-up included; `text` is the
    /// message's). Returns the times of the messages after the warm-up, in sending
    /// order.
    pub(super) async fn run(
        &self,
        mut probe: impl AsyncFnMut(usize, &str) -> Result<(), BenchError>,
    ) -> Result<Vec<Duration>, BenchError> {
        // Subscribed before anything is sent.
        let mut received = self.receiver.receive_message_received().await?;
        let mut statuses = self.sender.receive_message_status_changed().await?;
        let LatencyParams {
            messages,
            warmup,
            pause,
        } = *self.params;
        let total = warmup + messages;
        eprintln!(
            "{}: {total} messages {} -> {} ({} not counted)",
            self.scenario, self.from, self.to, warmup
        );
        let mut samples = Vec::with_capacity(messages);
        for i in 0..total {
            let text = format!("Bench {i}: see you tomorrow at the station?");
            let t = Instant::now();
            let id = self
                .sender
                .send_message(self.to, &text, self.options.clone())
                .await?;
            let arrived = self.announced(&mut received, i, &text, t).await?;
            settled(&mut statuses, i, &id).await?;
            // The daemons' clean-up (e.g. deleting the SMS and its report from the
            // modems) runs after the delivered status: let it finish, so that neither
            // the probe nor the next message overlaps with it.
            tokio::time::sleep(pause).await;
            probe(i, &text).await?;
            if i >= warmup {
                samples.push(arrived);
            }
            if (i + 1) % 100 == 0 {
                eprintln!("{}: {} sent", self.scenario, i + 1);
            }
        }
        Ok(samples)
    }

    /// Waits for the receiver's announcement of exactly this message (`i`, `text`, sent
    /// at `t`) and returns the time since `t`.
    async fn announced(
        &self,
        received: &mut MessageReceivedStream,
        i: usize,
        text: &str,
        t: Instant,
    ) -> Result<Duration, BenchError> {
        let what = format!("the receiver to announce message {i}");
        within(what, async {
            while let Some(signal) = received.next().await {
                let message = signal.args()?.message;
                if message.text == text && message.peer == self.from {
                    if message.channel != self.channel {
                        return Err(BenchError::Unexpected(format!(
                            "message {i} went by {}, not {}",
                            message.channel, self.channel
                        )));
                    }
                    return Ok(t.elapsed());
                }
            }
            Err(BenchError::Unexpected(
                "the receiver's signal stream ended".into(),
            ))
        })
        .await
    }
}

/// Waits until the sender has its delivery report or receipt for message `i` (`id`).
async fn settled(
    statuses: &mut MessageStatusChangedStream,
    i: usize,
    id: &str,
) -> Result<(), BenchError> {
    within(format!("message {i} to be delivered"), async {
        while let Some(signal) = statuses.next().await {
            let args = signal.args()?;
            if args.id == id {
                match args.status.parse::<Status>() {
                    Ok(Status::Delivered) => return Ok(()),
                    Ok(Status::Failed) => {
                        return Err(BenchError::Unexpected(format!("message {i} failed")));
                    }
                    _ => {}
                }
            }
        }
        Err(BenchError::Unexpected(
            "the sender's signal stream ended".into(),
        ))
    })
    .await
}

/// `step`'s result, or a timeout naming `what` after [`MESSAGE_TIMEOUT`].
async fn within<T>(
    what: String,
    step: impl Future<Output = Result<T, BenchError>>,
) -> Result<T, BenchError> {
    tokio::time::timeout(MESSAGE_TIMEOUT, step)
        .await
        .map_err(|_| BenchError::Timeout {
            what,
            after: MESSAGE_TIMEOUT,
        })?
}
