//! Tests of the store at its boundary: the public methods, the file on disk, the query
//! plans the speed requirement rests on, and the actor handle.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::*;

const ALICE: &str = "+15550000001";
const BOB: &str = "+15550000002";
const CAROL: &str = "+15550000003";

fn store() -> Store {
    Store::open_in_memory().expect("in-memory store")
}

fn outgoing(store: &mut Store, peer: &str, text: &str, timestamp_ms: i64) -> Message {
    let (message, new) = store
        .insert_outgoing(&NewOutgoing {
            peer,
            text,
            requested: ChannelRequest::Auto,
            delivery_report: false,
            client_token: None,
            timestamp_ms,
        })
        .expect("insert outgoing");
    assert!(new);
    message
}

fn incoming(store: &mut Store, peer: &str, text: &str, timestamp_ms: i64) -> Message {
    let dedupe_key = format!("test:{peer}:{timestamp_ms}:{text}");
    store
        .insert_incoming(&NewIncoming {
            peer,
            text,
            channel: Channel::Sms,
            timestamp_ms,
            dedupe_key: &dedupe_key,
        })
        .expect("insert incoming")
        .expect("a new message")
}

fn ids(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.id.as_str()).collect()
}

fn texts(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.text.as_str()).collect()
}

/// The summary tables agree with the messages: every conversation's last message is its
/// newest by (timestamp, seq), its unread count is right, none is empty, and the FTS
/// index matches the bodies.
fn assert_consistent(store: &Store) {
    let mut stmt = store
        .conn
        .prepare(
            "SELECT c.peer, c.last_seq, c.last_ts, c.unread, \
             (SELECT max(seq) FROM messages WHERE conv = c.id), \
             (SELECT timestamp_ms FROM messages WHERE conv = c.id ORDER BY seq DESC LIMIT 1), \
             (SELECT count(*) FROM messages WHERE conv = c.id AND read = 0) \
             FROM conversations c",
        )
        .expect("prepare");
    let rows = stmt
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                (
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                ),
                (
                    row.get::<_, Option<i64>>(4)?,
                    row.get::<_, Option<i64>>(5)?,
                    row.get::<_, i64>(6)?,
                ),
            ))
        })
        .expect("query");
    for row in rows {
        let (peer, (last_seq, last_ts, unread), (seq, ts, count)) = row.expect("row");
        assert_eq!(
            (Some(last_seq), Some(last_ts), unread),
            (seq, ts, count),
            "conversation {peer}"
        );
    }
    store
        .conn
        .execute(
            "INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)",
            [],
        )
        .expect("FTS index matches the messages");
    let broken: i64 = store
        .conn
        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |row| {
            row.get(0)
        })
        .expect("foreign key check");
    assert_eq!(broken, 0);
}

// ---- opening, files, migrations -------------------------------------------------

#[test]
fn file_store_keeps_its_data_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("nested/tandem/messages.db");
    let (sent, got) = {
        let mut store = Store::open(&path).expect("open new");
        let sent = outgoing(&mut store, ALICE, "see you at 8", 1_000);
        let got = incoming(&mut store, ALICE, "ok, at the café", 2_000);
        (sent, got)
    };
    let mut store = Store::open(&path).expect("reopen");
    assert_eq!(store.get_message(&sent.id).expect("sent"), sent);
    assert_eq!(store.get_message(&got.id).expect("got"), got);
    assert_eq!(
        ids(&store.search("cafe", 10).expect("search")),
        [got.id.as_str()]
    );
    assert_eq!(store.unread_count().expect("unread"), 1);
    let version: i64 = store
        .conn
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .expect("user_version");
    assert_eq!(version, MIGRATIONS.len() as i64);
    // The reopened store is writable and its dedupe keys survived.
    assert!(
        store
            .insert_incoming(&NewIncoming {
                peer: ALICE,
                text: "ok, at the café",
                channel: Channel::Sms,
                timestamp_ms: 2_000,
                dedupe_key: &format!("test:{ALICE}:2000:ok, at the café"),
            })
            .expect("insert")
            .is_none()
    );
    assert_consistent(&store);
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn database_files_are_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("data/messages.db");
    let mut store = Store::open(&path).expect("open");
    outgoing(&mut store, ALICE, "hi", 1);
    assert_eq!(mode(&dir.path().join("data")), 0o700);
    for file in ["messages.db", "messages.db-wal", "messages.db-shm"] {
        assert_eq!(mode(&dir.path().join("data").join(file)), 0o600, "{file}");
    }
    drop(store);

    // A database left readable by others is made private again.
    let loose = dir.path().join("loose.db");
    std::fs::write(&loose, b"").expect("create");
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    Store::open(&loose).expect("open loose");
    assert_eq!(mode(&loose), 0o600);
}

/// Whatever modes the directory and files had, opening the store gives them 0700 and
/// 0600 (a read-only database too, which SQLite could not write), but a shared
/// directory (sticky, like /tmp) is not closed.
#[test]
fn existing_files_and_directory_are_made_private() {
    let chmod = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let path = data.join("messages.db");
    let mut store = Store::open(&path).expect("open");
    outgoing(&mut store, ALICE, "kept", 1);
    drop(store);
    for (dir_mode, file_mode) in [
        (0o755, 0o644),
        (0o777, 0o666),
        (0o750, 0o400),
        (0o700, 0o700),
    ] {
        chmod(&data, dir_mode);
        for file in ["messages.db", "messages.db-wal", "messages.db-shm"] {
            if data.join(file).exists() {
                chmod(&data.join(file), file_mode);
            }
        }
        let mut store = Store::open(&path).expect("reopen");
        assert_eq!(mode(&data), 0o700, "{dir_mode:o}");
        for file in ["messages.db", "messages.db-wal", "messages.db-shm"] {
            if data.join(file).exists() {
                assert_eq!(mode(&data.join(file)), 0o600, "{file} from {file_mode:o}");
            }
        }
        // Still the same database, and writable.
        assert_eq!(
            texts(&store.get_messages(ALICE, None, 10).expect("read")),
            ["kept"]
        );
        outgoing(&mut store, BOB, "written", 2);
    }

    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    chmod(&shared, 0o1777);
    let db = shared.join("messages.db");
    drop(Store::open(&db).expect("open in a shared directory"));
    assert_eq!(
        std::fs::metadata(&shared)
            .expect("meta")
            .permissions()
            .mode()
            & 0o7777,
        0o1777
    );
    assert_eq!(mode(&db), 0o600);
}

#[test]
fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("messages.db");
    drop(Store::open(&path).expect("open"));
    Connection::open(&path)
        .and_then(|conn| conn.pragma_update(None, "user_version", 99))
        .expect("bump user_version");
    match Store::open(&path) {
        Err(StoreError::TooNew { found: 99, known }) => {
            assert_eq!(known, MIGRATIONS.len() as i64)
        }
        other => panic!("expected TooNew, got {:?}", other.map(|_| "a store")),
    }
}

#[test]
fn unopenable_path_is_an_io_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").expect("create");
    // A regular file where the parent directory should be.
    match Store::open(&file.join("messages.db")) {
        Err(StoreError::Io { path, .. }) => assert_eq!(path, file),
        other => panic!("expected Io, got {:?}", other.map(|_| "a store")),
    }
}

#[test]
fn query_tokenizer_is_the_index_tokenizer() {
    let (_, sql) = MIGRATIONS[0];
    assert!(sql.contains(&format!("tokenize = '{QUERY_TOKENIZER}'")));
}

// ---- inserting ------------------------------------------------------------------

