//! One function per subcommand: connect, call the daemon through [`MessagesProxy`], print
//! with [`super::output`]. `send --wait` lives here too: it subscribes to
//! `MessageStatusChanged` before calling `SendMessage`, so no status change is missed.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use tracing::debug;
use zbus::proxy::CacheProperties;
use zbus::{OwnedVariant, Str};

use super::cli::{Cli, Command, SendArgs};
use super::output::{
    self, ConversationJson, EstimateJson, MessageJson, PresenceJson, StatusJson, json_line,
};
use super::{CALL_TIMEOUT, CONNECT_TIMEOUT, CtlError, Io, docs, monitor};
use crate::api::{MessageDict, MessageStatusChangedStream, MessagesProxy};
use crate::domain::Status;

type Result<T> = std::result::Result<T, CtlError>;

/// Runs one command line. Completions and the man page need no bus; everything else
/// connects to the session bus first.
pub async fn run(cli: Cli, io: Io<'_>) -> Result<()> {
    let json = cli.json;
    match cli.command {
        Command::Completions { shell } => Ok(docs::completions(shell, io.out)?),
        Command::Man => Ok(docs::man(io.out)?),
        command => {
            let client = Client::connect().await?;
            client.run(command, json, io).await
        }
    }
}

/// A connection to the session bus and the daemon's proxy on it.
pub(super) struct Client {
    pub(super) conn: zbus::Connection,
    pub(super) api: MessagesProxy<'static>,
}

