//! What `tandemctl` prints: the JSON shapes for scripts (the contract's key names, every
//! key always present) and the tables and lines for people (local times, long texts
//! shortened). Pure formatting: no D-Bus, no I/O beyond the writer it is handed.

use std::io::{self, Write};

use serde::Serialize;
use unicode_segmentation::UnicodeSegmentation;
use unicode_width::UnicodeWidthStr;

use super::localtime;
use crate::api::{ConversationDict, MessageDict};
use crate::domain::{Direction, Status};

/// Longest text a table cell shows, in characters; longer ones end with `…`.
pub(super) const CELL_CHARS: usize = 48;

/// A message, as `--json` prints it (the contract's keys; `error` is null unless failed,
/// `name` and `photo` unless the address book knows the peer).
#[derive(Debug, Serialize)]
pub(super) struct MessageJson<'a> {
    pub id: &'a str,
    pub peer: &'a str,
    pub direction: &'a str,
    pub text: &'a str,
    pub channel: &'a str,
    pub status: &'a str,
    pub timestamp: i64,
    pub read: bool,
    pub error: Option<&'a str>,
    pub name: Option<&'a str>,
    pub photo: Option<&'a str>,
}

impl<'a> From<&'a MessageDict> for MessageJson<'a> {
    fn from(m: &'a MessageDict) -> Self {
        MessageJson {
            id: &m.id,
            peer: &m.peer,
            direction: &m.direction,
            text: &m.text,
            channel: &m.channel,
            status: &m.status,
            timestamp: m.timestamp,
            read: m.read,
            error: m.error.as_deref(),
            name: m.name.as_deref(),
            photo: m.photo.as_deref(),
        }
    }
}

/// A conversation, as `--json` prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct ConversationJson<'a> {
    pub peer: &'a str,
    pub last_id: &'a str,
    pub last_text: &'a str,
    pub last_timestamp: i64,
    pub last_direction: &'a str,
    pub unread: u32,
    pub presence: &'a str,
    pub name: Option<&'a str>,
    pub photo: Option<&'a str>,
}

impl<'a> From<&'a ConversationDict> for ConversationJson<'a> {
    fn from(c: &'a ConversationDict) -> Self {
        ConversationJson {
            peer: &c.peer,
            last_id: &c.last_id,
            last_text: &c.last_text,
            last_timestamp: c.last_timestamp,
            last_direction: &c.last_direction,
            unread: c.unread,
            presence: &c.presence,
            name: c.name.as_deref(),
            photo: c.photo.as_deref(),
        }
    }
}

/// The daemon's properties, as `status --json` prints them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(super) struct StatusJson {
    pub own_number: String,
    pub modem_state: String,
    pub relay_state: String,
    pub unread_count: u32,
    /// `OtherSmsApps`: other apps on the bus that take incoming SMS too.
    pub other_sms_apps: Vec<String>,
    /// `GetCounters`: the cases the reliability rules count, by name.
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// `EstimateSms`'s answer, as `estimate --json` prints it.
#[derive(Debug, Serialize)]
pub(super) struct EstimateJson<'a> {
    pub segments: u32,
    pub encoding: &'a str,
    pub remaining: u32,
}

/// A contact's presence, as `presence --json` and `watch-contacts --json` print it.
#[derive(Debug, Serialize)]
pub(super) struct PresenceJson<'a> {
    /// The number as it was given on the command line.
    pub number: &'a str,
    pub presence: &'a str,
}

/// One `monitor --json` line.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub(super) enum EventJson<'a> {
    MessageReceived {
        message: MessageJson<'a>,
    },
    MessageStatusChanged {
        id: &'a str,
        status: &'a str,
        channel: &'a str,
    },
    PresenceChanged {
        number: &'a str,
        presence: &'a str,
    },
    ConversationRead {
        peer: &'a str,
    },
    MessageDeleted {
        id: &'a str,
        peer: &'a str,
    },
    ConversationDeleted {
        peer: &'a str,
    },
    ContactsChanged,
    /// `property` is one of `status --json`'s keys; `value` has that key's type.
    PropertyChanged {
        property: &'a str,
        value: serde_json::Value,
    },
}

/// Writes `value` as one line of JSON.
pub(super) fn json_line(out: &mut dyn Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value).map_err(io::Error::from)?;
    writeln!(out)?;
    out.flush()
}

/// One line, with control characters (newlines, tabs) shown as spaces.
pub(super) fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The columns `text` takes on a terminal: 2 for a CJK character or an emoji, 0 for a
/// combining mark (Unicode's East Asian Width, as terminals count).
fn display_width(text: &str) -> usize {
    UnicodeWidthStr::width(text)
}