#[test]
fn outgoing_is_queued_and_idempotent_by_client_token() {
    let mut store = store();
    let send = |store: &mut Store, text: &str, token: Option<&str>| {
        store
            .insert_outgoing(&NewOutgoing {
                peer: ALICE,
                text,
                requested: ChannelRequest::Sms,
                delivery_report: true,
                client_token: token,
                timestamp_ms: 10,
            })
            .expect("insert")
    };
    let (first, new) = send(&mut store, "hello", Some("token-1"));
    assert!(new);
    assert_eq!(
        (
            first.direction,
            first.status,
            first.channel,
            first.read,
            first.error.as_deref()
        ),
        (Direction::Outgoing, Status::Queued, None, true, None)
    );
    assert_eq!(
        Uuid::parse_str(&first.id).map(|u| u.get_version_num()),
        Ok(4)
    );
    // (text, token, expect a new message)
    let cases: &[(&str, Option<&str>, bool)] = &[
        ("hello again", Some("token-1"), false),
        ("hello", Some("token-2"), true),
        ("hello", None, true),
        ("hello", None, true),
    ];
    for &(text, token, want_new) in cases {
        let (message, new) = send(&mut store, text, token);
        assert_eq!(new, want_new, "{text} {token:?}");
        assert_eq!(message.id == first.id, !want_new, "{text} {token:?}");
    }
    assert_eq!(store.get_messages(ALICE, None, 100).expect("list").len(), 4);
    let entry = &store.outbox().expect("outbox")[0];
    assert_eq!(
        (
            entry.requested,
            entry.delivery_report,
            entry.attempts,
            entry.next_attempt_ms
        ),
        (ChannelRequest::Sms, true, 0, 0)
    );
    assert_consistent(&store);
}

#[test]
fn incoming_is_deduplicated_by_key() {
    let mut store = store();
    let receive = |store: &mut Store, text: &str, key: &str| {
        store
            .insert_incoming(&NewIncoming {
                peer: BOB,
                text,
                channel: Channel::Ip,
                timestamp_ms: 50,
                dedupe_key: key,
            })
            .expect("insert")
    };
    let first = receive(&mut store, "ping", "ip:1").expect("new");
    assert_eq!(
        (first.direction, first.status, first.channel, first.read),
        (
            Direction::Incoming,
            Status::Received,
            Some(Channel::Ip),
            false
        )
    );
    // (text, key, expect a new message)
    let cases: &[(&str, &str, bool)] = &[
        ("ping", "ip:1", false),
        ("something else", "ip:1", false),
        ("ping", "ip:2", true),
        ("ping", "ip:1 ", true),
    ];
    for &(text, key, want_new) in cases {
        assert_eq!(
            receive(&mut store, text, key).is_some(),
            want_new,
            "{text} {key:?}"
        );
    }
    assert_eq!(store.unread_count().expect("unread"), 3);
    assert_consistent(&store);
}

// ---- single messages ------------------------------------------------------------

#[test]
fn unknown_ids_are_not_found() {
    let mut store = store();
    outgoing(&mut store, ALICE, "hi", 1);
    let unknown = Uuid::new_v4().to_string();
    for id in [unknown.as_str(), "not-a-uuid", ""] {
        let check = |result: Result<()>| match result {
            Err(StoreError::NotFound(got)) => assert_eq!(got, id),
            other => panic!("{id:?}: expected NotFound, got {other:?}"),
        };
        check(store.get_message(id).map(drop));
        check(store.update_status(id, Status::Sent, None, None).map(drop));
        check(store.mark_sent_sms(id, Some(1), false).map(drop));
        check(store.mark_announced(id));
        check(store.record_attempt(id, 1, 2));
        check(store.delete_message(id).map(drop));
    }
}

/// The `sending` mark skips the fsync but not the WAL: it survives the process (a new
/// connection, as after a kill, sees it), and every other write is durable again after it,
/// also after one that failed.
#[test]
fn sending_marks_skip_the_fsync_and_nothing_else_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("messages.db");
    let mut store = Store::open(&path).expect("open");
    let synchronous = |store: &Store| -> i64 {
        store
            .conn
            .pragma_query_value(None, "synchronous", |row| row.get(0))
            .expect("pragma")
    };
    const FULL: i64 = 2;
    assert_eq!(synchronous(&store), FULL);
    let id = outgoing(&mut store, ALICE, "hi", 1).id;
    store
        .update_status(&id, Status::Sending, None, None)
        .expect("sending");
    assert_eq!(synchronous(&store), FULL, "durable again after the mark");
    let other = Store::open(&path).expect("second connection");
    assert_eq!(
        other.get_message(&id).expect("seen").status,
        Status::Sending
    );
    let missing = "00000000-0000-4000-8000-000000000000";
    assert!(matches!(
        store.update_status(missing, Status::Sending, None, None),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        synchronous(&store),
        FULL,
        "durable again after a failed mark"
    );
}

#[test]
fn update_status_sets_channel_and_error() {
    let mut store = store();
    let id = outgoing(&mut store, ALICE, "hi", 1).id;
    // (status, channel, error) → (channel, error) afterwards
    type Step = (
        Status,
        Option<Channel>,
        Option<&'static str>,
        Option<Channel>,
        Option<&'static str>,
    );
    let steps: &[Step] = &[
        (Status::Sending, None, None, None, None),
        (
            Status::Sending,
            Some(Channel::Ip),
            Some("ignored"),
            Some(Channel::Ip),
            None,
        ),
        (
            Status::Failed,
            None,
            Some("no route"),
            Some(Channel::Ip),
            Some("no route"),
        ),
        (
            Status::Queued,
            Some(Channel::Sms),
            None,
            Some(Channel::Sms),
            None,
        ),
        (Status::Sent, None, None, Some(Channel::Sms), None),
        (
            Status::Delivered,
            None,
            Some("ignored"),
            Some(Channel::Sms),
            None,
        ),
        (Status::Failed, None, None, Some(Channel::Sms), None),
    ];
    for &(status, channel, error, want_channel, want_error) in steps {
        let message = store
            .update_status(&id, status, channel, error)
            .expect("update");
        assert_eq!(
            (message.status, message.channel, message.error.as_deref()),
            (status, want_channel, want_error),
            "{status} {channel:?} {error:?}"
        );
        assert_eq!(store.get_message(&id).expect("get"), message);
    }
}

#[test]
fn sms_reference_finds_the_newest_sent_message() {
    let mut store = store();
    let sent = |store: &mut Store, peer: &str, ts: i64, reference: u32, status: Status| {
        let id = outgoing(store, peer, "sms", ts).id;
        store
            .mark_sent_sms(&id, Some(reference), false)
            .expect("reference");
        store
            .update_status(&id, status, Some(Channel::Sms), None)
            .expect("status");
        id
    };
    let old_delivered = sent(&mut store, ALICE, 100, 7, Status::Delivered);
    let older = sent(&mut store, ALICE, 200, 7, Status::Sent);
    let newer = sent(&mut store, ALICE, 300, 7, Status::Sent);
    let _other_peer = sent(&mut store, BOB, 400, 7, Status::Sent);
    let _other_ref = sent(&mut store, ALICE, 500, 8, Status::Delivered);
    let find = |store: &Store, peer: &str, reference: u32| {
        store
            .find_by_sms_reference(peer, reference)
            .expect("find")
            .map(|m| m.id)
    };
    assert_eq!(find(&store, ALICE, 7), Some(newer.clone()));
    store
        .update_status(&newer, Status::Delivered, None, None)
        .expect("deliver");
    assert_eq!(find(&store, ALICE, 7), Some(older.clone()));
    store
        .update_status(&older, Status::Failed, None, Some("rejected"))
        .expect("fail");
    // Only final messages carry 7 now: a late report must not touch them.
    assert_eq!(find(&store, ALICE, 7), None);
    assert_eq!(find(&store, ALICE, 8), None);
    assert_eq!(find(&store, CAROL, 7), None);
    assert!(store.get_message(&old_delivered).is_ok());
}

