//! The man pages `tandemd(1)` and `tandem-relay(1)`, generated from each binary's own clap
//! definition (name, synopsis, description, options with their defaults) so that they never
//! drift from the parser, followed by the sections clap does not know: files, environment,
//! D-Bus names, signals, exit statuses, logging, see also. Each binary prints its page with
//! its hidden `--man` flag; `data/install.sh` installs them. (`tandemctl(1)` has its own
//! generator in `ctl::docs`, for its commands.) Writes roff; touches nothing else.

use std::io::{self, Write};

use roff::{Roff, bold, roman};

/// One paragraph of a hand-written section.
#[derive(Debug, Clone, Copy)]
pub enum Block {
    /// A plain paragraph.
    Para(&'static str),
    /// A tagged paragraph: the term in bold, then its description.
    Item(&'static str, &'static str),
    /// Lines shown as they are (commands, examples).
    Lines(&'static [&'static str]),
}

/// What a page adds to the generated synopsis and options.
#[derive(Debug)]
pub struct Page {
    /// The program's name, as installed (the page is `NAME(1)`).
    pub name: &'static str,
    /// The NAME line and the DESCRIPTION, when they should say more than the
    /// definition's `--help` texts.
    pub about: Option<(&'static str, &'static str)>,
    /// Sections after OPTIONS, in order: (heading, paragraphs).
    pub sections: &'static [(&'static str, &'static [Block])],
}

/// Writes the page of `cmd` (the binary's clap definition) with `page`'s sections.
pub fn write(cmd: clap::Command, page: &Page, out: &mut dyn Write) -> io::Result<()> {
    let mut cmd = cmd.name(page.name).bin_name(page.name);
    if let Some((about, description)) = page.about {
        cmd = cmd.about(about).long_about(description);
    }
    let man = clap_mangen::Man::new(cmd)
        .source(format!("Tandem {}", env!("CARGO_PKG_VERSION")))
        .manual("Tandem");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    let mut roff = Roff::new();
    for (heading, blocks) in page.sections {
        roff.control("SH", [*heading]);
        for block in *blocks {
            match block {
                Block::Para(text) => {
                    roff.control("PP", []);
                    roff.text([roman(*text)]);
                }
                Block::Item(term, text) => {
                    roff.control("TP", []);
                    roff.text([bold(*term)]);
                    roff.text([roman(*text)]);
                }
                Block::Lines(lines) => {
                    roff.control("PP", []);
                    roff.control("nf", []);
                    roff.control("RS", ["4"]);
                    for line in *lines {
                        roff.text([roman(*line)]);
                    }
                    roff.control("RE", []);
                    roff.control("fi", []);
                }
            }
        }
    }
    roff.to_writer(out)?;
    out.flush()
}

use Block::{Item, Lines, Para};

