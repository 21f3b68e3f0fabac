//! The daemon's configuration: the TOML file, its defaults, its validation, and the
//! default file locations (XDG).
//!
//! Owns: the keys and their meaning (fixed by the contract in `dbus-api.md`, plus the
//! additions documented on each field), the defaults (also written out, commented, in
//! `data/config.toml`, which a test keeps in step), and error messages that name the
//! file, the key (`sms.max_parts`) and what was wrong. A loaded [`Config`] is valid:
//! `own_number` is E.164, `default_region` is a known upper-case region, an empty
//! `relay.url` or `sms.modem` is `None`.
//!
//! Must not: keep global state (the config is passed explicitly), read the environment
//! other than for the default paths, or touch anything but the one file it is given.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::number;

/// Everything in `config.toml`. Every key is optional; [`Config::default`] is the
/// documented default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This phone's number, for when the SIM does not carry it. Stored in E.164.
    pub own_number: Option<String>,
    /// Region ("US", "DE") for numbers written without +country. Stored upper-case.
    pub default_region: Option<String>,
    pub relay: RelayConfig,
    pub sms: SmsConfig,
    pub notifications: NotificationsConfig,
}

/// `[relay]`: the IP channel.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// `ws://` or `wss://` URL of the relay; `None` (absent or "") disables the IP channel.
    pub url: Option<String>,
    /// Seconds to wait for the recipient's receipt of an IP message before revoking it and
    /// sending it as SMS instead.
    pub fallback_timeout_s: u64,
    /// Seconds between full presence refreshes (the method's periodic refresh); 0 = off.
    pub presence_refresh_s: u64,
    /// The text of the relay's registration-code SMS, `{code}` standing for the digits:
    /// such an SMS is answered to the relay and never shown in the inbox.
    pub code_pattern: String,
}

/// `[sms]`: the SMS channel through ModemManager.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmsConfig {
    /// Which modem to use: its D-Bus object path, its EquipmentIdentifier (IMEI) or its
    /// own number. `None` (absent or ""): the first modem with the Messaging interface.
    pub modem: Option<String>,
    /// Ask the SMS centre for a status report (the default of `SendMessage`'s
    /// `delivery-report` option).
    pub delivery_reports: bool,
    /// Take incoming SMS: store them, announce them and (with `delete_received`) remove
    /// them from the modem. `false` leaves every incoming SMS on the modem for another app
    /// that owns them (Chatty, Spacebar): Tandem then still sends SMS, applies status
    /// reports to its own messages and takes the relay's registration-code SMS, nothing else.
    pub receive: bool,
    /// Remove received SMS from the modem once stored (the modem's memory is small).
    pub delete_received: bool,
    /// Remove sent SMS from the modem once their final status is stored.
    pub delete_sent: bool,
    /// Texts needing more SMS parts than this are refused (InvalidArgument).
    pub max_parts: u32,
    /// Attempts to send one SMS (the first included) before it is marked failed.
    pub max_attempts: u32,
    /// Texts longer than this many characters are refused (InvalidArgument).
    pub max_text_chars: u32,
    /// How long ModemManager may take to send one SMS part, in seconds. A send of N parts
    /// with no answer after N times this is looked up on its SMS object; if that does not
    /// say "sent", whether it went out is unknown and it is not sent again.
    pub send_timeout_s: u32,
}

/// `[notifications]`: desktop notifications for incoming messages.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationsConfig {
    pub enabled: bool,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            url: None,
            fallback_timeout_s: 30,
            presence_refresh_s: 900,
            code_pattern: crate::relay::protocol::CODE_SMS_TEMPLATE.to_owned(),
        }
    }
}

impl Default for SmsConfig {
    fn default() -> Self {
        SmsConfig {
            modem: None,
            delivery_reports: true,
            receive: true,
            delete_received: true,
            delete_sent: true,
            max_parts: 10,
            max_attempts: 5,
            max_text_chars: 10_000,
            send_timeout_s: 60,
        }
    }
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig { enabled: true }
    }
}

impl RelayConfig {
    /// [`RelayConfig::fallback_timeout_s`] as a duration.
    pub fn fallback_timeout(&self) -> Duration {
        Duration::from_secs(self.fallback_timeout_s)
    }