#[test]
fn outbox_holds_pending_outgoing_in_acceptance_order() {
    let mut store = store();
    let first = outgoing(&mut store, ALICE, "one", 1_000);
    incoming(&mut store, ALICE, "not outgoing", 1_500);
    let second = outgoing(&mut store, BOB, "two", 3_000);
    // The clock went back: still accepted after `second`.
    let third = outgoing(&mut store, ALICE, "three", 2_000);
    let done = outgoing(&mut store, CAROL, "done", 500);
    store
        .update_status(&done.id, Status::Sent, Some(Channel::Ip), None)
        .expect("sent");
    store
        .update_status(&second.id, Status::Sending, Some(Channel::Sms), None)
        .expect("sending");
    store.record_attempt(&first.id, 2, 9_000).expect("attempt");

    let outbox = store.outbox().expect("outbox");
    let got: Vec<(&str, Status, u32, i64)> = outbox
        .iter()
        .map(|e| {
            (
                e.message.text.as_str(),
                e.message.status,
                e.attempts,
                e.next_attempt_ms,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("one", Status::Queued, 2, 9_000),
            ("two", Status::Sending, 0, 0),
            ("three", Status::Queued, 0, 0),
        ]
    );
    assert_eq!(outbox[2].message, third);

    store
        .update_status(&first.id, Status::Failed, None, Some("gave up"))
        .expect("fail");
    assert_eq!(store.outbox().expect("outbox").len(), 2);
}

// ---- conversations ----------------------------------------------------------------

/// (peer, last text, last direction, unread), newest activity first.
fn summary(store: &Store) -> Vec<(String, String, Direction, u32)> {
    store
        .list_conversations(0, 100)
        .expect("list")
        .into_iter()
        .map(|c| {
            (
                c.peer.into_string(),
                c.last_text,
                c.last_direction,
                c.unread,
            )
        })
        .collect()
}

fn row(
    peer: &str,
    text: &str,
    direction: Direction,
    unread: u32,
) -> (String, String, Direction, u32) {
    (peer.to_owned(), text.to_owned(), direction, unread)
}

#[test]
fn conversation_list_follows_every_change() {
    use Direction::{Incoming, Outgoing};
    let mut store = store();
    incoming(&mut store, ALICE, "a1", 100);
    let a2 = incoming(&mut store, ALICE, "a2", 400);
    incoming(&mut store, BOB, "b1", 200);
    outgoing(&mut store, BOB, "b2", 300);
    incoming(&mut store, CAROL, "c1", 250);
    // Arrives last but is stamped older (an SMS centre's clock, a late delivery): it is
    // still the newest activity, shown with its own timestamp.
    let c0 = incoming(&mut store, CAROL, "c0 (delayed)", 50);
    assert_eq!(
        summary(&store),
        [
            row(CAROL, "c0 (delayed)", Incoming, 2),
            row(BOB, "b2", Outgoing, 1),
            row(ALICE, "a2", Incoming, 2),
        ]
    );
    let first = &store.list_conversations(0, 1).expect("list")[0];
    assert_eq!(
        (first.last_id.as_str(), first.last_timestamp_ms),
        (c0.id.as_str(), 50)
    );
    assert_eq!(store.unread_count().expect("unread"), 5);
    assert_consistent(&store);

    // Paging the list.
    let page: Vec<String> = store
        .list_conversations(1, 5)
        .expect("list")
        .into_iter()
        .map(|c| c.peer.into_string())
        .collect();
    assert_eq!(page, [BOB, ALICE]);
    assert!(store.list_conversations(3, 5).expect("list").is_empty());
    assert!(store.list_conversations(0, 0).expect("list").is_empty());

    // (peer to mark read, how many change)
    for (peer, want) in [(CAROL, 2), (CAROL, 0), ("+10000000000", 0)] {
        assert_eq!(store.mark_read(peer).expect("mark read"), want, "{peer}");
    }
    assert_eq!(store.unread_count().expect("unread"), 3);
    assert_consistent(&store);

    // Deleting the last message moves the conversation back in the list.
    let deleted = store.delete_message(&c0.id).expect("delete");
    assert_eq!(deleted.id, c0.id);
    assert!(deleted.read, "marked read above");
    assert_eq!(
        summary(&store),
        [
            row(CAROL, "c1", Incoming, 0),
            row(BOB, "b2", Outgoing, 1),
            row(ALICE, "a2", Incoming, 2),
        ]
    );
    let deleted = store.delete_message(&a2.id).expect("delete");
    assert_eq!(deleted, a2);
    assert_eq!(store.unread_count().expect("unread"), 2);
    assert_consistent(&store);

    assert_eq!(store.delete_conversation(BOB).expect("delete"), 2);
    assert_eq!(store.delete_conversation(BOB).expect("delete again"), 0);
    assert_eq!(
        summary(&store),
        [row(CAROL, "c1", Incoming, 0), row(ALICE, "a1", Incoming, 1)]
    );
    assert_eq!(store.peers().expect("peers"), [ALICE, CAROL]);
    assert_eq!(store.unread_count().expect("unread"), 1);
    assert_consistent(&store);

    // The only message of a conversation: the conversation goes with it.
    let only = store.get_messages(ALICE, None, 10).expect("messages");
    assert_eq!(texts(&only), ["a1"]);
    store.delete_message(&only[0].id).expect("delete");
    assert_eq!(store.peers().expect("peers"), [CAROL]);
    assert_eq!(store.unread_count().expect("unread"), 0);
    assert_consistent(&store);
}

#[test]
fn cursor_paging_follows_arrival_whatever_the_timestamps() {
    let mut store = store();
    // Inserted in this order: newest first means last inserted first, equal or
    // out-of-order timestamps notwithstanding.
    let stamps = [5, 5, 5, 3, 5, 9, 5, 1];
    let mut inserted = Vec::new();
    for (i, &ts) in stamps.iter().enumerate() {
        let text = format!("m{i}");
        inserted.push(if i % 2 == 0 {
            incoming(&mut store, ALICE, &text, ts)
        } else {
            outgoing(&mut store, ALICE, &text, ts)
        });
        outgoing(&mut store, BOB, "interleaved", ts);
    }
    let want = ["m7", "m6", "m5", "m4", "m3", "m2", "m1", "m0"];
    let all = store.get_messages(ALICE, None, 100).expect("all");
    assert_eq!(texts(&all), want);
    for limit in 1..=4 {
        let mut paged = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = store
                .get_messages(ALICE, cursor.as_deref(), limit)
                .expect("page");
            assert!(page.len() <= limit as usize);
            let Some(last) = page.last() else { break };
            cursor = Some(last.id.to_string());
            paged.extend(page);
        }
        assert_eq!(texts(&paged), want, "limit {limit}");
    }
    assert!(
        store
            .get_messages(ALICE, None, 0)
            .expect("empty")
            .is_empty()
    );
    assert!(
        store
            .get_messages(CAROL, None, 10)
            .expect("unknown peer")
            .is_empty()
    );
}