/// [`one_line`], shortened to `max` terminal columns with a trailing `…`.
pub(super) fn shorten(text: &str, max: usize) -> String {
    let line = one_line(text);
    if display_width(&line) <= max {
        return line;
    }
    let room = max.saturating_sub(1);
    let mut short = String::new();
    let mut used = 0;
    // Cut between graphemes, never inside one: an emoji with its skin tone or its ZWJ
    // family, a letter with its combining accent stay whole or go together.
    for grapheme in line.graphemes(true) {
        let width = display_width(grapheme);
        if used + width > room {
            break;
        }
        used += width;
        short.push_str(grapheme);
    }
    short.push('…');
    short
}

/// Columns aligned on the widest cell (in terminal columns, so that CJK text and emoji
/// line up); the last column is not padded.
pub(super) struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(super) fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
        }
    }

    pub(super) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(super) fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| display_width(cell))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    let pad = widths[c] - display_width(cell) + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// Longest name shown beside a number, in terminal columns.
const NAME_COLUMNS: usize = 32;

/// A peer for people: "Alice Martin (+15551234567)" when the address book knows it, else
/// the number (or sender name) alone.
pub(super) fn peer_cell(peer: &str, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("{} ({})", shorten(name, NAME_COLUMNS), one_line(peer)),
        None => one_line(peer),
    }
}

/// What the STATUS column says: read/unread for incoming, the status (and why it
/// failed) for outgoing.
fn status_cell(m: &MessageDict) -> String {
    let incoming = m.direction.parse() == Ok(Direction::Incoming);
    match (incoming, m.status.parse(), &m.error) {
        (true, _, _) if m.read => "read".to_owned(),
        (true, _, _) => "unread".to_owned(),
        (_, Ok(Status::Failed), Some(why)) => shorten(&format!("failed: {why}"), 32),
        _ => m.status.clone(),
    }
}

fn direction_cell(direction: &str) -> &str {
    match direction.parse() {
        Ok(Direction::Incoming) => "in",
        Ok(Direction::Outgoing) => "out",
        Err(_) => direction,
    }
}

fn channel_cell(channel: &str) -> &str {
    if channel.is_empty() { "-" } else { channel }
}