impl Client {
    async fn connect() -> Result<Client> {
        let build = zbus::connection::Builder::session()
            .method_timeout(CALL_TIMEOUT)
            .build();
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, build).await {
            Err(_) => {
                return Err(CtlError::NotRunning(format!(
                    "the session bus did not answer within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
            Ok(Err(e)) => {
                return Err(CtlError::NotRunning(format!(
                    "cannot connect to the session bus ({e}); is DBUS_SESSION_BUS_ADDRESS set?"
                )));
            }
            Ok(Ok(conn)) => conn,
        };
        // No property cache: each property read is one plain Get, and nothing is
        // subscribed that the command does not use.
        let api = MessagesProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        Ok(Client { conn, api })
    }

    async fn run(&self, command: Command, json: bool, io: Io<'_>) -> Result<()> {
        let out = io.out;
        match command {
            Command::Send(args) => self.send(args, json, io.stdin, out, io.err).await,
            Command::Conversations { offset, limit } => {
                let list = self.api.list_conversations(offset, limit).await?;
                let rows: Vec<ConversationJson<'_>> = list.iter().map(Into::into).collect();
                show(out, json, &rows, |out| {
                    output::conversations_table(out, &list)
                })
            }
            Command::Messages {
                number,
                limit,
                before,
            } => {
                let before = before.unwrap_or_default();
                let list = self.api.get_messages(&number, &before, limit).await?;
                print_messages(out, json, &list, output::messages_table)
            }
            Command::Search { query, limit } => {
                let list = self.api.search(&query, limit).await?;
                print_messages(out, json, &list, output::search_table)
            }
            Command::Presence { number } => {
                let presence = self.api.get_presence(&number).await?;
                let row = PresenceJson {
                    number: &number,
                    presence: &presence,
                };
                show(out, json, &row, |out| writeln!(out, "{presence}"))
            }
            Command::WatchContacts { numbers } => self.watch_contacts(numbers, json, out).await,
            Command::Status => {
                let status = self.status().await?;
                show(out, json, &status, |out| output::status_lines(out, &status))
            }
            Command::Estimate { text } => {
                let text = text_arg(&text, io.stdin)?;
                let (segments, encoding, remaining) = self.api.estimate_sms(&text).await?;
                let estimate = EstimateJson {
                    segments,
                    encoding: &encoding,
                    remaining,
                };
                show(out, json, &estimate, |out| {
                    output::estimate_line(out, &estimate)
                })
            }
            Command::Monitor => monitor::run(self, json, out, io.err).await,
            // Handled by `run` before connecting; harmless here too.
            Command::Completions { shell } => Ok(docs::completions(shell, out)?),
            Command::Man => Ok(docs::man(out)?),
            Command::Read { number } => {
                self.api.mark_read(&number).await?;
                done(
                    out,
                    json,
                    &format!("marked the conversation with {number} read"),
                )
            }
            Command::Delete { id } => {
                self.api.delete_message(&id).await?;
                done(out, json, &format!("deleted message {id}"))
            }
            Command::DeleteConversation { number } => {
                self.api.delete_conversation(&number).await?;
                done(
                    out,
                    json,
                    &format!("deleted the conversation with {number}"),
                )
            }
        }
    }

    /// The daemon's properties and counters.
    pub(super) async fn status(&self) -> Result<StatusJson> {
        Ok(StatusJson {
            own_number: self.api.own_number().await?,
            modem_state: self.api.modem_state().await?,
            relay_state: self.api.relay_state().await?,
            unread_count: self.api.unread_count().await?,
            other_sms_apps: self.api.other_sms_apps().await?,
            counters: self.api.get_counters().await?.into_iter().collect(),
        })
    }

    async fn watch_contacts(
        &self,
        numbers: Vec<String>,
        json: bool,
        out: &mut dyn Write,
    ) -> Result<()> {
        self.api.watch(numbers.clone()).await?;
        let mut presences = Vec::with_capacity(numbers.len());
        for number in &numbers {
            presences.push(self.api.get_presence(number).await?);
        }
        let rows = numbers.iter().zip(&presences);
        if json {
            let list: Vec<PresenceJson<'_>> = rows
                .map(|(number, presence)| PresenceJson { number, presence })
                .collect();
            json_line(out, &list)?;
        } else {
            let mut table = output::Table::new(&["NUMBER", "PRESENCE"]);
            for (number, presence) in rows {
                table.row(vec![number.clone(), presence.clone()]);
            }
            table.write(out)?;
        }
        Ok(())
    }

    async fn send(
        &self,
        args: SendArgs,
        json: bool,
        stdin: &mut dyn Read,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<()> {
        let text = text_arg(&args.text, stdin)?;
        let mut options: HashMap<String, OwnedVariant> = HashMap::new();
        if let Some(via) = args.via {
            options.insert("channel".into(), Str::from(via.as_str()).into());
        }
        let report = args.delivery_report();
        if let Some(report) = report {
            options.insert("delivery-report".into(), report.into());
        }
        // Subscribed before the call: the first status change can come before our reply.
        let statuses = if args.wait {
            Some(self.api.receive_message_status_changed().await?)
        } else {
            None
        };
        let id = self.api.send_message(&args.number, &text, options).await?;
        debug!(%id, wait = args.wait, "message queued");
        let Some(statuses) = statuses else {
            if json {
                json_line(out, &IdJson { id: &id })?;
            } else {
                writeln!(out, "{id}")?;
            }
            return Ok(());
        };
        if !json {
            writeln!(out, "{id}")?;
            out.flush()?;
        }
        let wanted = if report == Some(false) {
            Wanted::Sent
        } else {
            Wanted::Delivered
        };
        let timeout = Duration::from_secs(args.timeout);
        let progress = if json { None } else { Some(err) };
        let (message, outcome) = self
            .wait_for(&id, statuses, wanted, timeout, progress)
            .await?;
        if json {
            json_line(out, &MessageJson::from(&message))?;
        }
        match outcome {
            Outcome::Done => Ok(()),
            Outcome::Failed => Err(CtlError::SendFailed {
                id,
                reason: message
                    .error
                    .unwrap_or_else(|| "no reason given".to_owned()),
            }),
            Outcome::TimedOut => Err(CtlError::WaitTimeout {
                id,
                secs: args.timeout,
                wanted: wanted.as_str(),
                status: message.status,
            }),
        }
    }

    /// Follows message `id` until `wanted`, `failed` or the timeout; returns the message as
    /// last seen. `statuses` must have been subscribed before the message was sent.
    async fn wait_for(
        &self,
        id: &str,
        mut statuses: MessageStatusChangedStream,
        wanted: Wanted,
        timeout: Duration,
        mut progress: Option<&mut dyn Write>,
    ) -> Result<(MessageDict, Outcome)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut shown: Vec<String> = Vec::new();
        // Read once after subscribing: whatever happened before is in this answer, whatever
        // happens after is in the stream.
        let mut message = self.api.get_message(id).await?;
        loop {
            if let Some(err) = progress.as_mut()
                && !shown.contains(&message.status)
            {
                shown.push(message.status.clone());
                if message.channel.is_empty() {
                    writeln!(err, "{}", message.status)?;
                } else {
                    writeln!(err, "{} via {}", message.status, message.channel)?;
                }
            }
            if let Some(outcome) = wanted.outcome(&message.status) {
                return Ok((message, outcome));
            }
            match tokio::time::timeout_at(deadline, next_status(&mut statuses, id)).await {
                Err(_elapsed) => {
                    let last = self.api.get_message(id).await.unwrap_or(message);
                    return Ok((last, Outcome::TimedOut));
                }
                Ok(None) => {
                    return Err(CtlError::NotRunning(
                        "lost the session bus while waiting for the message".into(),
                    ));
                }
                Ok(Some((status, channel))) => {
                    if wanted.outcome(&status).is_some() {
                        // Final: read it whole (a failed message carries its reason).
                        message = self.api.get_message(id).await?;
                    } else {
                        message.status = status;
                        message.channel = channel;
                    }
                }
            }
        }
    }
}

/// The next status change of message `id` (others are skipped), or `None` if the
/// stream ended.
async fn next_status(
    statuses: &mut MessageStatusChangedStream,
    id: &str,
) -> Option<(String, String)> {
    while let Some(signal) = statuses.next().await {
        match signal.args() {
            Ok(args) if args.id == id => {
                return Some((args.status.to_owned(), args.channel.to_owned()));
            }
            Ok(_) => {}
            Err(e) => debug!(cause = %e, "malformed MessageStatusChanged skipped"),
        }
    }
    None
}

/// What `send --wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    /// No delivery report asked: accepted by the SMS centre or the relay is the end.
    Sent,
    Delivered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    Failed,
    TimedOut,
}

impl Wanted {
    fn as_str(self) -> &'static str {
        match self {
            Wanted::Sent => Status::Sent.as_str(),
            Wanted::Delivered => Status::Delivered.as_str(),
        }
    }

    /// Whether `status` ends the wait, and how. A spelling this build does not know (a
    /// newer daemon's) ends nothing.
    fn outcome(self, status: &str) -> Option<Outcome> {
        match (self, status.parse::<Status>().ok()?) {
            (_, Status::Failed) => Some(Outcome::Failed),
            (_, Status::Delivered) | (Wanted::Sent, Status::Sent) => Some(Outcome::Done),
            _ => None,
        }
    }
}

/// `send --json` without `--wait`.
#[derive(Serialize)]
struct IdJson<'a> {
    id: &'a str,
}