#[test]
fn unknown_cursor_is_not_found() {
    let mut store = store();
    incoming(&mut store, ALICE, "a", 1);
    let bobs = outgoing(&mut store, BOB, "b", 2);
    let deleted = outgoing(&mut store, ALICE, "gone", 3);
    store.delete_message(&deleted.id).expect("delete");
    let unknown = Uuid::new_v4().to_string();
    // (peer, cursor)
    let cases = [
        (ALICE, unknown.as_str()),
        (ALICE, "garbage"),
        (ALICE, bobs.id.as_str()),
        (ALICE, deleted.id.as_str()),
        (CAROL, bobs.id.as_str()),
    ];
    for (peer, cursor) in cases {
        match store.get_messages(peer, Some(cursor), 10) {
            Err(StoreError::NotFound(id)) => assert_eq!(id, cursor),
            other => panic!("{peer} {cursor}: expected NotFound, got {other:?}"),
        }
    }
}

#[test]
fn peers_lists_every_conversation() {
    let mut store = store();
    assert!(store.peers().expect("peers").is_empty());
    for peer in [CAROL, "ACME", ALICE, CAROL] {
        outgoing(&mut store, peer, "hi", 1);
    }
    assert_eq!(
        store.peers().expect("peers"),
        ["+15550000001", "+15550000003", "ACME"]
    );
}

// ---- search -------------------------------------------------------------------------

#[test]
fn search_takes_any_text_as_words() {
    let mut store = store();
    let bodies = [
        "Meet me at the station at 5",
        "don't forget the milk",
        "e-mail: bob@example.com (work)",
        "Grüße aus Köln",
        "Привет, как дела?",
        "café au lait",
        "AND OR NOT NEAR",
        "price: $5 * 2 - \"discount\"",
        "東京で会いましょう",
    ];
    for (i, body) in bodies.iter().enumerate() {
        incoming(&mut store, ALICE, body, i as i64);
    }
    // (query, bodies found, newest first)
    let cases: &[(&str, &[&str])] = &[
        ("station", &[bodies[0]]),
        ("STATION", &[bodies[0]]),
        ("stat", &[]),
        ("the", &[bodies[1], bodies[0]]),
        ("the milk", &[bodies[1]]),
        ("\"station\"", &[bodies[0]]),
        ("station*", &[bodies[0]]),
        ("-station", &[bodies[0]]),
        ("station:", &[bodies[0]]),
        ("(station", &[bodies[0]]),
        ("station)", &[bodies[0]]),
        ("{station}", &[bodies[0]]),
        ("^station", &[bodies[0]]),
        ("station AND milk", &[]),
        ("station OR milk", &[]),
        ("NOT", &[bodies[6]]),
        ("NEAR(", &[bodies[6]]),
        ("don't", &[bodies[1]]),
        ("bob@example.com", &[bodies[2]]),
        ("e-mail", &[bodies[2]]),
        ("body:station", &[]),
        ("\"discount\" $5", &[bodies[7]]),
        ("grüße", &[bodies[3]]),
        ("GRÜSSE", &[]),
        ("koln", &[bodies[3]]),
        ("Köln", &[bodies[3]]),
        ("привет", &[bodies[4]]),
        ("ПРИВЕТ", &[bodies[4]]),
        ("прив", &[]),
        ("дела", &[bodies[4]]),
        ("cafe", &[bodies[5]]),
        ("CAFÉ", &[bodies[5]]),
        // unicode61 keeps a run of ideographs as one word.
        ("東京で会いましょう", &[bodies[8]]),
        ("東京", &[]),
        ("nothing-like-this", &[]),
        ("", &[]),
        ("   ", &[]),
        ("\"", &[]),
        ("\"\"\"", &[]),
        ("*", &[]),
        ("-", &[]),
        (":", &[]),
        ("()", &[]),
        ("'", &[]),
        ("\0", &[]),
        ("sta\0tion", &[]),
        ("😊", &[]),
        ("\u{202e}", &[]),
    ];
    for &(query, want) in cases {
        let found = store
            .search(query, 10)
            .unwrap_or_else(|e| panic!("{query:?}: {e}"));
        assert_eq!(texts(&found), want, "{query:?}");
    }
}

#[test]
fn search_is_newest_first_and_limited() {
    let mut store = store();
    for ts in [30, 10, 50, 20, 40] {
        incoming(&mut store, BOB, &format!("hello {ts}"), ts);
    }
    outgoing(&mut store, ALICE, "hello from me", 60);
    let found = store.search("hello", 3).expect("search");
    assert_eq!(texts(&found), ["hello from me", "hello 40", "hello 20"]);
    assert_eq!(found[0].peer, ALICE);
    assert_eq!(found[0].direction, Direction::Outgoing);
    assert!(store.search("hello", 0).expect("search").is_empty());
}

/// The query expression never contains a phrase (which `detail=none` refuses): every
/// token the tokenizer makes of any character is again exactly one token, and searching
/// for any character, alone or in runs, is no error.
#[test]
fn search_survives_every_character() {
    let mut store = store();
    incoming(&mut store, ALICE, "plain words", 1);
    let chars: Vec<char> = (0..=0x10ffff_u32).filter_map(char::from_u32).collect();
    for chunk in chars.chunks(4_000) {
        let from = u32::from(chunk[0]);
        let separated: String = chunk.iter().flat_map(|&c| [c, ' ']).collect();
        let tokens = query_tokens(&store.conn, &separated).expect("tokens");
        let again = query_tokens(&store.conn, &tokens.join(" ")).expect("tokens again");
        assert_eq!(tokens, again, "chars from U+{from:04X}");
        // Every group of tokens the search could be given, alone or as runs make them,
        // is a valid expression for the index.
        let joined: String = chunk.iter().collect();
        let runs = query_tokens(&store.conn, &joined).expect("tokens of runs");
        for group in tokens
            .chunks(MAX_SEARCH_TERMS)
            .chain(runs.chunks(MAX_SEARCH_TERMS))
        {
            let expr = fts_expression(group).expect("tokens");
            let found = store.conn.prepare_cached(SEARCH).and_then(|mut stmt| {
                stmt.query_map(params![expr, 1], |_| Ok(()))?
                    .collect::<rusqlite::Result<Vec<()>>>()
            });
            if let Err(e) = found {
                panic!("chars from U+{from:04X}: {expr:?}: {e}");
            }
        }
        // And the search itself, with the first characters of the chunk (16 characters
        // make at most 16 words and 64 bytes).
        let start: String = chunk.iter().take(MAX_SEARCH_TERMS).collect();
        if let Err(e) = store.search(&start, 1) {
            panic!("chars from U+{from:04X}: {e}");
        }
    }
}