    /// [`RelayConfig::presence_refresh_s`] as a duration; `None` when off.
    pub fn presence_refresh(&self) -> Option<Duration> {
        (self.presence_refresh_s > 0).then(|| Duration::from_secs(self.presence_refresh_s))
    }
}

/// Where in the file (1-based line and column, in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Why a configuration file cannot be used. Every message starts with the file's path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the config file: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{at}: not valid TOML: {message}", path.display())]
    Syntax {
        path: PathBuf,
        at: Position,
        message: String,
    },
    /// An unknown key, or a value of the wrong type or out of the type's range.
    #[error("{}:{at}: key `{key}`: {message}", path.display())]
    Key {
        path: PathBuf,
        at: Position,
        key: String,
        message: String,
    },
    /// A value of the right type that is not allowed.
    #[error("{}: key `{key}`: invalid value {value}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        key: &'static str,
        value: String,
        reason: String,
    },
}

impl Config {
    /// Loads `path`. A missing file is all defaults when `required` is false (the default
    /// path), an error when true (an explicit --config). Any other read error (permission,
    /// a directory) is an error either way. Every error names the file and, when it is
    /// about a key, the key with its section ("sms.max_parts"), and says what was wrong
    /// (wrong type, unknown key, invalid value). `own_number` is stored normalised (E.164).
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::from_toml_str(&text, path),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !required => {
                tracing::debug!(path = %path.display(), "no config file, using defaults");
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses and validates `text`; `origin` is the file it came from, for messages.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        // Parsed once without a schema for syntax errors and for the spans of the keys,
        // which name the key of a schema error (toml's error only carries a span).
        let document = toml::de::DeTable::parse(text).map_err(|err| ConfigError::Syntax {
            path: origin.to_owned(),
            at: position(text, err.span().unwrap_or(0..0)),
            message: err.message().trim().to_owned(),
        })?;
        let config: Config = toml::from_str(text).map_err(|err| {
            let span = err.span().unwrap_or(0..0);
            let key = key_at(document.get_ref(), &span)
                .map(|path| path.join("."))
                .unwrap_or_else(|| "?".to_owned());
            let message = err.message().trim();
            let message = match message.strip_prefix("unknown field") {
                Some(rest) => format!("unknown key{rest}"),
                None => message.to_owned(),
            };
            ConfigError::Key {
                path: origin.to_owned(),
                at: position(text, span),
                key,
                message,
            }
        })?;
        config.validated(origin)
    }

    /// Checks values the types cannot, and brings them to their stored form.
    fn validated(mut self, origin: &Path) -> Result<Config, ConfigError> {
        self.normalize_numbers()
            .and_then(|()| self.relay.validate())
            .and_then(|()| self.sms.validate())
            .map_err(|Bad { key, value, reason }| ConfigError::Invalid {
                path: origin.to_owned(),
                key,
                value,
                reason,
            })?;
        Ok(self)
    }

    fn normalize_numbers(&mut self) -> Result<(), Bad> {
        if let Some(region) = self.default_region.take() {
            if !number::is_known_region(&region) {
                return Err(Bad::new(
                    "default_region",
                    &region,
                    "not a known region code (expected two letters such as \"US\" or \"DE\")",
                ));
            }
            self.default_region = Some(region.trim().to_ascii_uppercase());
        }
        if let Some(own) = self.own_number.take() {
            let normalized = number::normalize(&own, self.default_region.as_deref())
                .map_err(|err| Bad::new("own_number", &own, err.to_string()))?;
            if !normalized.starts_with('+') {
                return Err(Bad::new(
                    "own_number",
                    &own,
                    "must be a full phone number such as \"+15550001111\"",
                ));
            }
            self.own_number = Some(normalized);
        }
        Ok(())
    }
}

/// A value the types accept but the configuration does not.
struct Bad {
    key: &'static str,
    value: String,
    reason: String,
}

impl Bad {
    fn new(key: &'static str, value: &dyn std::fmt::Debug, reason: impl Into<String>) -> Bad {
        Bad {
            key,
            value: format!("{value:?}"),
            reason: reason.into(),
        }
    }

