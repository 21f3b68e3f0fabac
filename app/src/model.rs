//! What the app shows, as plain data: the conversation list and the open thread, and the
//! changes the daemon's signals make to them. No GTK and no D-Bus here: the screens draw
//! this state, and its rules are tested as tables below.

/// One message, from the daemon's `a{sv}` (see `api::MessageDict`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub id: String,
    pub peer: String,
    /// The contact's name when the daemon knows it.
    pub name: Option<String>,
    pub outgoing: bool,
    pub text: String,
    /// `sms`, `ip`, or empty while not sent yet.
    pub channel: String,
    /// queued, sending, sent, delivered, failed or received.
    pub status: String,
    pub timestamp_ms: i64,
    /// Why a failed message failed.
    pub error: Option<String>,
}

/// One conversation of the list.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Conversation {
    pub peer: String,
    pub name: Option<String>,
    pub last_id: String,
    pub last_text: String,
    pub last_timestamp_ms: i64,
    pub last_outgoing: bool,
    pub unread: u32,
}

impl Conversation {
    /// The title of the conversation: the contact's name, else the number as written.
    pub fn title(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.peer)
    }
}

/// The conversation list, newest activity first (the daemon's order, kept as messages
/// come and go).
#[derive(Debug, Default)]
pub struct Inbox {
    conversations: Vec<Conversation>,
}

impl Inbox {
    pub fn conversations(&self) -> &[Conversation] {
        &self.conversations
    }

    pub fn get(&self, peer: &str) -> Option<&Conversation> {
        self.conversations.iter().find(|c| c.peer == peer)
    }

    /// The daemon's list, as `ListConversations` gave it.
    pub fn replace(&mut self, conversations: Vec<Conversation>) {
        self.conversations = conversations;
    }

    /// A new message in a conversation (received, or sent from here or by another
    /// client): the conversation comes first with it as its last message. An incoming
    /// message counts as unread unless `seen` (its thread is open in front of the user).
    pub fn on_message(&mut self, m: &Message, seen: bool) {
        let at = self.conversations.iter().position(|c| c.peer == m.peer);
        let mut c = match at {
            Some(i) => self.conversations.remove(i),
            None => Conversation {
                peer: m.peer.clone(),
                ..Conversation::default()
            },
        };
        if c.last_id == m.id {
            // Known already (a reload raced the signal): nothing new.
            self.conversations.insert(0, c);
            return;
        }
        c.last_id = m.id.clone();
        c.last_text = m.text.clone();
        c.last_timestamp_ms = m.timestamp_ms;
        c.last_outgoing = m.outgoing;
        if m.name.is_some() {
            c.name = m.name.clone();
        }
        if !m.outgoing && !seen {
            c.unread += 1;
        }
        self.conversations.insert(0, c);
    }

    /// A conversation deleted (here or by another client).
    pub fn remove(&mut self, peer: &str) {
        self.conversations.retain(|c| c.peer != peer);
    }

    /// Whether a message is the last of some conversation (known to the list).
    pub fn knows(&self, id: &str) -> bool {
        self.conversations.iter().any(|c| c.last_id == id)
    }

    /// Every message of `peer` read (MarkRead, here or elsewhere).
    pub fn mark_read(&mut self, peer: &str) {
        if let Some(c) = self.conversations.iter_mut().find(|c| c.peer == peer) {
            c.unread = 0;
        }
    }
}

/// The open thread: one conversation's messages, oldest first (as shown, top to bottom).
#[derive(Debug, Default)]
pub struct Thread {
    pub peer: String,
    messages: Vec<Message>,
}

/// What a change did to the thread, for the screen to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThreadChange {
    /// A message new to the thread, at this index.
    Added(usize),
    /// The message at this index changed (its status, channel or error).
    Updated(usize),
    /// Nothing this thread shows.
    None,
}

impl Thread {
    /// The thread of `peer` from `GetMessages` (newest first, as the daemon gives them).
    pub fn new(peer: &str, mut newest_first: Vec<Message>) -> Thread {
        newest_first.reverse();
        Thread {
            peer: peer.to_owned(),
            messages: newest_first,
        }
    }

    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// A message of this thread, new or fresher than the one shown (a `GetMessage`
    /// reply); a message of another conversation changes nothing.
    pub fn upsert(&mut self, m: Message) -> ThreadChange {
        if m.peer != self.peer {
            return ThreadChange::None;
        }
        match self.messages.iter().position(|x| x.id == m.id) {
            Some(i) => {
                self.messages[i] = m;
                ThreadChange::Updated(i)
            }
            None => {
                self.messages.push(m);
                ThreadChange::Added(self.messages.len() - 1)
            }
        }
    }