/// A text argument: itself, or standard input for `-` (without trailing line breaks).
fn text_arg(arg: &str, stdin: &mut dyn Read) -> Result<String> {
    if arg != "-" {
        return Ok(arg.to_owned());
    }
    let mut text = String::new();
    stdin.read_to_string(&mut text).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            CtlError::Invalid("standard input is not UTF-8 text".into())
        } else {
            CtlError::Stdin(e)
        }
    })?;
    let kept = text.trim_end_matches(['\n', '\r']).len();
    text.truncate(kept);
    Ok(text)
}

fn print_messages(
    out: &mut dyn Write,
    json: bool,
    list: &[MessageDict],
    table: fn(&mut dyn Write, &[MessageDict]) -> std::io::Result<()>,
) -> Result<()> {
    let rows: Vec<MessageJson<'_>> = list.iter().map(Into::into).collect();
    show(out, json, &rows, |out| table(out, list))
}

/// Prints `value` as one JSON line with `--json`, else as `human` writes it.
fn show<T: Serialize>(
    out: &mut dyn Write,
    json: bool,
    value: &T,
    human: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    if json {
        json_line(out, value)?;
    } else {
        human(out)?;
    }
    Ok(())
}

/// The end of a command that returns nothing: a confirmation for people, `{}` for scripts.
fn done(out: &mut dyn Write, json: bool, what: &str) -> Result<()> {
    if json {
        json_line(out, &serde_json::json!({}))?;
    } else {
        writeln!(out, "{what}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_outcomes() {
        let rows = [
            (Wanted::Delivered, "queued", None),
            (Wanted::Delivered, "sending", None),
            (Wanted::Delivered, "sent", None),
            (Wanted::Delivered, "delivered", Some(Outcome::Done)),
            (Wanted::Delivered, "failed", Some(Outcome::Failed)),
            (Wanted::Sent, "sending", None),
            (Wanted::Sent, "sent", Some(Outcome::Done)),
            (Wanted::Sent, "delivered", Some(Outcome::Done)),
            (Wanted::Sent, "failed", Some(Outcome::Failed)),
        ];
        for (wanted, status, expected) in rows {
            assert_eq!(wanted.outcome(status), expected, "{wanted:?} {status}");
        }
    }

    #[test]
    fn text_from_arguments_and_stdin() {
        let rows: [(&str, &[u8], Option<&str>); 6] = [
            ("hello", b"ignored", Some("hello")),
            ("-", b"from stdin\n", Some("from stdin")),
            ("-", b"two\nlines\r\n\n", Some("two\nlines")),
            ("-", b"", Some("")),
            ("-", b"  spaced  ", Some("  spaced  ")),
            ("-", b"\xff\xfe", None),
        ];
        for (arg, stdin, expected) in rows {
            let got = text_arg(arg, &mut &stdin[..]);
            match (got, expected) {
                (Ok(text), Some(want)) => assert_eq!(text, want),
                (Err(CtlError::Invalid(_)), None) => {}
                (other, _) => panic!("{arg:?} {stdin:?}: {other:?}"),
            }
        }
    }
}