    /// `Err` unless `ok`.
    fn unless(
        ok: bool,
        key: &'static str,
        value: &dyn std::fmt::Debug,
        reason: &str,
    ) -> Result<(), Bad> {
        if ok {
            Ok(())
        } else {
            Err(Bad::new(key, value, reason))
        }
    }
}

impl RelayConfig {
    fn validate(&mut self) -> Result<(), Bad> {
        self.url = self.url.take().filter(|url| !url.trim().is_empty());
        if let Some(url) = &self.url {
            check_ws_url(url).map_err(|reason| Bad::new("relay.url", url, reason))?;
        }
        Bad::unless(
            self.code_pattern.matches("{code}").count() == 1,
            "relay.code_pattern",
            &self.code_pattern,
            "must contain {code} exactly once",
        )?;
        Bad::unless(
            self.fallback_timeout_s > 0,
            "relay.fallback_timeout_s",
            &self.fallback_timeout_s,
            "must be at least 1 second",
        )
    }
}

impl SmsConfig {
    fn validate(&mut self) -> Result<(), Bad> {
        self.modem = self.modem.take().filter(|modem| !modem.trim().is_empty());
        Bad::unless(
            (1..=255).contains(&self.max_parts),
            "sms.max_parts",
            &self.max_parts,
            "must be 1 to 255 (a concatenated SMS has at most 255 parts)",
        )?;
        Bad::unless(
            self.max_attempts > 0,
            "sms.max_attempts",
            &self.max_attempts,
            "must be at least 1",
        )?;
        Bad::unless(
            (1..=600).contains(&self.send_timeout_s),
            "sms.send_timeout_s",
            &self.send_timeout_s,
            "must be 1 to 600 seconds",
        )?;
        Bad::unless(
            self.max_text_chars > 0,
            "sms.max_text_chars",
            &self.max_text_chars,
            "must be at least 1",
        )
    }
}

/// Checks a relay URL is `ws://` or `wss://` with a host (and at most a numeric port).
fn check_ws_url(url: &str) -> Result<(), &'static str> {
    let lower = url.to_ascii_lowercase();
    let rest = if lower.starts_with("ws://") {
        &url[5..]
    } else if lower.starts_with("wss://") {
        &url[6..]
    } else {
        return Err("must start with ws:// or wss:// (or be empty to disable the relay)");
    };
    if url.chars().any(char::is_whitespace) {
        return Err("must not contain spaces");
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((host, after)) => (host, after.strip_prefix(':')),
            None => return Err("has an unclosed '[' in the host"),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("has no host");
    }
    if let Some(port) = port
        && port.parse::<u16>().is_err()
    {
        return Err("has a port that is not a number from 0 to 65535");
    }
    Ok(())
}

/// The dotted path of the deepest key whose key or value span contains `span`.
fn key_at(table: &toml::de::DeTable<'_>, span: &Range<usize>) -> Option<Vec<String>> {
    let contains = |outer: Range<usize>| outer.start <= span.start && span.end <= outer.end;
    for (key, value) in table.iter() {
        if let Some(inner) = value.get_ref().as_table()
            && let Some(mut path) = key_at(inner, span)
        {
            path.insert(0, key.get_ref().to_string());
            return Some(path);
        }
        if contains(key.span()) || contains(value.span()) {
            return Some(vec![key.get_ref().to_string()]);
        }
    }
    None
}

