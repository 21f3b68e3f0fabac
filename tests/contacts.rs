//! Peers' names from the address book: a real Evolution Data Server (its source registry
//! and address-book factory) on the daemon's private session bus, contacts written
//! through EDS's own D-Bus API, SMS from the simulator. Checks that the names reach
//! `ListConversations`, `GetMessages`, `GetMessage`, `Search`, `MessageReceived` and
//! `tandemctl`, that a number written nationally in the address book matches the E.164
//! peer, and that edits, removals, new address books and a restarted factory are
//! followed without restarting the daemon.

mod common;

use std::process::Command;

use common::eds::{AddressBook, Eds, vcard};
use common::{Bus, Phone, Ran, Sim, SimCtl, config_for, program, temp_dir};
use tandem::api::{ConversationDict, MessageDict};

const ALICE: &str = "+15550001111";
/// Bob as the network gives his number...
const BOB: &str = "+15559876543";
/// ... and as Alice wrote it in her address book (region US).
const BOB_WRITTEN: &str = "(555) 987-6543";
const CAROL: &str = "+15554443333";

/// A 1x1 PNG.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89\0\0\0\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\0\0\0\0IEND\xaeB`\x82";

/// Alice's phone on the simulator, its session bus shared with EDS.
struct World {
    phone: Phone,
    ctl: SimCtl,
    _sim: Sim,
    _system: Bus,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start(session: Bus) -> World {
        let system = Bus::start();
        let sim = Sim::start(&system, &[ALICE]);
        let ctl = SimCtl::new(&system.connect().await).await;
        let dir = temp_dir();
        let phone = Phone::on(
            session,
            &system,
            &dir.path().join("alice"),
            &config_for(ALICE),
        )
        .await;
        World {
            phone,
            ctl,
            _sim: sim,
            _system: system,
            _dir: dir,
        }
    }

    /// An SMS from `from`, as the daemon announced it.
    async fn sms(&self, from: &str, text: &str) -> MessageDict {
        self.ctl.inject_sms(ALICE, from, text).await;
        self.phone
            .signals
            .wait_until(&format!("{text:?} received"), |s| {
                s.received().iter().any(|m| m.text == text)
            })
            .await;
        self.phone.received(text).remove(0)
    }

    async fn conversation(&self, peer: &str) -> ConversationDict {
        let list = self
            .phone
            .api
            .list_conversations(0, 100)
            .await
            .expect("ListConversations");
        list.into_iter()
            .find(|c| c.peer == peer)
            .unwrap_or_else(|| panic!("no conversation with {peer}"))
    }

    /// Waits until the conversation with `peer` carries `name`.
    async fn until_named(&self, peer: &str, name: Option<&str>) {
        self.phone
            .until(&format!("{peer} named {name:?}"), async |api| {
                let list = api
                    .list_conversations(0, 100)
                    .await
                    .expect("ListConversations");
                list.iter()
                    .any(|c| c.peer == peer && c.name.as_deref() == name)
            })
            .await;
    }

    fn tandemctl(&self, args: &[&str]) -> String {
        let mut cmd: Command = program("tandemctl");
        cmd.args(args)
            .env("TZ", "UTC0")
            .env("DBUS_SESSION_BUS_ADDRESS", &self.phone.session.address);
        Ran::of(&mut cmd).success().stdout
    }
}

fn bob_card(uid: Option<&str>, name: &str) -> String {
    let uid = uid.map(|u| format!("UID:{u}"));
    let fn_line = format!("FN:{name}");
    let photo = format!(
        "PHOTO;ENCODING=b;TYPE=image/png:{}",
        data_encoding::BASE64.encode(PNG)
    );
    let tel = format!("TEL;TYPE=CELL:{BOB_WRITTEN}");
    let mut lines = vec![
        fn_line.as_str(),
        "N:Martin;Bob;;;",
        tel.as_str(),
        photo.as_str(),
    ];
    if let Some(uid) = &uid {
        lines.insert(0, uid);
    }
    vcard(&lines)
}

