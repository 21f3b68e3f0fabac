//! Desktop notifications for incoming messages: one task that owns notifying, fed by a
//! bounded channel, so that a slow, hung or missing notification server never blocks
//! the daemon or holds up a message.
//!
//! Owns: the session-bus connection to `org.freedesktop.Notifications`, what a
//! notification looks like (app name "Tandem", the sender as summary, a preview of the
//! text as body), and logging its failures. Must not: fail or block a caller, retry a
//! notification (a dropped one is only a missed pop-up: the message itself is already
//! stored), or know anything of messages beyond sender and text.
//!
//! Why not `notify-rust`: its 4.19 `Notification::show_async` opens a new session-bus
//! connection for every notification (`connect_and_send_notification_at_bus` calls
//! `zbus::Connection::session()`), and the function that sends on an existing
//! connection is private. This task instead keeps one connection, calls the two
//! methods of the freedesktop Notifications spec it needs through a small proxy, and
//! reconnects only after a connection-level error.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use zbus::{Connection, Variant};

/// Notifications waiting for the task; more are dropped with a warning.
const QUEUE_CAPACITY: usize = 32;
/// Longest wait for one notification (connecting included): a hung server, or one the
/// bus is still activating, must not stall the queue for the bus's 25 s default.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Characters of the message text shown in the notification body.
pub const PREVIEW_CHARS: usize = 100;
/// The application name every notification carries.
pub const APP_NAME: &str = "Tandem";
/// Freedesktop icon-naming-spec name.
const ICON: &str = "mail-message-new";
/// Freedesktop notification category of a received instant message.
const CATEGORY: &str = "im.received";
/// The desktop entry (without `.desktop`) servers use to group and badge our notifications.
const DESKTOP_ENTRY: &str = "org.tandem.Messages";
/// `expire_timeout` meaning "the server's default".
const SERVER_DEFAULT_TIMEOUT: i32 = -1;

/// One incoming message to announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Shown as the summary (the number, E.164, or a sender name).
    pub sender: String,
    /// The full text; the notification shows a preview.
    pub text: String,
}

/// Handle to the notification task; cheap to clone. The task ends when every handle is
/// dropped.
#[derive(Clone, Debug)]
pub struct Notifier {
    /// `None` when notifications are disabled: then `notify` does nothing.
    queue: Option<mpsc::Sender<Notice>>,
}

impl Notifier {
    /// enabled=false: notify() does nothing. Spawns the task on the current tokio runtime
    /// (panics outside one, like `tokio::spawn`). The task connects to the session bus
    /// (`DBUS_SESSION_BUS_ADDRESS`) on its first notification, not here.
    pub fn spawn(enabled: bool) -> Notifier {
        if !enabled {
            return Notifier { queue: None };
        }
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run(receiver));
        Notifier { queue: Some(queue) }
    }

    /// Never blocks, never fails: queues (bounded), drops with a warning when full.
    pub fn notify(&self, notice: Notice) {
        let Some(queue) = &self.queue else {
            return;
        };
        match queue.try_send(notice) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(notice)) => {
                warn!(sender = %notice.sender, "notification queue full, notification dropped");
            }
            Err(mpsc::error::TrySendError::Closed(notice)) => {
                warn!(sender = %notice.sender, "notification task has stopped, notification dropped");
            }
        }
    }
}

/// The text shown as the body: trimmed, at most [`PREVIEW_CHARS`] characters (cut on a
/// char boundary), "…" when cut.
pub fn preview(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(PREVIEW_CHARS) {
        Some((cut, _)) => format!("{}…", text[..cut].trim_end()),
        None => text.to_owned(),
    }
}

/// Escapes what the spec's body markup would interpret, for servers with `body-markup`.
fn escape_markup(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// The part of the freedesktop Notifications spec (1.2) this module uses.
#[zbus::proxy(
    interface = "org.freedesktop.Notifications",
    default_service = "org.freedesktop.Notifications",
    default_path = "/org/freedesktop/Notifications"
)]
trait Notifications {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: &str,
        replaces_id: u32,
        app_icon: &str,
        summary: &str,
        body: &str,
        actions: &[&str],
        hints: HashMap<&str, Variant<'_>>,
        expire_timeout: i32,
    ) -> zbus::Result<u32>;

    fn get_capabilities(&self) -> zbus::Result<Vec<String>>;
}

/// Why one notification was not shown (logged, never returned to a caller).
#[derive(Debug, thiserror::Error)]
enum NotifyError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Bus(#[from] zbus::Error),
}

impl NotifyError {
    /// Whether the connection itself is suspect (as opposed to an error reply from the
    /// bus or the server, or a slow server), so the next notification reconnects.
    fn breaks_connection(&self) -> bool {
        match self {
            NotifyError::Timeout(_) => false,
            NotifyError::Bus(err) => !matches!(
                err,
                zbus::Error::MethodError(..) | zbus::Error::FDO(_) | zbus::Error::DBus(_)
            ),
        }
    }
}