/// 1-based line and column (in characters) of the start of `span`.
fn position(text: &str, span: Range<usize>) -> Position {
    let start = span.start.min(text.len());
    let before = text.get(..start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    Position { line, column }
}

/// `$XDG_CONFIG_HOME/tandem/config.toml` (XDG_CONFIG_HOME defaults to `$HOME/.config`).
pub fn default_config_path() -> PathBuf {
    xdg_file("XDG_CONFIG_HOME", ".config", "config.toml")
}

/// `$XDG_DATA_HOME/tandem/messages.db` (XDG_DATA_HOME defaults to `$HOME/.local/share`).
pub fn default_db_path() -> PathBuf {
    xdg_file("XDG_DATA_HOME", ".local/share", "messages.db")
}

/// `file` in the `tandem` folder of the XDG base directory `var` (with `fallback` below
/// `$HOME` as its default).
fn xdg_file(var: &str, fallback: &str, file: &str) -> PathBuf {
    xdg_path(std::env::var_os(var), std::env::home_dir(), fallback).join(file)
}

/// `<base>/tandem`, where base is the XDG variable when it is an absolute path (the XDG
/// spec says relative values are to be ignored), else `$HOME/<fallback>`. Without a home
/// directory the path is relative to the working directory.
fn xdg_path(
    variable: Option<std::ffi::OsString>,
    home: Option<PathBuf>,
    fallback: &str,
) -> PathBuf {
    let base = variable
        .map(PathBuf::from)
        .filter(|path| path.is_absolute())
        .unwrap_or_else(|| home.unwrap_or_default().join(fallback));
    base.join("tandem")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented default file, shipped in `data/`.
    const SHIPPED: &str = include_str!("../data/config.toml");

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("/etc/test/tandem.toml"))
    }

    /// Checks `text` fails with a message that names the file and contains each of `parts`.
    #[track_caller]
    fn check_error(text: &str, parts: &[&str]) {
        let message = match parse(text) {
            Ok(config) => panic!("{text:?} parsed to {config:?}, expected an error"),
            Err(err) => err.to_string(),
        };
        assert!(
            message.starts_with("/etc/test/tandem.toml"),
            "{message:?} does not start with the file"
        );
        for part in parts {
            assert!(message.contains(part), "{message:?} lacks {part:?}");
        }
    }

    /// `key = value`, with a bare lower-case key.
    fn is_assignment(line: &str) -> bool {
        line.split_once(" = ").is_some_and(|(key, _)| {
            !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        })
    }

    #[test]
    fn shipped_file_is_exactly_the_defaults() {
        assert_eq!(parse(SHIPPED).unwrap(), Config::default());
    }

    #[test]
    fn shipped_file_documents_every_key_with_a_valid_example() {
        // Uncommenting every `# key = value` line must give a valid file that sets the
        // keys without defaults, so no documented key is misspelt or has a bad example.
        let uncommented: String = SHIPPED
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if is_assignment(rest) => rest,
                _ => line,
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let config = parse(&uncommented).unwrap();
        assert!(config.own_number.is_some());
        assert!(config.default_region.is_some());
        assert!(config.relay.url.is_some());
        assert!(config.sms.modem.is_some());
        for key in [
            "own_number",
            "default_region",
            "url",
            "fallback_timeout_s",
            "presence_refresh_s",
            "modem",
            "delivery_reports",
            "receive",
            "delete_received",
            "delete_sent",
            "max_parts",
            "max_attempts",
            "max_text_chars",
            "enabled",
        ] {
            let line = SHIPPED
                .lines()
                .find(|line| {
                    let line = line.strip_prefix("# ").unwrap_or(line);
                    is_assignment(line) && line.starts_with(&format!("{key} = "))
                })
                .unwrap_or_else(|| panic!("data/config.toml lacks {key}"));
            assert!(line.contains(" # "), "{key} has no comment: {line:?}");
        }
    }

    #[test]
    fn defaults() {
        let config = Config::default();
        assert_eq!(config.relay.fallback_timeout(), Duration::from_secs(30));
        assert_eq!(
            config.relay.presence_refresh(),
            Some(Duration::from_secs(900))
        );
        assert!(config.sms.delivery_reports && config.sms.delete_received && config.sms.receive);
        assert!(config.sms.delete_sent && config.notifications.enabled);
        assert_eq!(
            (
                config.sms.max_parts,
                config.sms.max_attempts,
                config.sms.max_text_chars
            ),
            (10, 5, 10_000)
        );
        assert_eq!(parse("").unwrap(), config);
        assert_eq!(parse("# nothing\n\n").unwrap(), config);
    }

    #[test]
    fn contract_example_parses() {
        let config = parse(
            r#"
            own_number = "+1 555 000-1111"    # when the SIM does not carry it
            default_region = "us"             # for numbers written without +country
            [relay]
            url = "ws://127.0.0.1:7000"
            fallback_timeout_s = 5
            presence_refresh_s = 0
            [sms]
            modem = "/org/freedesktop/ModemManager1/Modem/0"
            delivery_reports = false
            receive = false
            delete_received = false
            delete_sent = false
            max_parts = 3
            max_attempts = 1
            max_text_chars = 480
            send_timeout_s = 30
            [notifications]
            enabled = false
            "#,
        )
        .unwrap();
        assert_eq!(config.own_number.as_deref(), Some("+15550001111"));
        assert_eq!(config.default_region.as_deref(), Some("US"));
        assert_eq!(config.relay.url.as_deref(), Some("ws://127.0.0.1:7000"));
        assert_eq!(config.relay.fallback_timeout(), Duration::from_secs(5));
        assert_eq!(config.relay.presence_refresh(), None);
        assert_eq!(
            config.sms,
            SmsConfig {
                modem: Some("/org/freedesktop/ModemManager1/Modem/0".to_owned()),
                delivery_reports: false,
                receive: false,
                delete_received: false,
                delete_sent: false,
                max_parts: 3,
                max_attempts: 1,
                max_text_chars: 480,
                send_timeout_s: 30,
            }
        );
        assert!(!config.notifications.enabled);
    }

    #[test]
    fn own_number_uses_the_default_region() {
        let config = parse("own_number = \"0151 2345678\"\ndefault_region = \"DE\"").unwrap();
        assert_eq!(config.own_number.as_deref(), Some("+491512345678"));
    }

    #[test]
    fn empty_strings_mean_absent() {
        let config = parse("[relay]\nurl = \"\"\n[sms]\nmodem = \" \"").unwrap();
        assert_eq!(config.relay.url, None);
        assert_eq!(config.sms.modem, None);
    }

    #[test]
    fn syntax_errors_name_file_and_position() {
        check_error("own_number = ", &[":1:14: not valid TOML"]);
        check_error("[sms\nmax_parts = 3", &[":1:", "not valid TOML"]);
        check_error(
            "[sms]\nmax_parts = 3\nmax_parts = 4",
            &[":3:", "not valid TOML"],
        );
    }

    #[test]
    fn unknown_keys_are_named_with_their_section() {
        check_error(
            "own_numbr = \"+15550001111\"",
            &[":1:1: key `own_numbr`: unknown key"],
        );
        check_error(
            "[sms]\nmax_part = 3",
            &[":2:1: key `sms.max_part`: unknown key", "max_parts"],
        );
        check_error(
            "[relay]\nurl = \"ws://h\"\ntimeout = 3",
            &["key `relay.timeout`: unknown key"],
        );
        check_error("[smss]\nmax_parts = 3", &["key `smss`: unknown key"]);
        check_error(
            "notifications.sound = true",
            &["key `notifications.sound`: unknown key"],
        );
    }

    #[test]
    fn wrong_types_are_named_with_their_section() {
        check_error(
            "[sms]\nmax_parts = \"ten\"",
            &[":2:13: key `sms.max_parts`: invalid type: string \"ten\", expected u32"],
        );
        check_error(
            "own_number = 15550001111",
            &["key `own_number`: invalid type: integer"],
        );
        check_error(
            "[notifications]\nenabled = \"yes\"",
            &["key `notifications.enabled`", "expected a boolean"],
        );
        check_error("sms = 3", &["key `sms`: invalid type: integer `3`"]);
        check_error(
            "sms = { max_parts = 1.5 }",
            &["key `sms.max_parts`: invalid type: floating point"],
        );
        check_error(
            "[relay]\nfallback_timeout_s = -1",
            &["key `relay.fallback_timeout_s`: invalid value: integer `-1`"],
        );
        check_error(
            "[sms]\nmax_parts = 99999999999",
            &["key `sms.max_parts`", "99999999999"],
        );
    }

    #[test]
    fn invalid_values_are_named() {
        check_error(
            "default_region = \"XX\"",
            &["key `default_region`: invalid value \"XX\"", "region"],
        );
        check_error(
            "own_number = \"hello, world\"",
            &["key `own_number`: invalid value \"hello, world\""],
        );
        check_error(
            "own_number = \"0151 2345678\"",
            &["key `own_number`", "no default region"],
        );
        check_error(
            "own_number = \"ACME\"",
            &["key `own_number`", "full phone number"],
        );
        check_error(
            "[relay]\nurl = \"http://relay\"",
            &["key `relay.url`: invalid value \"http://relay\"", "ws://"],
        );
        check_error("[relay]\nurl = \"ws://\"", &["key `relay.url`", "no host"]);
        check_error(
            "[relay]\nurl = \"wss://relay:http\"",
            &["key `relay.url`", "port"],
        );
        check_error(
            "[relay]\nurl = \"ws://re lay\"",
            &["key `relay.url`", "spaces"],
        );
        check_error(
            "[relay]\nfallback_timeout_s = 0",
            &["key `relay.fallback_timeout_s`: invalid value 0"],
        );
        check_error(
            "[sms]\nmax_parts = 0",
            &["key `sms.max_parts`: invalid value 0", "1 to 255"],
        );
        check_error(
            "[sms]\nmax_parts = 256",
            &["key `sms.max_parts`: invalid value 256"],
        );
        check_error(
            "[sms]\nmax_attempts = 0",
            &["key `sms.max_attempts`: invalid value 0"],
        );
        check_error(
            "[sms]\nsend_timeout_s = 0",
            &["key `sms.send_timeout_s`: invalid value 0", "1 to 600"],
        );
        check_error(
            "[sms]\nmax_text_chars = 0",
            &["key `sms.max_text_chars`: invalid value 0"],
        );
    }

    #[test]
    fn relay_urls() {
        for (url, ok) in [
            ("ws://127.0.0.1:7000", true),
            ("wss://relay.example.org", true),
            ("WSS://relay.example.org/path?x=1", true),
            ("ws://[::1]:7000/", true),
            ("ws://user@host:1", true),
            ("ws://[::1", false),
            ("ws://:7000", false),
            ("ws://host:99999", false),
            ("https://relay.example.org", false),
            ("relay.example.org", false),
        ] {
            assert_eq!(
                check_ws_url(url).is_ok(),
                ok,
                "{url}: {:?}",
                check_ws_url(url)
            );
        }
    }

    #[test]
    fn load_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.toml");
        assert_eq!(Config::load(&path, false).unwrap(), Config::default());
        let message = Config::load(&path, true).unwrap_err().to_string();
        assert!(
            message.starts_with(&path.display().to_string()),
            "{message}"
        );
        assert!(message.contains("cannot read"), "{message}");
    }

    #[test]
    fn load_reads_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[sms]\nmax_parts = 2\n").unwrap();
        assert_eq!(Config::load(&path, true).unwrap().sms.max_parts, 2);
        std::fs::write(&path, "[sms]\nmax_parts = true\n").unwrap();
        let message = Config::load(&path, false).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("{}:2:13: key `sms.max_parts`", path.display())),
            "{message}"
        );
        // A directory is not a missing file: an error even when not required.
        let message = Config::load(dir.path(), false).unwrap_err().to_string();
        assert!(message.contains("cannot read"), "{message}");
    }

    #[test]
    fn xdg_paths() {
        let home = Some(PathBuf::from("/home/u"));
        for (variable, home, fallback, expected) in [
            (Some("/x/conf"), home.clone(), ".config", "/x/conf/tandem"),
            (None, home.clone(), ".config", "/home/u/.config/tandem"),
            (
                Some("relative"),
                home.clone(),
                ".config",
                "/home/u/.config/tandem",
            ),
            (
                Some(""),
                home.clone(),
                ".local/share",
                "/home/u/.local/share/tandem",
            ),
            (None, None, ".local/share", ".local/share/tandem"),
        ] {
            assert_eq!(
                xdg_path(variable.map(Into::into), home, fallback),
                PathBuf::from(expected),
                "{variable:?}"
            );
        }
        assert!(default_config_path().ends_with("tandem/config.toml"));
        assert!(default_db_path().ends_with("tandem/messages.db"));
    }
}