#[tokio::test]
async fn names_come_from_the_address_book_and_follow_its_changes() {
    let session = Bus::start();
    let eds = Eds::start(&session).await;
    let book = AddressBook::open(&session, "system-address-book").await;
    let uid = book.create(&bob_card(None, "Bob Martin")).await;
    let w = World::start(session).await;
    w.phone
        .signals
        .wait_until("ContactsChanged", |s| s.contacts_changed() > 0)
        .await;

    // The name, matched through the number Alice wrote nationally.
    let m = w.sms(BOB, "hello from Bob").await;
    assert_eq!(m.peer, BOB);
    assert_eq!(m.name.as_deref(), Some("Bob Martin"), "{}", eds.logs());
    let photo = m.photo.clone().expect("a photo");
    assert!(photo.starts_with('/'), "{photo}");
    assert_eq!(std::fs::read(&photo).expect("the photo file"), PNG);
    let conv = w.conversation(BOB).await;
    assert_eq!(
        (conv.name.as_deref(), conv.photo.as_deref()),
        (Some("Bob Martin"), Some(photo.as_str()))
    );
    let api = &w.phone.api;
    let listed = api
        .get_messages(BOB_WRITTEN, "", 10)
        .await
        .expect("GetMessages");
    assert_eq!(listed[0].name.as_deref(), Some("Bob Martin"));
    let one = api.get_message(&m.id).await.expect("GetMessage");
    assert_eq!(one.name.as_deref(), Some("Bob Martin"));
    let found = api.search("hello", 10).await.expect("Search");
    assert_eq!(found[0].name.as_deref(), Some("Bob Martin"));

    // Someone not in the address book has no name.
    let m = w.sms(CAROL, "hi, Carol here").await;
    assert_eq!((m.name, m.photo), (None, None));
    assert_eq!(w.conversation(CAROL).await.name, None);

    // tandemctl shows the name beside the number.
    let ls = w.tandemctl(&["conversations"]);
    assert!(ls.contains(&format!("Bob Martin ({BOB})")), "{ls}");
    let shown = w.tandemctl(&["messages", BOB]);
    assert!(
        shown.starts_with(&format!("Bob Martin ({BOB})\n")),
        "{shown}"
    );
    let json = w.tandemctl(&["--json", "messages", BOB]);
    assert!(json.contains("\"name\":\"Bob Martin\""), "{json}");

    // Edited, then removed: followed live.
    let before = w.phone.signals.contacts_changed();
    book.modify(&bob_card(Some(&uid), "Robert Martin")).await;
    w.until_named(BOB, Some("Robert Martin")).await;
    assert!(w.phone.signals.contacts_changed() > before);
    let m = w.sms(BOB, "it's Robert now").await;
    assert_eq!(m.name.as_deref(), Some("Robert Martin"));
    book.remove(&uid).await;
    w.until_named(BOB, None).await;
    let m = w.sms(BOB, "forgotten").await;
    assert_eq!((m.name, m.photo), (None, None));
}

#[tokio::test]
async fn address_books_that_come_later_are_followed() {
    // The daemon starts before EDS: no names, and no error.
    let w = World::start(Bus::start()).await;
    let m = w.sms(CAROL, "before any address book").await;
    assert_eq!(m.name, None);

    let mut eds = Eds::start(&w.phone.session).await;
    let personal = AddressBook::open(&w.phone.session, "system-address-book").await;
    let tel = format!("TEL:{CAROL}");
    let carol = personal.create(&vcard(&["FN:Carol", &tel])).await;
    w.until_named(CAROL, Some("Carol")).await;

    // A new address book (an account added).
    eds.create_book(&w.phone.session, "work-contacts", "Work")
        .await;
    let work = AddressBook::open(&w.phone.session, "work-contacts").await;
    let tel = format!("TEL;TYPE=WORK:{BOB_WRITTEN}");
    work.create(&vcard(&["N:Martin;Bob;;;", &tel])).await;
    w.sms(BOB, "from work").await;
    w.until_named(BOB, Some("Bob Martin")).await;
    let m = w.sms(BOB, "from work again").await;
    assert_eq!(m.name.as_deref(), Some("Bob Martin"), "{}", eds.logs());

    // The factory crashes and comes back: the books are opened again and followed.
    eds.restart_factory().await;
    let personal = AddressBook::open(&w.phone.session, "system-address-book").await;
    let tel = format!("TEL:{CAROL}");
    personal
        .modify(&vcard(&[&format!("UID:{carol}"), "FN:Carol Jones", &tel]))
        .await;
    w.until_named(CAROL, Some("Carol Jones")).await;
}