#[test]
fn search_bounds_its_query() {
    let mut store = store();
    let hello = incoming(&mut store, ALICE, "hello there", 1);

    // Bytes: the limit is accepted, one byte more is refused before any work.
    let at_limit = format!("hello{}", " ".repeat(MAX_SEARCH_BYTES - 5));
    assert_eq!(
        ids(&store.search(&at_limit, 10).expect("at the limit")),
        [hello.id.as_str()]
    );
    match store.search(&format!("{at_limit}x"), 10) {
        Err(StoreError::QueryTooLong { bytes, max }) => {
            assert_eq!((bytes, max), (MAX_SEARCH_BYTES + 1, MAX_SEARCH_BYTES))
        }
        other => panic!("expected QueryTooLong, got {other:?}"),
    }
    assert!(matches!(
        store.search(&"hello ".repeat(200_000), 10),
        Err(StoreError::QueryTooLong { .. })
    ));

    // Words: counted after folding and without repeats.
    let repeated = "Hello HELLO héllo hello ".repeat(40);
    assert!(repeated.len() <= MAX_SEARCH_BYTES);
    assert_eq!(
        ids(&store.search(&repeated, 10).expect("one word")),
        [hello.id.as_str()]
    );
    let words = |n: usize| {
        (0..n)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(
        store
            .search(&words(MAX_SEARCH_TERMS), 10)
            .expect("16 words")
            .is_empty()
    );
    let seventeen = format!(
        "{} {}",
        words(MAX_SEARCH_TERMS + 1),
        words(MAX_SEARCH_TERMS)
    );
    match store.search(&seventeen, 10) {
        Err(StoreError::TooManyTerms { terms, max }) => {
            assert_eq!((terms, max), (MAX_SEARCH_TERMS + 1, MAX_SEARCH_TERMS))
        }
        other => panic!("expected TooManyTerms, got {other:?}"),
    }
    let e = store.search(&seventeen, 10).expect_err("too many");
    assert_eq!(
        e.to_string(),
        "the search query has 17 different words, more than the limit of 16"
    );
}

#[test]
fn distinct_keeps_first_appearances_in_order() {
    let tokens = ["b", "a", "b", "c", "a"].map(String::from).to_vec();
    assert_eq!(distinct(tokens), ["b", "a", "c"]);
    assert!(distinct(Vec::new()).is_empty());
}

/// A search past its budget stops with OverBudget, and the deadline goes with it: the
/// next statements, writes included, run as usual.
#[test]
fn search_stops_at_its_budget_and_leaves_no_deadline() {
    let mut store = store();
    // Enough rows that fetching them takes many more VM steps than PROGRESS_STEPS, so
    // that the handler runs (and finds a zero budget spent) whatever the machine.
    for i in 0..2_000 {
        incoming(&mut store, ALICE, &format!("budget test {i}"), i);
    }
    match store.search_within("budget", 1000, Duration::ZERO) {
        Err(StoreError::OverBudget { budget }) => assert_eq!(budget, Duration::ZERO),
        other => panic!("expected OverBudget, got {:?}", other.map(|m| m.len())),
    }
    let e = StoreError::OverBudget {
        budget: SEARCH_BUDGET,
    };
    assert!(e.to_string().contains("budget of 100 ms"), "{e}");
    // No deadline is left behind: a long search and a write after it both work.
    assert_eq!(store.search("budget", 1000).expect("search").len(), 1000);
    std::thread::sleep(Duration::from_millis(5));
    let later = outgoing(&mut store, BOB, "written after the budget", 5_000);
    assert_eq!(store.get_message(&later.id).expect("stored"), later);
    assert_eq!(store.search("budget", 1000).expect("search").len(), 1000);
    assert_consistent(&store);
}

#[test]
fn fts_expression_quotes_every_token() {
    let cases: &[(&[&str], Option<&str>)] = &[
        (&[], None),
        (&["word"], Some("\"word\"")),
        (&["a", "b"], Some("\"a\" \"b\"")),
        (&["say\"what"], Some("\"say\"\"what\"")),
    ];
    for &(tokens, want) in cases {
        let tokens: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
        assert_eq!(fts_expression(&tokens).as_deref(), want, "{tokens:?}");
    }
}

#[test]
fn deleted_messages_leave_the_search_index() {
    let mut store = store();
    let keep = incoming(&mut store, ALICE, "lunch at noon", 1);
    let gone = outgoing(&mut store, ALICE, "lunch tomorrow instead", 2);
    incoming(&mut store, BOB, "lunch? bob here", 3);
    assert_eq!(store.search("lunch", 10).expect("search").len(), 3);
    store.delete_message(&gone.id).expect("delete");
    assert!(matches!(
        store.delete_message(&gone.id),
        Err(StoreError::NotFound(_))
    ));
    assert!(store.search("tomorrow", 10).expect("search").is_empty());
    store.delete_conversation(BOB).expect("delete conversation");
    assert_eq!(
        ids(&store.search("lunch", 10).expect("search")),
        [keep.id.as_str()]
    );
    assert_consistent(&store);
}

// ---- speed: query plans --------------------------------------------------------------

#[test]
fn hot_queries_use_indexes_only() {
    let mut store = store();
    crate::bench::synthetic::fill(&mut store, 2_000, 50, 3).expect("fill");
    // As the daemon runs (no statistics), and after an ANALYZE (as `PRAGMA optimize`
    // might one day do): the plans must be right either way.
    assert_plans(&store);
    store.conn.execute_batch("ANALYZE").expect("analyze");
    assert_plans(&store);
}

fn assert_plans(store: &Store) {
    // (name, statement, the index it must use)
    let hot = [
        ("GET_MESSAGE", GET_MESSAGE, "sqlite_autoindex_messages_1"),
        ("BY_TOKEN", BY_TOKEN, "messages_token"),
        ("DEDUPE_SEEN", DEDUPE_SEEN, "messages_dedupe"),
        (
            "CONVERSATION_BY_PEER",
            CONVERSATION_BY_PEER,
            "sqlite_autoindex_conversations_1",
        ),
        ("BY_SMS_REF", BY_SMS_REF, "messages_sent_refs"),
        ("OUTBOX", OUTBOX, "messages_outbox"),
        (
            "LIST_CONVERSATIONS",
            LIST_CONVERSATIONS,
            "conversations_by_activity",
        ),
        ("CURSOR", CURSOR, "sqlite_autoindex_messages_1"),
        ("PAGE", PAGE, "messages_by_conv"),
        ("SEARCH", SEARCH, "messages_fts VIRTUAL TABLE"),
        ("MARK_READ", MARK_READ, "messages_unread"),
        (
            "NEWEST_IN_CONVERSATION",
            NEWEST_IN_CONVERSATION,
            "messages_by_conv",
        ),
        ("UNREAD_COUNT", UNREAD_COUNT, "conversations_unread"),
    ];
    for (name, sql, index) in hot {
        let mut stmt = store
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("explain");
        let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
        let plan: Vec<String> = stmt
            .query_map(rusqlite::params_from_iter(nulls), |row| row.get(3))
            .expect("plan")
            .collect::<rusqlite::Result<_>>()
            .expect("plan rows");
        let text = plan.join("\n");
        assert!(text.contains(index), "{name} does not use {index}:\n{text}");
        for line in &plan {
            let scan = match line.split(' ').take(2).collect::<Vec<_>>()[..] {
                // Reading a subquery's page (search hits, a page of conversations).
                ["SCAN", alias] if plan.contains(&format!("CO-ROUTINE {alias}")) => false,
                // The FTS index answering MATCH.
                ["SCAN", "messages_fts"] => false,
                // Walking the list in order, stopping after offset + limit rows.
                ["SCAN", "conversations"] => {
                    name != "LIST_CONVERSATIONS"
                        || !line.contains("USING INDEX conversations_by_activity")
                }
                ["SCAN", _] => true,
                _ => false,
            };
            // Sorting a page (search hits, the outbox) is fine; sorting a table is not.
            let sort = line.contains("TEMP B-TREE")
                && !matches!(name, "SEARCH" | "OUTBOX" | "LIST_CONVERSATIONS");
            assert!(!scan && !sort, "{name}:\n{text}");
        }
    }
}

fn imported(peer: &str, direction: Direction, text: &str, timestamp_ms: i64) -> ImportedMessage {
    let incoming = direction == Direction::Incoming;
    ImportedMessage {
        id: Uuid::new_v4(),
        peer: peer.to_owned(),
        direction,
        status: if incoming {
            Status::Received
        } else {
            Status::Delivered
        },
        channel: Channel::Sms,
        timestamp_ms,
        read: !incoming,
        text: text.to_owned(),
        dedupe_key: incoming.then(|| format!("test:{peer}:{timestamp_ms}:{text}")),
        token: (!incoming).then(|| format!("token-{timestamp_ms}")),
        delivery_report: false,
        sms_ref: None,
        error: None,
    }
}

#[test]
fn an_import_is_stored_as_if_it_had_arrived_and_is_all_or_nothing() {
    let mut store = store();
    incoming(&mut store, CAROL, "before the import", 500);
    let history = vec![
        imported(ALICE, Direction::Incoming, "lunch tomorrow?", 1_000),
        imported(ALICE, Direction::Outgoing, "yes, noon", 2_000),
        imported(BOB, Direction::Incoming, "the train is late", 3_000),
    ];
    assert_eq!(store.import(history.clone()).expect("import"), 3);
    assert_eq!(store.newest_activity_ms().expect("newest"), Some(3_000));
    let list = store.list_conversations(0, 10).expect("list");
    let peers: Vec<&str> = list.iter().map(|c| c.peer.as_str()).collect();
    assert_eq!(peers, [BOB, ALICE, CAROL]);
    assert_eq!(list[1].last_text, "yes, noon");
    // Both imported incoming messages are unread, with the one stored before.
    assert_eq!(store.unread_count().expect("unread"), 3);
    assert_eq!(
        texts(&store.search("tomorrow", 10).expect("search")),
        ["lunch tomorrow?"]
    );
    // The same incoming message arriving again is recognised by its key.
    let again = &history[0];
    let key = again.dedupe_key.clone().expect("key");
    let found = store
        .insert_incoming(&NewIncoming {
            peer: ALICE,
            text: &again.text,
            channel: Channel::Sms,
            timestamp_ms: again.timestamp_ms,
            dedupe_key: &key,
        })
        .expect("insert");
    assert_eq!(
        found, None,
        "an imported message must dedupe like a stored one"
    );
    // A failing import (an id already stored) leaves nothing of itself behind, and the
    // FTS trigger it set aside is back: later messages are still found.
    let mut bad = vec![imported(CAROL, Direction::Incoming, "halfway", 4_000)];
    bad.push(history[1].clone());
    store.import(bad).expect_err("duplicate id");
    assert!(store.search("halfway", 10).expect("search").is_empty());
    assert_eq!(store.newest_activity_ms().expect("newest"), Some(3_000));
    incoming(&mut store, CAROL, "after the import", 5_000);
    assert_eq!(store.search("after", 10).expect("search").len(), 1);
    assert_consistent(&store);
}

#[test]
fn synthetic_fill_is_deterministic_and_consistent() {
    let fill = |seed| {
        let mut store = store();
        crate::bench::synthetic::fill(&mut store, 3_000, 40, seed).expect("fill");
        store
    };
    let (a, b, c) = (fill(11), fill(11), fill(12));
    let list = |s: &Store| s.list_conversations(0, 100).expect("list");
    assert_eq!(list(&a), list(&b));
    assert_ne!(list(&a), list(&c));
    let top = &list(&a)[0].peer;
    assert_eq!(
        a.get_messages(top, None, 500).expect("messages"),
        b.get_messages(top, None, 500).expect("messages")
    );
    assert_eq!(
        a.unread_count().expect("unread"),
        b.unread_count().expect("unread")
    );
    assert!(a.peers().expect("peers").len() <= 40);
    assert_consistent(&a);

    // Growing a store continues after its newest message.
    let mut a = a;
    let newest = list(&a)[0].last_timestamp_ms;
    crate::bench::synthetic::fill(&mut a, 500, 40, 99).expect("grow");
    assert!(list(&a)[0].last_timestamp_ms > newest);
    let count: i64 = a
        .conn
        .query_row("SELECT count(*) FROM messages", [], |row| row.get(0))
        .expect("count");
    assert_eq!(count, 3_500);
    assert_consistent(&a);
}

/// The on-disk size budget: 300 bytes per message, indexes and FTS included. The full
/// measurement (1,000,000 messages) is in the module's report; this keeps a smaller
/// store honest so that a new index or column cannot slip in unnoticed.
#[test]
fn synthetic_store_stays_within_the_size_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("messages.db");
    let mut store = Store::open(&path).expect("open");
    let messages = 20_000;
    let started = Instant::now();
    crate::bench::synthetic::fill(&mut store, messages, 500, 1).expect("fill");
    let fill_time = started.elapsed();
    store
        .conn
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
    let bytes = std::fs::metadata(&path).expect("metadata").len();
    let per_message = bytes as f64 / messages as f64;
    let mut stmt = store
        .conn
        .prepare("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")
        .expect("dbstat");
    let parts: Vec<(String, i64)> = stmt
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .expect("dbstat rows")
        .collect::<rusqlite::Result<_>>()
        .expect("dbstat rows");
    println!("{messages} messages in {fill_time:?}: {per_message:.1} bytes/message");
    for (name, size) in &parts {
        println!("  {name:32} {:6.1}", *size as f64 / messages as f64);
    }
    assert!(per_message <= 300.0, "{per_message:.1} bytes/message");
}

