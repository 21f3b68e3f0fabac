//! Notifications end to end: the real `tandemd` on the simulator, a fake notification
//! server (and, where a test needs one, a fake app) on its private session bus. One
//! notification per conversation, replaced and withdrawn; its actions (open, mark read,
//! inline reply) doing what they say; what it looks like.

mod common;

use std::time::Duration;

use common::notifications::{Call, Notifications, start_app};
use common::{Bus, Phone, Signal, Sim, SimCtl, dict_str, eventually, temp_dir};
use tandem::notifier::{APP_NAME, CATEGORY, DESKTOP_ENTRY, ICON, SOUND};

const ALICE: &str = "+15550001111";
const BOB: &str = "+15550002222";
const CAROL: &str = "+15550003333";

/// Alice's daemon (notifications on, the default) on the simulator, with a fake
/// notification server of these capabilities on its session bus.
struct Rig {
    phone: Phone,
    server: Notifications,
    ctl: SimCtl,
    _sim: Sim,
    _system: Bus,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start(capabilities: &[&str]) -> Rig {
        Rig::with_app(capabilities, false).await.0
    }

    /// The same, with the fake app on the bus first if `app`; its activations.
    async fn with_app(
        capabilities: &[&str],
        app: bool,
    ) -> (
        Rig,
        Option<(
            zbus::Connection,
            tokio::sync::mpsc::UnboundedReceiver<common::notifications::Activation>,
        )>,
    ) {
        let (session, system) = (Bus::start(), Bus::start());
        let sim = Sim::start(&system, &[ALICE]);
        let server = Notifications::start(&session.address, capabilities).await;
        let app = if app {
            Some(start_app(&session.address).await)
        } else {
            None
        };
        let dir = temp_dir();
        let config = format!("default_region = \"US\"\n[sms]\nmodem = \"{ALICE}\"\n");
        let phone = Phone::on(session, &system, dir.path(), &config).await;
        let ctl = SimCtl::new(&system.connect().await).await;
        let rig = Rig {
            phone,
            server,
            ctl,
            _sim: sim,
            _system: system,
            _dir: dir,
        };
        (rig, app)
    }

    /// `from` texts Alice `text`; the notification that makes.
    async fn sms(&mut self, from: &str, text: &str) -> Call {
        self.ctl.inject_sms(ALICE, from, text).await;
        self.server.next_call().await
    }

    async fn unread_is(&self, n: u32) {
        self.phone
            .until(&format!("UnreadCount {n}"), async |api| {
                api.unread_count().await.ok() == Some(n)
            })
            .await
    }

    /// No `Notify` or `CloseNotification` within a moment.
    async fn quiet(&mut self) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            self.server.calls.try_recv().is_err(),
            "an unexpected Notify"
        );
        assert!(
            self.server.closes.try_recv().is_err(),
            "an unexpected close"
        );
    }
}