    /// `MessageStatusChanged`: the status and channel of a message shown. Signals come
    /// in the daemon's order, so the last one is the message's state.
    pub fn set_status(&mut self, id: &str, status: &str, channel: &str) -> ThreadChange {
        match self.messages.iter().position(|x| x.id == id) {
            Some(i) => {
                let m = &mut self.messages[i];
                m.status = status.to_owned();
                if !channel.is_empty() {
                    m.channel = channel.to_owned();
                }
                if status != "failed" {
                    m.error = None;
                }
                ThreadChange::Updated(i)
            }
            None => ThreadChange::None,
        }
    }

    /// A message deleted: its index, if it was shown.
    pub fn remove(&mut self, id: &str) -> Option<usize> {
        let i = self.messages.iter().position(|m| m.id == id)?;
        self.messages.remove(i);
        Some(i)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.messages.iter().any(|m| m.id == id)
    }
}

/// The line under a bubble: channel and status, with the error of a failed message.
pub fn bubble_meta(m: &Message, time: &str) -> String {
    let channel = match m.channel.as_str() {
        "sms" => "SMS",
        "ip" => "IP",
        _ => "…",
    };
    let status = match m.status.as_str() {
        "received" => None,
        "queued" => Some("queued".to_owned()),
        "sending" => Some("sending".to_owned()),
        "sent" => Some("sent".to_owned()),
        "delivered" => Some("delivered".to_owned()),
        "failed" => Some(match &m.error {
            Some(e) => format!("failed: {e}"),
            None => "failed".to_owned(),
        }),
        other => Some(other.to_owned()),
    };
    match status {
        Some(status) => format!("{channel} · {time} · {status}"),
        None => format!("{channel} · {time}"),
    }
}

/// The SMS cost of a text being typed, from `EstimateSms`.
pub fn sms_cost(segments: u32, encoding: &str, remaining: u32) -> String {
    let parts = if segments == 1 {
        "1 SMS".to_owned()
    } else {
        format!("{segments} SMS")
    };
    let encoding = match encoding {
        "gsm7" => "GSM 7-bit",
        "ucs2" => "Unicode",
        other => other,
    };
    format!("{parts} · {encoding} · {remaining} left")
}