/// The task: shows queued notices one after the other until every handle is dropped.
async fn run(mut receiver: mpsc::Receiver<Notice>) {
    let mut connection: Option<Connection> = None;
    // Warn once when notifications stop working, not for every message after.
    let mut failing = false;
    while let Some(notice) = receiver.recv().await {
        let outcome = tokio::time::timeout(CALL_TIMEOUT, show(&mut connection, &notice))
            .await
            .unwrap_or(Err(NotifyError::Timeout(CALL_TIMEOUT)));
        match outcome {
            Ok(id) => {
                if failing {
                    info!("desktop notifications work again");
                }
                failing = false;
                debug!(id, sender = %notice.sender, "notification shown");
            }
            Err(err) => {
                if err.breaks_connection() {
                    connection = None;
                }
                if failing {
                    debug!(sender = %notice.sender, cause = %err, "notification not shown");
                } else {
                    warn!(sender = %notice.sender, cause = %err, "notification not shown");
                }
                failing = true;
            }
        }
    }
    debug!("notification task finished");
}

/// Shows one notice, connecting first when there is no connection.
async fn show(connection: &mut Option<Connection>, notice: &Notice) -> Result<u32, NotifyError> {
    let bus = match connection {
        Some(bus) => bus.clone(),
        None => {
            let bus = Connection::session().await?;
            debug!("connected to the session bus for notifications");
            *connection = Some(bus.clone());
            bus
        }
    };
    let proxy = NotificationsProxy::new(&bus).await?;
    // Asked every time: a notification server can be replaced by one with other
    // capabilities, and incoming messages come at a human pace.
    let markup = proxy
        .get_capabilities()
        .await?
        .iter()
        .any(|capability| capability == "body-markup");
    let mut body = preview(&notice.text);
    if markup {
        body = escape_markup(&body);
    }
    let hints = HashMap::from([
        ("category", Variant::from(CATEGORY)),
        ("desktop-entry", Variant::from(DESKTOP_ENTRY)),
    ]);
    let id = proxy
        .notify(
            APP_NAME,
            0,
            ICON,
            &notice.sender,
            &body,
            &[],
            hints,
            SERVER_DEFAULT_TIMEOUT,
        )
        .await?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews() {
        for (text, expected) in [
            ("", ""),
            ("hello", "hello"),
            ("  padded\n", "padded"),
            ("line one\nline two", "line one\nline two"),
        ] {
            assert_eq!(preview(text), expected, "{text:?}");
        }
        let exact = "a".repeat(PREVIEW_CHARS);
        assert_eq!(preview(&exact), exact);
        let long = "b".repeat(PREVIEW_CHARS + 1);
        assert_eq!(preview(&long), format!("{}…", "b".repeat(PREVIEW_CHARS)));
        // Multi-byte characters are cut on a char boundary, counted as characters.
        let emoji = "😀".repeat(PREVIEW_CHARS + 5);
        assert_eq!(preview(&emoji), format!("{}…", "😀".repeat(PREVIEW_CHARS)));
        let cyrillic = "ж".repeat(PREVIEW_CHARS * 3);
        assert_eq!(preview(&cyrillic).chars().count(), PREVIEW_CHARS + 1);
        // No space before the ellipsis when the cut falls after a word.
        let words = format!("{} tail", "w".repeat(PREVIEW_CHARS - 1));
        assert_eq!(
            preview(&words),
            format!("{}…", "w".repeat(PREVIEW_CHARS - 1))
        );
    }

    #[test]
    fn markup_escaping() {
        for (text, expected) in [
            ("plain", "plain"),
            ("<b>x</b>", "&lt;b&gt;x&lt;/b&gt;"),
            ("fish & chips", "fish &amp; chips"),
            ("&amp;", "&amp;amp;"),
            ("'quotes\"", "'quotes\""),
        ] {
            assert_eq!(escape_markup(text), expected, "{text:?}");
        }
    }

    #[tokio::test]
    async fn disabled_notifier_ignores_notices() {
        let notifier = Notifier::spawn(false);
        assert!(notifier.queue.is_none());
        notifier.notify(Notice {
            sender: "+15551234567".to_owned(),
            text: "hi".to_owned(),
        });
    }

    #[tokio::test]
    async fn full_queue_drops_without_blocking() {
        // A queue whose task never reads: notify must neither block nor panic.
        let (queue, _receiver) = mpsc::channel(2);
        let notifier = Notifier { queue: Some(queue) };
        let started = std::time::Instant::now();
        for n in 0..10 {
            notifier.notify(Notice {
                sender: format!("+1555000{n:04}"),
                text: "x".to_owned(),
            });
        }
        assert!(started.elapsed() < Duration::from_secs(1));
        let queue = notifier.queue.as_ref().map(|q| q.capacity());
        assert_eq!(
            queue,
            Some(0),
            "the queue holds its 2, the rest were dropped"
        );
    }
}