// ---- the actor handle ------------------------------------------------------------------

#[tokio::test]
async fn handle_runs_calls_on_the_store_thread() {
    let handle = StoreHandle::spawn(store());
    let other = handle.clone();
    let (message, thread) = handle
        .call(|store| {
            let thread = std::thread::current().name().map(str::to_owned);
            Ok((outgoing(store, ALICE, "via the actor", 7), thread))
        })
        .await
        .expect("call");
    assert_eq!(thread.as_deref(), Some("tandem-store"));
    let id = message.id.clone();
    let got = other
        .call(move |store| store.get_message(&id))
        .await
        .expect("get");
    assert_eq!(got, message);

    // Errors come back as they are.
    let missing = other.call(|store| store.get_message("nope")).await;
    assert!(matches!(missing, Err(StoreError::NotFound(id)) if id == "nope"));

    // A panicking job costs its caller an answer (Closed), not the store.
    let panicked = handle
        .call(|store| -> Result<()> {
            store.mark_read(ALICE)?;
            panic!("job failure for the test")
        })
        .await;
    assert!(matches!(panicked, Err(StoreError::Closed)));
    let count = handle
        .call(|store| Ok(store.get_messages(ALICE, None, 10)?.len()))
        .await
        .expect("still running");
    assert_eq!(count, 1);
}

/// Reads of a file store run on the search thread's own connection and see every
/// committed write; an in-memory store's run on the store thread.
#[tokio::test]
async fn reads_run_beside_the_store_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let handle = StoreHandle::spawn(Store::open(&dir.path().join("messages.db")).expect("open"));
    let thread = || std::thread::current().name().map(str::to_owned);
    for i in 0..3 {
        handle
            .call(move |store| Ok(incoming(store, ALICE, &format!("soup {i}"), i)))
            .await
            .expect("insert");
        let (found, on) = handle
            .call_read(move |store| Ok((store.search("soup", 10)?.len(), thread())))
            .await
            .expect("search");
        assert_eq!(found, i as usize + 1, "the reader sees the commit");
        assert_eq!(on.as_deref(), Some("tandem-search"));
    }
    // Errors come back as they are.
    let too_long = handle
        .call_read(|store| store.search(&"x".repeat(MAX_SEARCH_BYTES + 1), 10))
        .await;
    assert!(matches!(too_long, Err(StoreError::QueryTooLong { .. })));

    let memory = StoreHandle::spawn(store());
    let on = memory.call_read(move |_| Ok(thread())).await.expect("read");
    assert_eq!(on.as_deref(), Some("tandem-store"));
}