/// `tandemd(1)`.
pub const TANDEMD: Page = Page {
    name: "tandemd",
    about: Some((
        "the Tandem messaging daemon: SMS and IP messages in one inbox",
        "tandemd is a user daemon for Linux phones. It keeps SMS (received and sent through \
         ModemManager) and IP messages (through a Tandem relay, see tandem-relay(1)) in one \
         SQLite store and serves them on the session bus as org.tandem.Messages1, for \
         graphical frontends and for tandemctl(1). An outgoing message goes over IP when \
         both sides are online on the relay, else by SMS; once SendMessage has answered, it \
         is stored, and it is never lost or sent twice, across crashes and restarts. It is \
         meant to run as the systemd user unit tandemd.service.",
    )),
    sections: &[
        (
            "D-BUS",
            &[
                Para(
                    "tandemd owns the name org.tandem.Messages1 on the session bus and serves \
                     the interface org.tandem.Messages1 at /org/tandem/Messages1 (methods, \
                     signals and properties are in \
                     /usr/share/dbus-1/interfaces/org.tandem.Messages1.xml). It asks for the \
                     name without queueing: a second tandemd on the same bus exits with status \
                     1 and leaves the first alone, and a tandemd that loses the name stops.",
                ),
                Para(
                    "On the system bus it uses ModemManager (org.freedesktop.ModemManager1) for \
                     SMS, NetworkManager (org.freedesktop.NetworkManager) for connectivity, and \
                     systemd-logind (org.freedesktop.login1), whose sleep it delays for at most \
                     3 seconds to close the relay session. Each may be absent: SMS then wait in \
                     the outbox, and the relay is tried whatever the network.",
                ),
                Para(
                    "The bus activates tandemd through \
                     /usr/share/dbus-1/services/org.tandem.Messages1.service, which hands over \
                     to the user unit tandemd.service.",
                ),
            ],
        ),
        (
            "FILES",
            &[
                Item(
                    "$XDG_CONFIG_HOME/tandem/config.toml",
                    "The configuration (default ~/.config/tandem/config.toml); --config \
                     overrides it. Missing, the defaults apply; given with --config, it must \
                     exist. The documented default is /usr/share/doc/tandem/config.toml.",
                ),
                Item(
                    "$XDG_DATA_HOME/tandem/messages.db",
                    "The message store (default ~/.local/share/tandem/messages.db; SQLite, with \
                     its -wal and -shm files beside it), mode 0600 in a folder of mode 0700, \
                     both fixed at start; --db overrides it.",
                ),
                Item(
                    "$XDG_DATA_HOME/tandem/relay-token",
                    "The device token of the relay account (mode 0600), beside the store.",
                ),
                Item(
                    "/usr/lib/systemd/user/tandemd.service",
                    "The systemd user unit: systemctl --user enable --now tandemd.",
                ),
            ],
        ),
        (
            "ENVIRONMENT",
            &[
                Item(
                    "RUST_LOG",
                    "Log filter (for example debug, or warn,tandem=trace); overrides -v.",
                ),
                Item(
                    "XDG_CONFIG_HOME, XDG_DATA_HOME, HOME",
                    "Where the configuration and the store are looked for.",
                ),
                Item(
                    "DBUS_SESSION_BUS_ADDRESS",
                    "The session bus served (default: $XDG_RUNTIME_DIR/bus).",
                ),
                Item(
                    "DBUS_SYSTEM_BUS_ADDRESS",
                    "The system bus of ModemManager, NetworkManager and logind (default: \
                     /run/dbus/system_bus_socket); the modem simulator tandem-mmsim is reached \
                     by pointing it at a private bus.",
                ),
                Item(
                    "JOURNAL_STREAM",
                    "Set by systemd (see systemd.exec(5)): logs go to the journal, with \
                     structured fields, when it names the device and inode of tandemd's own \
                     standard error; otherwise they go to standard error.",
                ),
            ],
        ),
        (
            "SIGNALS",
            &[Item(
                "SIGTERM, SIGINT",
                "Stop in order: no new work is taken, what was accepted stays in the store \
                 (an outgoing message accepted by SendMessage is sent after the next start), \
                 and the relay session is closed.",
            )],
        ),
        (
            "EXIT STATUS",
            &[
                Item("0", "Stopped by SIGTERM or SIGINT."),
                Item(
                    "1",
                    "Failure: the bus name is taken or was lost, the session bus is gone, the \
                     store cannot be opened.",
                ),
                Item("2", "Usage error (bad command line)."),
                Item(
                    "78",
                    "Configuration error (EX_CONFIG): the file cannot be read or has a bad value; \
                     the message names it.",
                ),
            ],
        ),
        (
            "LOGGING",
            &[Lines(&[
                "journalctl --user -u tandemd",
                "systemctl --user status tandemd",
            ])],
        ),
        (
            "SEE ALSO",
            &[Para(
                "tandemctl(1), tandem-relay(1), busctl(1), journalctl(1), systemctl(1), \
                 systemd.exec(5), ModemManager(8); /usr/share/doc/tandem/.",
            )],
        ),
    ],
};

