//! The configuration file: `Config::from_toml_str`, the TOML parse and the validation
//! behind `tandemd --config` (the file is the user's, but may be anything).
//!
//! Invariants: every error names the file; an accepted configuration is valid as the
//! module documents it (own number E.164, region known and upper-case, no blank url or
//! modem, values in range); and written back as TOML, it loads again unchanged.
#![no_main]

use std::fmt::Write;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tandem::config::Config;
use tandem::number::is_known_region;
use tandem::relay::protocol::is_e164;

const ORIGIN: &str = "/fuzz/config.toml";

fuzz_target!(|data: &[u8]| {
    // `Config::load` reads the file with `read_to_string`: UTF-8 only.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match Config::from_toml_str(text, Path::new(ORIGIN)) {
        Ok(config) => config,
        Err(err) => {
            let message = err.to_string();
            assert!(message.starts_with(ORIGIN), "{message}");
            return;
        }
    };

    if let Some(own) = &config.own_number {
        assert!(is_e164(own), "own_number {own:?} from {text:?}");
    }
    if let Some(region) = &config.default_region {
        assert!(is_known_region(region), "{region:?}");
        assert_eq!(region, &region.to_ascii_uppercase());
    }
    if let Some(url) = &config.relay.url {
        assert!(!url.trim().is_empty());
    }
    if let Some(modem) = &config.sms.modem {
        assert!(!modem.trim().is_empty());
    }
    assert_eq!(config.relay.code_pattern.matches("{code}").count(), 1);
    assert!(config.relay.fallback_timeout_s >= 1);
    assert!((1..=255).contains(&config.sms.max_parts));
    assert!(config.sms.max_attempts >= 1);
    assert!((1..=600).contains(&config.sms.send_timeout_s));
    assert!(config.sms.max_text_chars >= 1);

    let written = to_toml(&config);
    match Config::from_toml_str(&written, Path::new(ORIGIN)) {
        Ok(again) => assert_eq!(again, config, "{written}"),
        Err(err) => panic!("an accepted configuration does not load again: {err}\n{written}"),
    }
});

/// The configuration as a TOML file, every key written out.
fn to_toml(config: &Config) -> String {
    let mut out = String::new();
    if let Some(own) = &config.own_number {
        writeln!(out, "own_number = {}", quote(own)).unwrap();
    }
    if let Some(region) = &config.default_region {
        writeln!(out, "default_region = {}", quote(region)).unwrap();
    }
    let relay = &config.relay;
    out.push_str("[relay]\n");
    if let Some(url) = &relay.url {
        writeln!(out, "url = {}", quote(url)).unwrap();
    }
    writeln!(out, "fallback_timeout_s = {}", relay.fallback_timeout_s).unwrap();
    writeln!(out, "presence_refresh_s = {}", relay.presence_refresh_s).unwrap();
    writeln!(out, "code_pattern = {}", quote(&relay.code_pattern)).unwrap();
    let sms = &config.sms;
    out.push_str("[sms]\n");
    if let Some(modem) = &sms.modem {
        writeln!(out, "modem = {}", quote(modem)).unwrap();
    }
    writeln!(out, "delivery_reports = {}", sms.delivery_reports).unwrap();
    writeln!(out, "delete_received = {}", sms.delete_received).unwrap();
    writeln!(out, "delete_sent = {}", sms.delete_sent).unwrap();
    writeln!(out, "max_parts = {}", sms.max_parts).unwrap();
    writeln!(out, "max_attempts = {}", sms.max_attempts).unwrap();
    writeln!(out, "max_text_chars = {}", sms.max_text_chars).unwrap();
    writeln!(out, "send_timeout_s = {}", sms.send_timeout_s).unwrap();
    out.push_str("[notifications]\n");
    writeln!(out, "enabled = {}", config.notifications.enabled).unwrap();
    out
}

/// A TOML basic string: `"` and `\` escaped, control characters as `\uXXXX`.
fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => write!(out, "\\u{:04X}", u32::from(c)).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