#[tokio::test]
async fn handle_serves_many_tasks_at_once() {
    let handle = StoreHandle::spawn(store());
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let handle = handle.clone();
            tokio::spawn(async move {
                handle
                    .call(move |store| Ok(incoming(store, BOB, &format!("n{i}"), i).id))
                    .await
            })
        })
        .collect();
    for call in calls {
        call.await.expect("task").expect("call");
    }
    let unread = handle
        .call(|store| store.unread_count())
        .await
        .expect("unread");
    assert_eq!(unread, 20);
}

#[test]
fn incoming_messages_are_unannounced_until_marked() {
    let mut store = store();
    let first = incoming(&mut store, ALICE, "one", 100);
    let second = incoming(&mut store, BOB, "two", 200);
    outgoing(&mut store, ALICE, "outgoing ones need no announcement", 300);
    let ids = |store: &Store| -> Vec<String> {
        store
            .unannounced()
            .expect("unannounced")
            .into_iter()
            .map(|m| m.id.into_string())
            .collect()
    };
    assert_eq!(ids(&store), [first.id.clone(), second.id.clone()]);
    store.mark_announced(&first.id).expect("mark");
    assert_eq!(ids(&store), std::slice::from_ref(&second.id));
    // A duplicate of an unannounced message stays one message, still unannounced.
    let again = store
        .insert_incoming(&NewIncoming {
            peer: BOB,
            text: "two",
            channel: Channel::Sms,
            timestamp_ms: 200,
            dedupe_key: "test:+15550000002:200:two",
        })
        .expect("insert");
    assert!(again.is_none(), "{again:?}");
    assert_eq!(ids(&store), [second.id]);
}

#[test]
fn mark_sent_sms_sets_status_channel_and_reference_at_once() {
    let mut store = store();
    let id = outgoing(&mut store, ALICE, "hi", 100).id;
    store
        .update_status(&id, Status::Failed, None, Some("earlier try"))
        .expect("fail");
    let (sent, attempt) = store.mark_sent_sms(&id, Some(42), false).expect("sent");
    assert_eq!(attempt, None, "nothing was recorded");
    assert_eq!(
        (sent.status, sent.channel, sent.error),
        (Status::Sent, Some(Channel::Sms), None)
    );
    assert_eq!(
        store
            .find_by_sms_reference(ALICE, 42)
            .expect("find")
            .map(|m| m.id),
        Some(id.clone())
    );
    let unknown_ref = outgoing(&mut store, BOB, "no reference", 200).id;
    store
        .mark_sent_sms(&unknown_ref, None, false)
        .expect("sent");
    assert_eq!(
        store.get_message(&unknown_ref).expect("get").status,
        Status::Sent
    );
    let by_ref: Vec<String> = store
        .sent_with_reference(42, 10)
        .expect("by reference")
        .into_iter()
        .map(|m| m.id.into_string())
        .collect();
    assert_eq!(by_ref, [id]);
    assert!(store.sent_with_reference(43, 10).expect("none").is_empty());
}

#[test]
fn has_conversation_matches_the_peer_exactly() {
    let mut store = store();
    incoming(&mut store, "DHL-Express", "parcel", 100);
    assert!(store.has_conversation("DHL-Express").expect("has"));
    assert!(!store.has_conversation("dhl-express").expect("has"));
    assert!(!store.has_conversation(ALICE).expect("has"));
}

#[test]
fn presence_cache_keeps_the_latest_word() {
    use crate::domain::Presence;
    use crate::store::PresenceRecord;
    let mut store = store();
    assert_eq!(store.presence_of(ALICE).expect("read"), None);
    let record = |number: &str, registered, presence, updated_ms| PresenceRecord {
        number: number.to_owned(),
        registered,
        presence,
        updated_ms,
    };
    store
        .set_presence(&[
            record(ALICE, true, Presence::Online, 10),
            record(BOB, false, Presence::Offline, 10),
        ])
        .expect("snapshot");
    store
        .set_presence(&[record(ALICE, true, Presence::Typing, 20)])
        .expect("push");
    assert_eq!(
        store.presence_of(ALICE).expect("read"),
        Some(record(ALICE, true, Presence::Typing, 20))
    );
    assert_eq!(
        store.presence_of(BOB).expect("read"),
        Some(record(BOB, false, Presence::Offline, 10))
    );
}

#[test]
fn followed_numbers_are_peers_and_watched_ones() {
    let mut store = store();
    incoming(&mut store, BOB, "hi", 1);
    outgoing(&mut store, ALICE, "hello", 2);
    store
        .watch(&[CAROL.to_owned(), ALICE.to_owned(), CAROL.to_owned()])
        .expect("watch");
    // Watched first, then the conversations, most recent first.
    assert_eq!(store.followed().expect("followed"), [ALICE, CAROL, BOB]);
    let dave = "+15550004444";
    incoming(&mut store, dave, "new", 3);
    assert_eq!(
        store.followed().expect("followed"),
        [ALICE, CAROL, dave, BOB]
    );
    assert_eq!(store.watched().expect("watched"), [ALICE, CAROL]);
}

#[test]
fn ip_messages_stay_hidden_until_confirmed() {
    let mut store = store();
    assert!(
        store
            .hold_incoming_ip(ALICE, "m1", "first", 100)
            .expect("hold")
    );
    assert!(
        store
            .hold_incoming_ip(ALICE, "m2", "revoked one", 200)
            .expect("hold")
    );
    // Delivered again after a reconnect: still one.
    assert!(
        !store
            .hold_incoming_ip(ALICE, "m1", "first", 100)
            .expect("hold")
    );
    // Hidden: in no conversation, no unread count.
    assert!(store.list_conversations(0, 10).expect("list").is_empty());
    assert_eq!(store.unread_count().expect("unread"), 0);
    let held: Vec<String> = store
        .held_incoming_ip()
        .expect("held")
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(held, ["m1", "m2"]);

    let shown = store
        .confirm_incoming_ip(ALICE, "m1")
        .expect("confirm")
        .expect("moved");
    assert_eq!(
        (shown.peer.as_str(), shown.text.as_str(), shown.channel),
        (ALICE, "first", Some(Channel::Ip))
    );
    assert_eq!(store.unannounced().expect("unannounced").len(), 1);
    assert_eq!(store.unread_count().expect("unread"), 1);
    // Confirmed twice, or delivered again after it was shown: nothing new.
    assert_eq!(store.confirm_incoming_ip(ALICE, "m1").expect("again"), None);
    assert!(
        !store
            .hold_incoming_ip(ALICE, "m1", "first", 100)
            .expect("hold")
    );

    assert!(store.drop_incoming_ip(ALICE, "m2").expect("drop"));
    assert!(!store.drop_incoming_ip(ALICE, "m2").expect("drop again"));
    assert!(store.held_incoming_ip().expect("held").is_empty());
    assert_eq!(
        texts(&store.get_messages(ALICE, None, 10).expect("messages")),
        ["first"]
    );
    assert_consistent(&store);
}