/// One row per item under `headers`, or the line `empty` when there are none.
fn table_of<T>(
    out: &mut dyn Write,
    items: &[T],
    empty: &str,
    headers: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> io::Result<()> {
    if items.is_empty() {
        return writeln!(out, "{empty}");
    }
    let mut table = Table::new(headers);
    for item in items {
        table.row(row(item));
    }
    table.write(out)
}

/// `messages`: one conversation, under its peer's name when the address book knows it.
pub(super) fn messages_table(out: &mut dyn Write, messages: &[MessageDict]) -> io::Result<()> {
    if let Some(m) = messages.iter().find(|m| m.name.is_some()) {
        writeln!(out, "{}", peer_cell(&m.peer, m.name.as_deref()))?;
    }
    let headers = ["TIME", "DIR", "VIA", "STATUS", "TEXT", "ID"];
    table_of(out, messages, "no messages", &headers, |m| {
        vec![
            localtime::date_minutes(m.timestamp),
            direction_cell(&m.direction).to_owned(),
            channel_cell(&m.channel).to_owned(),
            status_cell(m),
            shorten(&m.text, CELL_CHARS),
            m.id.clone(),
        ]
    })
}

/// `search`: messages of any conversation.
pub(super) fn search_table(out: &mut dyn Write, messages: &[MessageDict]) -> io::Result<()> {
    let headers = ["TIME", "PEER", "DIR", "TEXT", "ID"];
    table_of(out, messages, "nothing found", &headers, |m| {
        vec![
            localtime::date_minutes(m.timestamp),
            peer_cell(&m.peer, m.name.as_deref()),
            direction_cell(&m.direction).to_owned(),
            shorten(&m.text, CELL_CHARS),
            m.id.clone(),
        ]
    })
}

/// `conversations`.
pub(super) fn conversations_table(
    out: &mut dyn Write,
    list: &[ConversationDict],
) -> io::Result<()> {
    let headers = ["PEER", "UNREAD", "PRESENCE", "LAST", "MESSAGE"];
    table_of(out, list, "no conversations", &headers, |c| {
        let text = if c.last_direction == "outgoing" {
            format!("you: {}", c.last_text)
        } else {
            c.last_text.clone()
        };
        vec![
            peer_cell(&c.peer, c.name.as_deref()),
            c.unread.to_string(),
            c.presence.clone(),
            localtime::date_minutes(c.last_timestamp),
            shorten(&text, CELL_CHARS),
        ]
    })
}

/// `status`.
pub(super) fn status_lines(out: &mut dyn Write, s: &StatusJson) -> io::Result<()> {
    let own = if s.own_number.is_empty() {
        "unknown"
    } else {
        &s.own_number
    };
    writeln!(out, "own number  {own}")?;
    writeln!(out, "modem       {}", s.modem_state)?;
    writeln!(out, "relay       {}", s.relay_state)?;
    writeln!(out, "unread      {}", s.unread_count)?;
    for bus_name in &s.other_sms_apps {
        let app = crate::sms_apps::describe(bus_name).map_or("an SMS app", |app| app.name);
        writeln!(
            out,
            "warning     {app} ({bus_name}) also takes incoming SMS; stop one, or set [sms] receive = false"
        )?;
    }
    for (name, count) in &s.counters {
        writeln!(out, "counted     {name} {count}")?;
    }
    Ok(())
}

/// `estimate`.
pub(super) fn estimate_line(out: &mut dyn Write, e: &EstimateJson<'_>) -> io::Result<()> {
    let parts = if e.segments == 1 { "part" } else { "parts" };
    writeln!(
        out,
        "{} SMS {parts}, {}, {} characters left in the last part",
        e.segments, e.encoding, e.remaining
    )
}

/// One `monitor` line for people, stamped with the local time `now_ms`.
pub(super) fn event_line(
    out: &mut dyn Write,
    now_ms: i64,
    event: &EventJson<'_>,
) -> io::Result<()> {
    let clock = localtime::clock(now_ms);
    let text = match event {
        EventJson::MessageReceived { message } => {
            let from = peer_cell(message.peer, message.name);
            format!("received  {from}  {}", one_line(message.text))
        }
        EventJson::MessageStatusChanged {
            id,
            status,
            channel,
        } => {
            if channel.is_empty() {
                format!("status    {id}  {status}")
            } else {
                format!("status    {id}  {status} ({channel})")
            }
        }
        EventJson::PresenceChanged { number, presence } => {
            format!("presence  {number}  {presence}")
        }
        EventJson::ConversationRead { peer } => format!("read      {peer}"),
        EventJson::MessageDeleted { id, peer } => format!("deleted   {id}  ({peer})"),
        EventJson::ConversationDeleted { peer } => format!("deleted   {peer}  (conversation)"),
        EventJson::ContactsChanged => "contacts changed".to_owned(),
        EventJson::PropertyChanged { property, value } => {
            let value = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!("{property}  {value}")
        }
    };
    writeln!(out, "{clock}  {text}")?;
    out.flush()
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_lines_show_what_was_counted() {
        let mut out = Vec::new();
        let status = StatusJson {
            own_number: String::new(),
            modem_state: "absent".into(),
            relay_state: "offline".into(),
            unread_count: 2,
            other_sms_apps: vec!["sm.puri.Chatty".into()],
            counters: [("sms-outcome-unknown".to_owned(), 1)].into(),
        };
        status_lines(&mut out, &status).expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "own number  unknown\nmodem       absent\nrelay       offline\nunread      2\n\
             warning     Chatty (sm.puri.Chatty) also takes incoming SMS; stop one, or set [sms] receive = false\n\
             counted     sms-outcome-unknown 1\n"
        );
    }

    use super::*;

    fn message(direction: &str, status: &str, read: bool, error: Option<&str>) -> MessageDict {
        MessageDict {
            id: "id-1".into(),
            peer: "+15550002222".into(),
            direction: direction.into(),
            text: "hello\nthere".into(),
            channel: "".into(),
            status: status.into(),
            timestamp: 1_714_564_800_000,
            read,
            error: error.map(str::to_owned),
            name: None,
            photo: None,
        }
    }

    #[test]
    fn shortening() {
        let rows = [
            ("short", 10, "short"),
            ("exactly ten", 11, "exactly ten"),
            ("a bit too long", 8, "a bit t…"),
            ("two\nlines\ttab", 20, "two lines tab"),
            // Emoji and CJK take two columns each.
            ("😀😀😀😀", 5, "😀😀…"),
            ("😀😀😀😀", 4, "😀…"),
            ("東京で会いましょう", 9, "東京で会…"),
            ("東京で", 6, "東京で"),
            ("", 3, ""),
            // Graphemes are never cut: a thumb with its skin tone, a ZWJ family, an e with
            // a combining acute accent.
            ("ok 👍🏽👍🏽👍🏽", 7, "ok 👍🏽…"),
            (
                "👨\u{200d}👩\u{200d}👧 family",
                3,
                "👨\u{200d}👩\u{200d}👧…",
            ),
            ("cafe\u{301}s and more", 5, "cafe\u{301}…"),
        ];
        for (text, max, expected) in rows {
            assert_eq!(shorten(text, max), expected, "{text:?} {max}");
        }
    }

    #[test]
    fn status_cells() {
        let rows = [
            (message("incoming", "received", false, None), "unread"),
            (message("incoming", "received", true, None), "read"),
            (message("outgoing", "delivered", true, None), "delivered"),
            (
                message("outgoing", "failed", true, Some("no network")),
                "failed: no network",
            ),
        ];
        for (m, expected) in rows {
            assert_eq!(status_cell(&m), expected, "{m:?}");
        }
    }

    #[test]
    fn message_json_has_every_contract_key() {
        let m = message("outgoing", "queued", true, None);
        let v = serde_json::to_value(MessageJson::from(&m)).expect("json");
        let keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = [
            "id",
            "peer",
            "direction",
            "text",
            "channel",
            "status",
            "timestamp",
            "read",
            "error",
            "name",
            "photo",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert!(v["error"].is_null());
        assert!(v["name"].is_null());
        assert_eq!(v["timestamp"], 1_714_564_800_000_i64);
    }

    #[test]
    fn event_json_shapes() {
        let rows = [
            (
                EventJson::MessageStatusChanged {
                    id: "x",
                    status: "sent",
                    channel: "sms",
                },
                r#"{"event":"message-status-changed","id":"x","status":"sent","channel":"sms"}"#,
            ),
            (
                EventJson::PresenceChanged {
                    number: "+1555",
                    presence: "online",
                },
                r#"{"event":"presence-changed","number":"+1555","presence":"online"}"#,
            ),
            (
                EventJson::PropertyChanged {
                    property: "unread-count",
                    value: 3.into(),
                },
                r#"{"event":"property-changed","property":"unread-count","value":3}"#,
            ),
        ];
        for (event, expected) in rows {
            assert_eq!(serde_json::to_string(&event).expect("json"), expected);
        }
    }

    #[test]
    fn named_peers() {
        assert_eq!(peer_cell("+15550002222", None), "+15550002222");
        assert_eq!(
            peer_cell("+15550002222", Some("Alice Martin")),
            "Alice Martin (+15550002222)"
        );
        // A long name is shortened; one with a newline stays on one line.
        let long = "Alexandra Maria Theresa von und zu Liechtenstein-Habsburg";
        let cell = peer_cell("+15550002222", Some(long));
        assert!(
            cell.starts_with("Alexandra Maria Theresa von und…"),
            "{cell}"
        );
        assert_eq!(peer_cell("Bank", Some("My\nBank")), "My Bank (Bank)");

        let mut named = message("incoming", "received", false, None);
        named.name = Some("東京 Alice".into());
        let mut out = Vec::new();
        messages_table(&mut out, &[named.clone()]).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(
            text.starts_with("東京 Alice (+15550002222)\nTIME"),
            "{text}"
        );
        let mut out = Vec::new();
        search_table(&mut out, &[named]).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("  東京 Alice (+15550002222)  in  "), "{text}");
    }

    #[test]
    fn monitor_names_the_sender() {
        let mut m = message("incoming", "received", false, None);
        let line = |m: &MessageDict| {
            let event = EventJson::MessageReceived {
                message: MessageJson::from(m),
            };
            let mut out = Vec::new();
            event_line(&mut out, 0, &event).expect("write");
            String::from_utf8(out).expect("utf-8")
        };
        assert!(line(&m).ends_with("  received  +15550002222  hello there\n"));
        m.name = Some("Alice".into());
        let named = line(&m);
        assert!(
            named.ends_with("  received  Alice (+15550002222)  hello there\n"),
            "{named}"
        );
    }

    #[test]
    fn table_alignment() {
        let mut t = Table::new(&["A", "LONGER", "C"]);
        t.row(vec!["wide cell".into(), "x".into(), "".into()]);
        let mut out = Vec::new();
        t.write(&mut out).expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "A          LONGER  C\nwide cell  x\n"
        );
    }

    #[test]
    fn cjk_and_emoji_cells_align_by_terminal_columns() {
        // 8 CJK characters are 16 columns: the next column starts at the same place
        // after them as after 16 ASCII characters.
        let mut t = Table::new(&["TEXT", "ID"]);
        t.row(vec!["東京で会いましょう".into(), "a".into()]);
        t.row(vec!["sixteen columns!".into(), "b".into()]);
        t.row(vec!["🙂 ok".into(), "c".into()]);
        let mut out = Vec::new();
        t.write(&mut out).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        let id_column: Vec<usize> = text
            .lines()
            .map(|line| {
                let (before, _) = line.rsplit_once(' ').expect("two columns");
                display_width(before) + 1
            })
            .collect();
        assert_eq!(id_column, [20, 20, 20, 20], "{text}");
    }
}