/// What the banner says, if anything: the daemon gone, the modem not usable for SMS, or
/// the relay offline (a relay not configured, `disabled`, is no news).
pub fn banner(daemon_running: bool, modem: &str, relay: &str) -> Option<String> {
    if !daemon_running {
        return Some("Tandem is not running: waiting for it to start".to_owned());
    }
    let modem = match modem {
        "registered" | "" => None,
        "absent" => Some("No modem: SMS wait until one is back"),
        "locked" => Some("The SIM is locked: unlock it to send and receive SMS"),
        "disabled" => Some("The modem is off: SMS wait until it is on"),
        "searching" => Some("Searching for the mobile network: SMS wait"),
        "failed" => Some("The modem failed: SMS wait"),
        _ => Some("The modem is not ready: SMS wait"),
    };
    let relay = matches!(relay, "offline" | "connecting");
    match (modem, relay) {
        (None, false) => None,
        (None, true) => Some("Offline: IP messages go by SMS or wait".to_owned()),
        (Some(m), false) => Some(m.to_owned()),
        (Some(m), true) => Some(format!("{m}; IP messages offline too")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str, peer: &str, outgoing: bool, status: &str) -> Message {
        Message {
            id: id.into(),
            peer: peer.into(),
            outgoing,
            text: format!("text {id}"),
            channel: "sms".into(),
            status: status.into(),
            timestamp_ms: 1000,
            ..Message::default()
        }
    }

    fn conv(peer: &str, last_id: &str, unread: u32) -> Conversation {
        Conversation {
            peer: peer.into(),
            last_id: last_id.into(),
            unread,
            ..Conversation::default()
        }
    }

    #[test]
    fn a_message_brings_its_conversation_first_and_counts_unread_unless_seen() {
        let mut inbox = Inbox::default();
        inbox.replace(vec![conv("+1", "a", 0), conv("+2", "b", 2)]);
        inbox.on_message(&msg("c", "+2", false, "received"), false);
        let peers: Vec<_> = inbox.conversations().iter().map(|c| &c.peer).collect();
        assert_eq!(peers, ["+2", "+1"]);
        assert_eq!(inbox.get("+2").unwrap().unread, 3);
        assert_eq!(inbox.get("+2").unwrap().last_text, "text c");

        inbox.on_message(&msg("d", "+1", false, "received"), true);
        assert_eq!(inbox.conversations()[0].peer, "+1");
        assert_eq!(inbox.get("+1").unwrap().unread, 0, "seen: not unread");

        inbox.on_message(&msg("e", "+3", true, "queued"), false);
        assert_eq!(inbox.conversations()[0].peer, "+3");
        assert_eq!(inbox.get("+3").unwrap().unread, 0, "outgoing: not unread");
        assert!(inbox.get("+3").unwrap().last_outgoing);

        // The same message twice (a reload raced the signal) counts once.
        inbox.on_message(&msg("c", "+2", false, "received"), false);
        assert_eq!(inbox.get("+2").unwrap().unread, 3);

        inbox.mark_read("+2");
        assert_eq!(inbox.get("+2").unwrap().unread, 0);
        assert!(inbox.knows("c") && !inbox.knows("a"));
        inbox.remove("+2");
        assert!(inbox.get("+2").is_none() && !inbox.knows("c"));
    }

    #[test]
    fn the_title_is_the_name_when_known() {
        let mut c = conv("+15550001111", "a", 0);
        assert_eq!(c.title(), "+15550001111");
        c.name = Some("Alice".into());
        assert_eq!(c.title(), "Alice");
        let mut inbox = Inbox::default();
        let mut m = msg("x", "+1", false, "received");
        m.name = Some("Bob".into());
        inbox.on_message(&m, false);
        assert_eq!(inbox.get("+1").unwrap().title(), "Bob");
    }

    #[test]
    fn the_thread_is_oldest_first_and_follows_statuses() {
        let newest_first = vec![
            msg("2", "+1", true, "sent"),
            msg("1", "+1", false, "received"),
        ];
        let mut t = Thread::new("+1", newest_first);
        let ids: Vec<_> = t.messages().iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["1", "2"]);

        assert_eq!(
            t.set_status("2", "delivered", "sms"),
            ThreadChange::Updated(1)
        );
        assert_eq!(t.messages()[1].status, "delivered");
        assert_eq!(t.set_status("nope", "sent", "sms"), ThreadChange::None);

        assert_eq!(
            t.upsert(msg("3", "+1", true, "queued")),
            ThreadChange::Added(2)
        );
        assert_eq!(
            t.upsert(msg("3", "+1", true, "sending")),
            ThreadChange::Updated(2)
        );
        assert_eq!(t.upsert(msg("4", "+9", true, "queued")), ThreadChange::None);
        assert!(t.contains("3") && !t.contains("4"));
        assert_eq!(t.remove("3"), Some(2));
        assert_eq!(t.remove("3"), None);
        t.upsert(msg("3", "+1", true, "sending"));

        // An empty channel (not sent yet) keeps the one known; a retry clears the error.
        let mut failed = msg("5", "+1", true, "failed");
        failed.error = Some("no network".into());
        t.upsert(failed);
        t.set_status("5", "queued", "");
        assert_eq!(
            (t.messages()[3].channel.as_str(), &t.messages()[3].error),
            ("sms", &None)
        );
    }

    #[test]
    fn bubble_meta_says_channel_time_and_status() {
        let rows = [
            ("sms", "received", None, "SMS · 12:00"),
            ("ip", "delivered", None, "IP · 12:00 · delivered"),
            ("", "queued", None, "… · 12:00 · queued"),
            (
                "sms",
                "failed",
                Some("no credit"),
                "SMS · 12:00 · failed: no credit",
            ),
            ("ip", "failed", None, "IP · 12:00 · failed"),
        ];
        for (channel, status, error, want) in rows {
            let m = Message {
                channel: channel.into(),
                status: status.into(),
                error: error.map(str::to_owned),
                ..Message::default()
            };
            assert_eq!(bubble_meta(&m, "12:00"), want);
        }
    }

    #[test]
    fn sms_cost_reads_the_estimate() {
        assert_eq!(sms_cost(1, "gsm7", 150), "1 SMS · GSM 7-bit · 150 left");
        assert_eq!(sms_cost(3, "ucs2", 10), "3 SMS · Unicode · 10 left");
    }

    #[test]
    fn the_banner_tells_what_keeps_messages_from_going() {
        let rows = [
            (true, "registered", "online", None),
            (true, "registered", "disabled", None),
            (true, "", "", None),
            (true, "absent", "disabled", Some("No modem")),
            (true, "locked", "online", Some("SIM is locked")),
            (true, "registered", "offline", Some("Offline")),
            (true, "registered", "connecting", Some("Offline")),
            (true, "absent", "offline", Some("IP messages offline too")),
            (false, "registered", "online", Some("not running")),
        ];
        for (running, modem, relay, want) in rows {
            let got = banner(running, modem, relay);
            match want {
                None => assert_eq!(got, None, "{modem} {relay}"),
                Some(part) => assert!(
                    got.as_deref().is_some_and(|g| g.contains(part)),
                    "{running} {modem} {relay}: {got:?}"
                ),
            }
        }
    }
}
