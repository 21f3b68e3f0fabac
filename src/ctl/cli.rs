//! The command line of `tandemctl`, as clap types. The one definition the parser, the shell
//! completions and the man page are generated from; it holds no behaviour.

use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;

use crate::api::MAX_LIMIT;

/// How many items the listing commands ask for when `--limit` is not given.
pub const DEFAULT_LIMIT: u32 = 50;
/// How long `send --wait` waits when `--timeout` is not given, in seconds.
pub const DEFAULT_WAIT_SECS: u64 = 120;

/// The exit statuses, as the help and the man page show them.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success
  1  other failure (the daemon's own failure, an unexpected D-Bus error)
  2  usage error (bad command line)
  3  tandemd is not running, does not answer, or the session bus is unreachable
  4  not found (unknown message id or conversation)
  5  invalid input (number, text, option)
  6  unavailable (the asked-for channel or feature is off)
  7  send --wait: the message failed
  8  send --wait: timed out before the message was delivered";

/// Command-line client of tandemd, the SMS and IP messaging daemon (org.tandem.Messages1)
#[derive(Debug, Parser)]
#[command(
    name = "tandemctl",
    version,
    after_help = EXIT_STATUS_HELP,
    long_about = "Command-line client of tandemd, the SMS and IP messaging daemon.\n\n\
        It talks to org.tandem.Messages1 on the session bus (DBUS_SESSION_BUS_ADDRESS). \
        Phone numbers are accepted in any common written form and shown in E.164. \
        Tables show local times; --json prints one JSON document per command \
        (JSON lines for monitor) with the D-Bus API's key names."
)]
pub struct Cli {
    /// Print JSON for scripts instead of tables (JSON lines for monitor)
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send a message and print its id
    Send(SendArgs),
    /// List conversations, newest activity first
    #[command(visible_alias = "ls")]
    Conversations {
        /// Skip this many conversations
        #[arg(long, default_value_t = 0)]
        offset: u32,
        /// Show at most this many conversations
        #[arg(long, default_value_t = DEFAULT_LIMIT, value_parser = limit_parser())]
        limit: u32,
    },
    /// Show the conversation with NUMBER, newest first
    Messages {
        /// The other party's number
        number: String,
        /// Show at most this many messages
        #[arg(long, default_value_t = DEFAULT_LIMIT, value_parser = limit_parser())]
        limit: u32,
        /// Only messages older than the message ID (paging)
        #[arg(long, value_name = "ID")]
        before: Option<String>,
    },
    /// Full-text search over all messages, newest first
    Search {
        /// Words to look for
        query: String,
        /// Show at most this many messages
        #[arg(long, default_value_t = DEFAULT_LIMIT, value_parser = limit_parser())]
        limit: u32,
    },
    /// Mark every incoming message from NUMBER read
    Read {
        /// The other party's number
        number: String,
    },
    /// Delete one message
    Delete {
        /// The message id
        id: String,
    },
    /// Delete the whole conversation with NUMBER
    DeleteConversation {
        /// The other party's number
        number: String,
    },
    /// Show whether NUMBER is online, typing or offline on the IP channel
    Presence {
        /// The contact's number
        number: String,
    },
    /// Follow the presence of these contacts, and show it
    WatchContacts {
        /// The contacts' numbers
        #[arg(required = true, value_name = "NUMBER")]
        numbers: Vec<String>,
    },
    /// Show the own number, the modem and relay states and the unread count
    Status,
    /// Show how many SMS parts a text needs
    Estimate {
        /// The text, or - to read it from standard input
        text: String,
    },
    /// Print incoming messages, status and presence changes as they happen, until Ctrl-C
    Monitor,
    /// Print a shell completion script
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page (roff)
    Man,
}

/// Arguments of `tandemctl send`.
#[derive(Debug, Args)]
#[command(
    after_help = "With --wait, progress goes to standard error and the id to standard \
    output; --wait asks for a delivery report unless --no-delivery-report is given, and \
    then ends at \"sent\"."
)]
pub struct SendArgs {
    /// The recipient, in any common written form (+15551234567, "(555) 123-4567")
    pub number: String,
    /// The text, or - to read it from standard input (trailing newlines are dropped)
    pub text: String,
    /// Channel: auto (IP when both sides are online, else SMS), sms or ip [default: auto]
    #[arg(long, value_enum, value_name = "CHANNEL")]
    pub via: Option<Via>,
    /// Ask the SMS centre for a delivery report [default: the daemon's configuration]
    #[arg(long, overrides_with = "no_delivery_report")]
    pub delivery_report: bool,
    /// Do not ask for a delivery report
    #[arg(long, overrides_with = "delivery_report")]
    pub no_delivery_report: bool,
    /// Wait until the message is delivered (exit 7 if it fails, 8 on timeout)
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after SECS seconds
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_WAIT_SECS, requires = "wait")]
    pub timeout: u64,
}

impl SendArgs {
    /// The `delivery-report` option to send: the flags, else `true` with `--wait` (it waits
    /// for `delivered`), else unset (the daemon's configuration decides).
    pub fn delivery_report(&self) -> Option<bool> {
        if self.delivery_report {
            Some(true)
        } else if self.no_delivery_report {
            Some(false)
        } else if self.wait {
            Some(true)
        } else {
            None
        }
    }
}

/// `send --via`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    Auto,
    Sms,
    Ip,
}

impl Via {
    /// The value of `SendMessage`'s `channel` option.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Auto => "auto",
            Via::Sms => "sms",
            Via::Ip => "ip",
        }
    }
}

fn limit_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=i64::from(MAX_LIMIT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tandemctl").chain(args.iter().copied()))
    }

    fn send(args: &[&str]) -> SendArgs {
        match parse(args).expect("valid command line").command {
            Command::Send(s) => s,
            other => panic!("not send: {other:?}"),
        }
    }

    #[test]
    fn delivery_report_option() {
        let rows: [(&[&str], Option<bool>); 6] = [
            (&["send", "1", "x"], None),
            (&["send", "1", "x", "--wait"], Some(true)),
            (&["send", "1", "x", "--delivery-report"], Some(true)),
            (
                &["send", "1", "x", "--wait", "--no-delivery-report"],
                Some(false),
            ),
            (
                &[
                    "send",
                    "1",
                    "x",
                    "--delivery-report",
                    "--no-delivery-report",
                ],
                Some(false),
            ),
            (
                &[
                    "send",
                    "1",
                    "x",
                    "--no-delivery-report",
                    "--delivery-report",
                ],
                Some(true),
            ),
        ];
        for (args, expected) in rows {
            assert_eq!(send(args).delivery_report(), expected, "{args:?}");
        }
    }

    #[test]
    fn parses_and_refuses() {
        assert!(parse(&["--json", "ls"]).expect("ls").json);
        assert!(parse(&["status", "--json"]).expect("global flag").json);
        let s = send(&[
            "send",
            "+1555",
            "-",
            "--via",
            "sms",
            "--wait",
            "--timeout",
            "5",
        ]);
        assert_eq!(
            (s.text.as_str(), s.via, s.timeout),
            ("-", Some(Via::Sms), 5)
        );
        assert_eq!(
            send(&["send", "1", "x", "--wait"]).timeout,
            DEFAULT_WAIT_SECS
        );
        for bad in [
            &["send", "1"][..],
            &["send", "1", "x", "--via", "pigeon"],
            &["send", "1", "x", "--timeout", "5"],
            &["ls", "--limit", "0"],
            &["messages", "1", "--limit", "1001"],
            &["watch-contacts"],
            &["completions", "tcsh"],
            &["frobnicate"],
            &[],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