/// `tandem-relay(1)`.
pub const RELAY: Page = Page {
    name: "tandem-relay",
    about: None,
    sections: &[
        (
            "RUNNING UNDER SYSTEMD",
            &[
                Para(
                    "The system unit tandem-relay.service runs the relay as a dynamic user \
                     with its state in /var/lib/tandem-relay and most of the system hidden or \
                     read-only. It reads its options from /etc/tandem-relay/relay.conf \
                     (TANDEM_RELAY_LISTEN, the address; TANDEM_RELAY_OPTIONS, more options \
                     split at spaces) and its TLS certificate and key as systemd credentials \
                     from /etc/tandem-relay/cert.pem and /etc/tandem-relay/key.pem, which \
                     only root needs to read (symbolic links to a certificate manager's files \
                     work; restart the unit after a renewal).",
                ),
                Para(
                    "The example listens on port 7000, so that the relay holds no \
                     capability: a port below 1024 needs CAP_NET_BIND_SERVICE, given by a \
                     drop-in (systemctl edit tandem-relay) with \
                     AmbientCapabilities=CAP_NET_BIND_SERVICE, \
                     CapabilityBoundingSet=CAP_NET_BIND_SERVICE and PrivateUsers=no.",
                ),
                Lines(&[
                    "systemctl enable --now tandem-relay",
                    "journalctl -u tandem-relay",
                ]),
            ],
        ),
        (
            "FILES",
            &[
                Item(
                    "$STATE_DIRECTORY/relay.db",
                    "The database (accounts, pending codes, queued messages; SQLite with its \
                     -wal and -shm files), mode 0600, when --db is not given and systemd set \
                     STATE_DIRECTORY (/var/lib/tandem-relay/relay.db with the shipped unit); \
                     ./tandem-relay.db otherwise.",
                ),
                Item(
                    "/etc/tandem-relay/relay.conf",
                    "The unit's environment file (an example is in \
                     /usr/share/doc/tandem-relay/relay.conf.example).",
                ),
                Item(
                    "/etc/tandem-relay/cert.pem, /etc/tandem-relay/key.pem",
                    "The PEM certificate chain and private key the unit passes as --tls-cert \
                     and --tls-key (through $CREDENTIALS_DIRECTORY).",
                ),
                Item(
                    "/usr/lib/systemd/system/tandem-relay.service",
                    "The system unit.",
                ),
                Item(
                    "/usr/share/doc/tandem-relay/relay-protocol.md",
                    "The protocol the daemons speak to the relay.",
                ),
            ],
        ),
        (
            "ENVIRONMENT",
            &[
                Item("RUST_LOG", "Log filter; overrides -v."),
                Item(
                    "STATE_DIRECTORY",
                    "Set by systemd's StateDirectory=: the folder of the default database.",
                ),
                Item(
                    "JOURNAL_STREAM",
                    "Set by systemd: logs go to the journal when it names the relay's own \
                     standard error, else to standard error.",
                ),
                Item(
                    "TANDEM_NUMBER, TANDEM_CODE, TANDEM_TEXT",
                    "Given to the --sms-command: the number to prove, the one-time code and \
                     the text of the SMS to send.",
                ),
            ],
        ),
        (
            "SIGNALS",
            &[Item(
                "SIGTERM, SIGINT",
                "Stop in order: every accepted message is committed before the relay \
                 answers it, so nothing accepted is lost.",
            )],
        ),
        (
            "EXIT STATUS",
            &[
                Item("0", "Stopped by SIGTERM or SIGINT."),
                Item(
                    "1",
                    "Failure, with the reason on standard error: contradictory options, \
                     the address cannot be bound, the certificate or key cannot be read, the \
                     database cannot be opened.",
                ),
                Item("2", "Usage error (bad command line)."),
            ],
        ),
        (
            "OUTPUT",
            &[Para(
                "Once it accepts connections, tandem-relay prints \"listening on ADDR\" on \
                 standard output (with the port chosen when --listen asks for port 0), and \
                 nothing else.",
            )],
        ),
        (
            "EXAMPLES",
            &[Lines(&[
                "tandem-relay --listen 127.0.0.1:7000 --verify none",
                "tandem-relay --listen 0.0.0.0:7000 --tls-cert cert.pem --tls-key key.pem \\",
                "    --sms-command /usr/local/bin/send-code",
            ])],
        ),
        (
            "SEE ALSO",
            &[Para(
                "tandemd(1), tandemctl(1), systemd.exec(5), systemd.unit(5), journalctl(1).",
            )],
        ),
    ],
};

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction, Command};

    fn render(cmd: Command, page: &Page) -> String {
        let mut out = Vec::new();
        write(cmd, page, &mut out).expect("render");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn page_has_clap_options_then_every_section_under_its_own_name() {
        let cmd = Command::new("tandem")
            .about("Does things")
            .arg(
                Arg::new("db")
                    .long("db")
                    .value_name("PATH")
                    .help("The database"),
            )
            .arg(
                Arg::new("man")
                    .long("man")
                    .hide(true)
                    .action(ArgAction::SetTrue),
            );
        let page = render(cmd, &TANDEMD);
        assert!(page.contains(".TH tandemd 1"), "{page}");
        assert!(
            page.contains("tandemd \\- the Tandem messaging daemon"),
            "{page}"
        );
        assert!(!page.contains("Does things"), "{page}");
        assert!(page.contains("\\-\\-db"), "{page}");
        assert!(page.contains("The database"));
        assert!(!page.contains("\\-\\-man"), "hidden flag shown: {page}");
        let options = page.find(".SH OPTIONS").expect("options");
        let mut last = options;
        for (heading, _) in TANDEMD.sections {
            let mark = if heading.contains(' ') {
                format!(".SH \"{heading}\"")
            } else {
                format!(".SH {heading}")
            };
            let at = page.find(&mark).unwrap_or_else(|| panic!("{mark} missing"));
            assert!(at > last, "{heading} out of order");
            last = at;
        }
        assert!(page.contains("org.tandem.Messages1"));
        assert!(page.contains("journalctl \\-\\-user \\-u tandemd"));
    }
}