#[test]
fn relay_progress_of_outgoing_messages() {
    use crate::store::RelayStage;
    let mut store = store();
    let a = outgoing(&mut store, ALICE, "over ip", 1).id;
    let b = outgoing(&mut store, BOB, "also", 2).id;
    store
        .set_relay_stage(&a, Some(RelayStage::Sent), None)
        .expect("stage");
    let sent = store.mark_sent_ip(&b, Some(30_000)).expect("accepted");
    assert_eq!(
        (sent.status, sent.channel),
        (Status::Sent, Some(Channel::Ip))
    );
    let pending: Vec<(MessageId, RelayStage, Option<i64>)> = store
        .relay_pending()
        .expect("pending")
        .into_iter()
        .map(|p| (p.message.id, p.stage, p.deadline_ms))
        .collect();
    assert_eq!(
        pending,
        [
            (a.clone(), RelayStage::Sent, None),
            (b.clone(), RelayStage::Accepted, Some(30_000))
        ]
    );
    store
        .set_relay_stage(&b, None, None)
        .expect("off the relay");
    assert_eq!(store.relay_pending().expect("pending").len(), 1);
    match store.set_relay_stage("00000000-0000-4000-8000-000000000000", None, None) {
        Err(StoreError::NotFound(_)) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[test]
fn requeue_for_sms_takes_a_message_off_the_relay() {
    let mut store = store();
    let id = outgoing(&mut store, ALICE, "over ip first", 1).id;
    store.mark_sent_ip(&id, Some(5)).expect("accepted");
    let back = store.requeue_for_sms(&id).expect("requeue");
    assert_eq!((back.status, back.channel), (Status::Queued, None));
    assert!(store.relay_pending().expect("pending").is_empty());
    let entry = store.outbox().expect("outbox");
    assert_eq!(
        (entry[0].message.id.as_str(), entry[0].requested),
        (id.as_str(), ChannelRequest::Sms)
    );
}

fn attempt(id: &str, path: &str) -> crate::store::SmsAttempt {
    crate::store::SmsAttempt {
        id: id.to_owned(),
        owner: ":1.5".into(),
        modem: "/org/freedesktop/ModemManager1/Modem/0".into(),
        path: path.into(),
        since_ms: 1000,
        budget_ms: 60_000,
    }
}

#[test]
fn an_sms_attempt_is_recorded_with_sending_and_ends_with_its_outcome() {
    let mut store = store();
    let id = outgoing(&mut store, ALICE, "hi", 100).id;
    let marked = store
        .record_sms_attempt(&attempt(&id, "/sms/1"))
        .expect("record");
    assert_eq!(marked.status, Status::Sending);
    assert_eq!(
        store.sms_attempts().expect("attempts"),
        vec![attempt(&id, "/sms/1")]
    );
    // A second attempt of the same message replaces the record.
    store
        .record_sms_attempt(&attempt(&id, "/sms/2"))
        .expect("record");
    assert_eq!(
        store.sms_attempts().expect("attempts"),
        vec![attempt(&id, "/sms/2")]
    );
    let (sent, record) = store.mark_sent_sms(&id, Some(7), true).expect("sent");
    assert_eq!(sent.status, Status::Sent);
    assert_eq!(record, Some(attempt(&id, "/sms/2")));
    assert!(store.sms_attempts().expect("attempts").is_empty());
    // Its object waits for removal until ModemManager confirms it.
    let cleanup = crate::store::SmsCleanup {
        owner: ":1.5".into(),
        modem: "/org/freedesktop/ModemManager1/Modem/0".into(),
        path: "/sms/2".into(),
    };
    assert_eq!(store.sms_cleanups().expect("cleanups"), vec![cleanup]);
    store.sms_cleaned(":1.5", "/sms/2").expect("cleaned");
    assert!(store.sms_cleanups().expect("cleanups").is_empty());

    let other = outgoing(&mut store, BOB, "again", 200).id;
    store
        .record_sms_attempt(&attempt(&other, "/sms/3"))
        .expect("record");
    let (queued, record) = store
        .end_sms_attempt(&other, Status::Queued, Some("ignored"), Some((2, 5000)))
        .expect("end");
    assert_eq!((queued.status, queued.error), (Status::Queued, None));
    assert_eq!(record.map(|r| r.path), Some("/sms/3".into()));
    let entry = store.outbox().expect("outbox");
    assert_eq!((entry[0].attempts, entry[0].next_attempt_ms), (2, 5000));
    let (failed, record) = store
        .end_sms_attempt(&other, Status::Failed, Some("may not have been sent"), None)
        .expect("end");
    assert_eq!(failed.error.as_deref(), Some("may not have been sent"));
    assert_eq!(record, None);
}

#[test]
fn only_a_message_in_the_outbox_gets_an_sms_attempt() {
    let mut store = store();
    let id = outgoing(&mut store, ALICE, "hi", 100).id;
    store
        .update_status(&id, Status::Failed, None, Some("given up"))
        .expect("fail");
    assert!(matches!(
        store.record_sms_attempt(&attempt(&id, "/sms/1")),
        Err(StoreError::NotFound(_))
    ));
    let gone = outgoing(&mut store, ALICE, "deleted", 200).id;
    store.delete_message(&gone).expect("delete");
    assert!(matches!(
        store.record_sms_attempt(&attempt(&gone, "/sms/1")),
        Err(StoreError::NotFound(_))
    ));
    // Deleting a message takes its record with it.
    let recorded = outgoing(&mut store, BOB, "recorded", 300).id;
    store
        .record_sms_attempt(&attempt(&recorded, "/sms/4"))
        .expect("record");
    store.delete_message(&recorded).expect("delete");
    assert!(store.sms_attempts().expect("attempts").is_empty());
    store
        .delete_conversation(ALICE)
        .expect("delete conversation");
}

#[test]
fn counters_count() {
    let mut store = store();
    assert!(store.counters().expect("counters").is_empty());
    store.count("b").expect("count");
    store.count("a").expect("count");
    store.count("b").expect("count");
    assert_eq!(
        store.counters().expect("counters"),
        vec![("a".to_owned(), 1), ("b".to_owned(), 2)]
    );
}

#[test]
fn a_long_conversation_is_deleted_in_parts_that_keep_it_whole() {
    let mut store = store();
    for i in 0..7 {
        let key = format!("in-{i}");
        store
            .insert_incoming(&NewIncoming {
                peer: ALICE,
                text: "unread",
                channel: Channel::Sms,
                timestamp_ms: i,
                dedupe_key: &key,
            })
            .expect("insert");
        outgoing(&mut store, ALICE, "out", 100 + i);
    }
    let newest = outgoing(&mut store, ALICE, "newest", 1000).id;
    assert_eq!(store.unread_count().expect("unread"), 7);
    // 15 messages, 4 a part: the oldest go first, the conversation shows its newest
    // message and the unread that are left in between.
    let (first, done) = store.delete_conversation_part(ALICE, 4).expect("part");
    assert_eq!((first, done), (4, false));
    let convs = store.list_conversations(0, 10).expect("list");
    assert_eq!(
        (convs[0].last_id.as_str(), convs[0].unread),
        (newest.as_str(), 5)
    );
    assert_eq!(store.unread_count().expect("unread"), 5);
    let mut parts = 1;
    loop {
        let (n, done) = store.delete_conversation_part(ALICE, 4).expect("part");
        parts += 1;
        assert!(n <= 4);
        let unread = store.unread_count().expect("unread");
        let listed = store.list_conversations(0, 10).expect("list");
        if done {
            assert!(listed.is_empty());
            assert_eq!(unread, 0);
            break;
        }
        assert_eq!(listed[0].unread, unread);
    }
    assert_eq!(parts, 4);
    assert_eq!(
        store.delete_conversation_part(ALICE, 4).expect("none"),
        (0, true)
    );
    // The whole-conversation call deletes everything, part by part.
    for i in 0..1200 {
        outgoing(&mut store, BOB, "many", i);
    }
    assert_eq!(store.delete_conversation(BOB).expect("delete"), 1200);
    assert!(store.get_messages(BOB, None, 10).expect("page").is_empty());
}