#[tokio::test]
async fn one_notification_per_conversation_replaced_as_messages_arrive() {
    let mut rig = Rig::start(&["body", "body-markup", "actions"]).await;
    let first = rig.sms(BOB, "<b>hi</b> & bye").await;
    assert_eq!(first.replaces_id, 0);
    assert_eq!(first.app_name, APP_NAME);
    assert_eq!(first.summary, BOB);
    // The server reads markup: the sender's text is shown as it is, never as markup.
    assert_eq!(first.body, "&lt;b&gt;hi&lt;/b&gt; &amp; bye");
    // What a phone's shell reads: an icon in Debian 12's Adwaita, the category that
    // picks the feedback (sound, vibration), the app, the sound, normal urgency.
    assert_eq!(first.icon, ICON);
    assert_eq!(first.icon, "mail-unread-symbolic");
    let hint = |key: &str| first.string_hints.get(key).map(String::as_str);
    assert_eq!(hint("category"), Some(CATEGORY));
    assert_eq!(hint("category"), Some("im.received"));
    assert_eq!(hint("desktop-entry"), Some(DESKTOP_ENTRY));
    assert_eq!(hint("sound-name"), Some(SOUND));
    let urgency = first
        .hints
        .get("urgency")
        .map(|v| u8::try_from(v).expect("a byte"));
    assert_eq!(urgency, Some(1));
    assert_eq!(first.expire_timeout, -1);
    // No app to open it in on this bus: no default action (the desktop's own applies);
    // no inline reply on a server without it.
    assert_eq!(first.action_keys(), ["mark-read"]);
    assert!(
        !first
            .string_hints
            .contains_key("x-kde-reply-placeholder-text")
    );

    // Bob again: the same notification, replaced, with the newest text.
    let second = rig.sms(BOB, "second").await;
    assert_eq!(
        (
            second.replaces_id,
            second.summary.as_str(),
            second.body.as_str()
        ),
        (first.id, BOB, "second")
    );
    // Carol: a notification of her own.
    let carol = rig.sms(CAROL, "hello").await;
    assert_eq!(carol.replaces_id, 0);
    assert_ne!(carol.id, first.id);
    rig.quiet().await;

    // The user dismissed Bob's: the next message from Bob makes a new one.
    rig.server.closed(first.id, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = rig.sms(BOB, "third").await;
    assert_eq!(third.replaces_id, 0);

    // The server restarts (a new owner of its name): the old ids are gone with it.
    drop(rig.server);
    rig.server = Notifications::start(&rig.phone.session.address, &["body"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rig.sms(CAROL, "a < b").await;
    assert_eq!(after.replaces_id, 0);
    // This one does not read markup: the text arrives as it is.
    assert_eq!(after.body, "a < b");
}

#[tokio::test]
async fn reading_or_deleting_a_conversation_withdraws_its_notification() {
    let mut rig = Rig::start(&["body", "actions"]).await;
    let bob = rig.sms(BOB, "read me").await;
    rig.unread_is(1).await;
    rig.phone.api.mark_read(BOB).await.expect("MarkRead");
    assert_eq!(rig.server.next_close().await, bob.id);
    rig.phone
        .signals
        .wait_for(&Signal::ConversationRead { peer: BOB.into() })
        .await;
    rig.unread_is(0).await;
    // Read already: marking it again withdraws nothing and announces nothing.
    rig.phone.api.mark_read(BOB).await.expect("MarkRead");
    rig.quiet().await;

    // Deleting the conversation withdraws its notification.
    let carol = rig.sms(CAROL, "delete me").await;
    rig.phone
        .api
        .delete_conversation(CAROL)
        .await
        .expect("DeleteConversation");
    assert_eq!(rig.server.next_close().await, carol.id);
    rig.phone
        .signals
        .wait_for(&Signal::ConversationDeleted { peer: CAROL.into() })
        .await;

    // So does deleting its unread message.
    let again = rig.sms(BOB, "and me").await;
    assert_eq!(
        again.replaces_id, 0,
        "the read one was withdrawn, and forgotten"
    );
    let id = rig
        .phone
        .api
        .get_messages(BOB, "", 1)
        .await
        .expect("GetMessages")[0]
        .id
        .clone();
    rig.phone
        .api
        .delete_message(&id)
        .await
        .expect("DeleteMessage");
    assert_eq!(rig.server.next_close().await, again.id);
    rig.phone
        .signals
        .wait_for(&Signal::MessageDeleted {
            id,
            peer: BOB.into(),
        })
        .await;
    rig.unread_is(0).await;
}

#[tokio::test]
async fn mark_as_read_on_the_notification_reads_the_conversation() {
    let mut rig = Rig::start(&["body", "actions"]).await;
    rig.sms(BOB, "one").await;
    let call = rig.sms(BOB, "two").await;
    rig.sms(CAROL, "not this one").await;
    rig.unread_is(3).await;

    // Another program on the bus faking the server's signal is not listened to.
    let rogue = rig.phone.session.connect().await;
    rogue
        .emit_signal(
            None::<zbus::names::BusName<'_>>,
            "/org/freedesktop/Notifications",
            "org.freedesktop.Notifications",
            "ActionInvoked",
            &(call.id, "mark-read"),
        )
        .await
        .expect("emit");
    rig.quiet().await;
    rig.unread_is(3).await;

    rig.server.action(call.id, "mark-read").await;
    rig.phone
        .signals
        .wait_for(&Signal::ConversationRead { peer: BOB.into() })
        .await;
    rig.unread_is(1).await;
    assert_eq!(rig.server.next_close().await, call.id);
    let bobs = rig
        .phone
        .api
        .get_messages(BOB, "", 10)
        .await
        .expect("GetMessages");
    assert!(bobs.iter().all(|m| m.read), "{bobs:?}");
    let carols = rig
        .phone
        .api
        .get_messages(CAROL, "", 10)
        .await
        .expect("GetMessages");
    assert!(carols.iter().all(|m| !m.read), "{carols:?}");

    // An action on an id that is not ours (any more) does nothing.
    rig.server.action(call.id, "mark-read").await;
    rig.server.action(4242, "mark-read").await;
    rig.quiet().await;
    rig.unread_is(1).await;
}

#[tokio::test]
async fn an_inline_reply_is_sent_once_through_the_outbox() {
    let mut rig = Rig::start(&["body", "actions", "inline-reply"]).await;
    let call = rig.sms(BOB, "are you coming?").await;
    assert_eq!(call.action_keys(), ["mark-read", "inline-reply"]);
    assert!(
        call.string_hints
            .contains_key("x-kde-reply-placeholder-text")
    );

    rig.server.replied(call.id, "on my way").await;
    let sent = async |ctl: &SimCtl| {
        let sent = ctl.get_sent(ALICE).await;
        sent.iter()
            .map(|d| (dict_str(d, "number"), dict_str(d, "text")))
            .collect::<Vec<_>>()
    };
    eventually("the reply on the modem", || async {
        !sent(&rig.ctl).await.is_empty()
    })
    .await;
    // Answered: the conversation is read, its notification withdrawn.
    rig.phone
        .signals
        .wait_for(&Signal::ConversationRead { peer: BOB.into() })
        .await;
    assert_eq!(rig.server.next_close().await, call.id);
    // It went as any sent message does: stored, in the conversation, sent once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sent(&rig.ctl).await,
        [(BOB.to_owned(), "on my way".to_owned())]
    );
    let newest = &rig
        .phone
        .api
        .get_messages(BOB, "", 1)
        .await
        .expect("GetMessages")[0];
    assert_eq!(
        (newest.direction.as_str(), newest.text.as_str()),
        ("outgoing", "on my way")
    );
    rig.phone.wait_status(&newest.id, "sent").await;

    // A reply the outbox refuses (blank) is not lost silently: the notification says so.
    let call = rig.sms(CAROL, "hello?").await;
    rig.server.replied(call.id, "   ").await;
    let refused = rig.server.next_call().await;
    assert_eq!(refused.replaces_id, call.id);
    assert_eq!(refused.summary, format!("Reply not sent to {CAROL}"));
    assert!(
        refused.body.contains("the text is empty"),
        "{}",
        refused.body
    );
    assert_eq!(sent(&rig.ctl).await.len(), 1, "nothing more was sent");

    // A sender name cannot be answered: no reply offered.
    let bank = rig.sms("ACME Bank", "your code").await;
    assert_eq!(bank.summary, "ACME Bank");
    assert_eq!(bank.action_keys(), ["mark-read"]);
}

#[tokio::test]
async fn opening_a_notification_opens_the_conversation_in_the_app() {
    let (mut rig, app) = Rig::with_app(&["body", "actions"], true).await;
    let (_app, mut activations) = app.expect("the app");
    let call = rig.sms(BOB, "look").await;
    assert_eq!(call.action_keys(), ["default", "mark-read"]);

    rig.server.activation_token(call.id, "token-42").await;
    rig.server.action(call.id, "default").await;
    let activation = tokio::time::timeout(Duration::from_secs(10), activations.recv())
        .await
        .expect("ActivateAction within 10 s")
        .expect("the app runs");
    assert_eq!(activation.action, "open-conversation");
    assert_eq!(activation.parameter, [BOB]);
    assert_eq!(
        activation
            .platform_data
            .get("activation-token")
            .map(String::as_str),
        Some("token-42")
    );
    // Opening is not reading: the app marks it read when the user sees it.
    rig.unread_is(1).await;
}
