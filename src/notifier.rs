//! Desktop notifications for incoming messages: one task that owns notifying, fed by a
//! bounded channel, so that a slow, hung or missing notification server never blocks
//! the daemon or holds up a message.
//!
//! Owns: what a
//! notification looks like (app name "Tandem", the sender as summary, a preview of the
//! text as body), and logging its failures. Must not: fail or block a caller, retry a
//! notification (a dropped one is only a missed pop-up: the message itself is already
//! stored), or know anything of messages beyond sender and text.
//!
//! Notifications go out through notify-rust (the freedesktop Notifications spec over
//! zbus). Its `show_async` opens a session-bus connection per notification; at the pace
//! of incoming messages that costs a millisecond or two each, which is cheaper than a
//! connection held open all day on a phone that mostly sleeps.
//!
//! Senders choose the text, so it must never be taken for markup: before each
//! notification the server is asked for its capabilities (`GetCapabilities`, with a
//! connection of our own: notify-rust only has a blocking call for it, which would stall
//! the runtime). A server that advertises `body-markup` gets summary and body escaped
//! (`&`, `<`, `>`); one that does not shows text as it is, and gets it as it is. If the
//! question fails, the text is escaped: a stray `&amp;` is better than injected markup.

use std::time::Duration;

use notify_rust::{Hint, Notification, Timeout};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

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

/// `text` with the characters that markup gives a meaning to (`&`, `<`, `>`) written as
/// entities, so that a markup-reading server shows it as it is.
pub fn escape_markup(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            other => escaped.push(other),
        }
    }
    escaped
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

/// Why one notification was not shown (logged, never returned to a caller).
#[derive(Debug, thiserror::Error)]
enum NotifyError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Notify(#[from] notify_rust::error::Error),
}

/// The task: shows queued notices one after the other until every handle is dropped.
async fn run(mut receiver: mpsc::Receiver<Notice>) {
    // Warn once when notifications stop working, not for every message after.
    let mut failing = false;
    while let Some(notice) = receiver.recv().await {
        let outcome = tokio::time::timeout(CALL_TIMEOUT, show(&notice))
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

/// Whether the notification server reads markup in the body (`body-markup`); `true`
/// when it cannot be asked, since escaping is then the safe side.
async fn reads_markup() -> bool {
    let asked = async {
        let conn = zbus::Connection::session().await?;
        let reply = conn
            .call_method(
                Some("org.freedesktop.Notifications"),
                "/org/freedesktop/Notifications",
                Some("org.freedesktop.Notifications"),
                "GetCapabilities",
                &(),
            )
            .await?;
        reply.body().deserialize::<Vec<String>>()
    };
    match asked.await {
        Ok(capabilities) => capabilities.iter().any(|c| c == "body-markup"),
        Err(err) => {
            debug!(cause = %err, "cannot ask the notification server its capabilities; escaping");
            true
        }
    }
}

/// Shows one notice on the session bus's notification server.
async fn show(notice: &Notice) -> Result<u32, NotifyError> {
    let mut summary = notice.sender.clone();
    // Cut first, then escape: an entity is never cut in half.
    let mut body = preview(&notice.text);
    if reads_markup().await {
        summary = escape_markup(&summary);
        body = escape_markup(&body);
    }
    let handle = Notification::new()
        .appname(APP_NAME)
        .summary(&summary)
        .body(&body)
        .icon(ICON)
        .hint(Hint::Category(CATEGORY.to_owned()))
        .hint(Hint::DesktopEntry(DESKTOP_ENTRY.to_owned()))
        .timeout(Timeout::Default)
        .show_async()
        .await?;
    Ok(handle.id())
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
    fn markup_is_escaped() {
        for (text, expected) in [
            ("plain", "plain"),
            ("<b>wine</b>", "&lt;b&gt;wine&lt;/b&gt;"),
            ("fish & chips", "fish &amp; chips"),
            ("&amp;", "&amp;amp;"),
            (
                "<a href=\"https://x\">pay</a>",
                "&lt;a href=\"https://x\"&gt;pay&lt;/a&gt;",
            ),
            ("<img src=\"/etc/x\"/>", "&lt;img src=\"/etc/x\"/&gt;"),
            ("Grüße 😀 it's \"fine\"", "Grüße 😀 it's \"fine\""),
            ("", ""),
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
