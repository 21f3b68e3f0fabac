//! Phone numbers: turns any common written form into E.164 ("+15551234567"), and keeps
//! short codes ("12345") and alphanumeric senders ("ACME") verbatim.
//!
//! Owns: the rules for what counts as a number, a short code or a sender name, and the
//! checks that make a number *possible* (right length for its country code). It does
//! not decide whether a number is *valid* (assigned by a numbering plan): fictional
//! numbers such as +15551234567 must pass. No I/O, no state.
//!
//! The `phonenumber` crate (0.3.10) reads national numbers (national prefixes, carrier
//! codes, a region's rules) and gives the metadata, with two things done here instead,
//! because the crate gets them wrong:
//! - A number that carries its own country code ("+49 …", or an international call
//!   prefix such as "00" or "011") is read here, not by the crate: given a region, the
//!   crate strips that region's national prefix from the foreign number ("+49
//!   1512345678" with region US becomes +49512345678), and even without one it drops
//!   what it takes for a carrier-selection code ("+86 114191256356" became +861256356)
//!   or a national prefix that is part of the number ("+7 812 …" lost its 8). Here the
//!   digits after the country code are kept, less a national prefix written there ("+49
//!   (0)151 …") by libphonenumber's rule, so that a number in E.164 is its own normal
//!   form.
//! - The "possible number" length check: the crate has no public one, and its general
//!   descriptors carry no lengths. We take the union of the per-type possible lengths of
//!   the main region of the country code, as libphonenumber does when it builds its
//!   metadata. Lengths that are only dialable locally (US 7-digit numbers) are refused,
//!   since they cannot be written in E.164, and so are those too long for E.164's 15
//!   digits with the country code (German fixed lines of 14 and 15 digits).

use phonenumber::Mode;
use phonenumber::country::Id;
use phonenumber::metadata::{DATABASE, Descriptor, Metadata};

/// Longest alphanumeric sender ID GSM allows (TP-OA, 11 characters).
const MAX_SENDER_CHARS: usize = 11;
/// Most digits of an E.164 number, country code included (ITU-T E.164).
const MAX_E164_DIGITS: usize = 15;
/// Longest digit string treated as a short code.
const MAX_SHORT_CODE_DIGITS: usize = 6;
/// Longest input looked at, in bytes: an E.164 number has at most 16 characters, and a
/// written one with spaces, parentheses and an international prefix a few more.
pub const MAX_INPUT_BYTES: usize = 64;

/// Why an input is not a phone number, a short code or a sender name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberError {
    #[error("empty phone number")]
    Empty,
    #[error("a phone number of {bytes} bytes is longer than the limit of {max}")]
    TooLong { bytes: usize, max: usize },
    #[error("{input:?} is a sender name, not a number a message can be sent to")]
    NotDialable { input: String },
    #[error("{input:?} is not a phone number: unexpected character {ch:?}")]
    InvalidCharacter { input: String, ch: char },
    #[error("{input:?} is not a phone number: '+' may only start it")]
    MisplacedPlus { input: String },
    #[error("{input:?} has no country code (+…) and no default region is configured")]
    NoRegion { input: String },
    #[error("unknown region {region:?} (expected a two-letter code such as \"US\" or \"DE\")")]
    UnknownRegion { region: String },
    #[error("{input:?} is not a phone number: {reason}")]
    Unparsable { input: String, reason: String },
    #[error(
        "{input:?} is not a possible phone number: {digits} digits after country code +{code}, \
         expected {expected}"
    )]
    WrongLength {
        input: String,
        code: u16,
        digits: usize,
        expected: String,
    },
}

/// Whether `number` is in E.164 form: `+`, a non-zero digit, then 1 to 14 more digits.
/// It is the form [`normalize`] gives every phone number (short codes and sender names
/// never pass), and the only one the relay accepts.
pub fn is_e164(number: &str) -> bool {
    let Some(digits) = number.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// Normalises to E.164 ("+15551234567"). Accepts any common written form ("+1 555 123-4567",
/// "(555) 123-4567" and "0151 2345678" with a default region, "00491512345678").
/// Short codes (digits only, up to 6 digits, e.g. "12345") and alphanumeric senders
/// (e.g. "ACME", "Vodafone", up to 11 chars, letters/digits/space) are kept verbatim.
/// Does not require the number to be assigned (fictional +1555… numbers pass); rejects
/// what is not a possible number (wrong length, garbage, empty, letters mixed into
/// digits, a national number with no default region).
///
/// Details: surrounding whitespace is trimmed. Digits may be separated by spaces, `-`,
/// `.`, `/` and parentheses. An international prefix is recognised as the default
/// region's (011 for US, 00 for DE), or "00" when there is no default region. A sender
/// name must contain a letter and no more digits than letters ("1und1", "O2"); more
/// digits than letters is a mistyped number ("555123a") and is refused.
pub fn normalize(input: &str, default_region: Option<&str>) -> Result<String, NumberError> {
    if input.len() > MAX_INPUT_BYTES {
        return Err(NumberError::TooLong {
            bytes: input.len(),
            max: MAX_INPUT_BYTES,
        });
    }
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(NumberError::Empty);
    }
    if trimmed.len() <= MAX_SHORT_CODE_DIGITS && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(trimmed.to_owned());
    }
    if is_sender_name(trimmed) {
        return Ok(trimmed.to_owned());
    }

    let (plus, digits) = dialled_digits(trimmed)?;
    let region = default_region.map(region_metadata).transpose()?;

    // Numbers that carry their own country code are read here, without the region or
    // the crate (see the module doc); only national numbers go to the crate.
    let international = if plus {
        Some(digits.as_str())
    } else {
        match region {
            Some((_, meta)) => strip_international_prefix(meta, &digits),
            None => digits.strip_prefix("00"),
        }
    };
    let unparsable = |reason: String| NumberError::Unparsable {
        input: trimmed.to_owned(),
        reason,
    };
    let (code, nsn) = match (international, region) {
        (Some(rest), _) => {
            let (code, written) = split_country_code(rest)
                .ok_or_else(|| unparsable("invalid country code".to_owned()))?;
            (code, national_significant(code, written).to_owned())
        }
        (None, Some((id, _))) => {
            let parsed =
                phonenumber::parse(Some(id), &digits).map_err(|err| unparsable(err.to_string()))?;
            let code = parsed.code().value();
            // The crate may take off a national prefix that is part of the number too
            // ("8 812 …" in RU lost both 8s). When what it left is impossible, the
            // digits less a national prefix by the rule below.
            let e164 = parsed.format().mode(Mode::E164).to_string();
            let read = e164.get(1 + code.to_string().len()..).unwrap_or_default();
            let read = national_significant(code, read);
            let ours = national_significant(code, &digits);
            if !is_possible_length(code, read.len()) && is_possible_length(code, ours.len()) {
                (code, ours.to_owned())
            } else {
                (code, read.to_owned())
            }
        }
        (None, None) => {
            return Err(NumberError::NoRegion {
                input: trimmed.to_owned(),
            });
        }
    };
    check_length(trimmed, code, nsn.len())?;
    Ok(format!("+{code}{nsn}"))
}

/// The country code `digits` start with, and the digits after it. Country codes are a
/// prefix code (no code starts another), of 1 to 3 digits.
fn split_country_code(digits: &str) -> Option<(u16, &str)> {
    (1..=3).find_map(|n| {
        let (code, rest) = digits.split_at_checked(n)?;
        let code: u16 = code.parse().ok()?;
        DATABASE
            .by_code(&code)
            .is_some_and(|metas| !metas.is_empty())
            .then_some((code, rest))
    })
}

/// The national significant number of a number written with its country code `code`,
/// from the digits written after the code.
///
/// A national prefix written there ("+49 (0)151 …", "+44 (0) 7912 …") is dropped, as
/// libphonenumber does it: when what is left has a possible length, unless the digits
/// match a number type with it and not without (St Petersburg's "+7 812 …", 8 being also
/// Russia's national prefix). Nothing else is: the crate also takes what it reads as a
/// carrier-selection code off such a number (it checks the rest on the unstripped
/// digits), which made "+86 114191256356" into +861256356, another number. Dropping
/// repeats until it stops, so that the result, given again, is its own normal form.
fn national_significant(code: u16, written: &str) -> &str {
    let metas = DATABASE.by_code(&code).unwrap_or_default();
    let matches_a_type = |nsn: &str| {
        metas
            .iter()
            .any(|meta| type_descriptors(meta).any(|desc| desc.is_match(nsn)))
    };
    let mut nsn = written;
    loop {
        let without_prefix = metas
            .iter()
            .filter_map(|meta| meta.national_prefix())
            .find_map(|prefix| nsn.strip_prefix(prefix).filter(|rest| !rest.is_empty()));
        match without_prefix {
            Some(rest)
                if is_possible_length(code, rest.len())
                    && (!matches_a_type(nsn) || matches_a_type(rest)) =>
            {
                nsn = rest
            }
            _ => return nsn,
        }
    }
}

/// Whether a national significant number of `nsn_len` digits is possible after `code`.
fn is_possible_length(code: u16, nsn_len: usize) -> bool {
    possible_lengths(code)
        .iter()
        .any(|&len| usize::from(len) == nsn_len)
}

/// The lengths a national significant number may have after `code`, ascending: those of
/// the code's main region (as in libphonenumber's isPossibleNumber) that fit in E.164.
fn possible_lengths(code: u16) -> Vec<u16> {
    let mut lengths: Vec<u16> = DATABASE
        .by_code(&code)
        .unwrap_or_default()
        .into_iter()
        .take(1)
        .flat_map(|meta| {
            type_descriptors(meta)
                .flat_map(|desc| desc.possible_length().iter().copied())
                .collect::<Vec<_>>()
        })
        .collect();
    lengths.sort_unstable();
    lengths.dedup();
    // The metadata allows national numbers that E.164 cannot hold with their country
    // code (German fixed lines of 14 and 15 digits): such a result would not be E.164,
    // and the relay would refuse it.
    let code_digits = code.to_string().len();
    lengths.retain(|&len| usize::from(len) + code_digits <= MAX_E164_DIGITS);
    lengths
}

/// The descriptors of each number type of a region (fixed line, mobile, ...).
fn type_descriptors(meta: &Metadata) -> impl Iterator<Item = &Descriptor> {
    let d = meta.descriptors();
    [
        d.fixed_line(),
        d.mobile(),
        d.toll_free(),
        d.premium_rate(),
        d.shared_cost(),
        d.personal_number(),
        d.voip(),
        d.pager(),
        d.uan(),
        d.voicemail(),
    ]
    .into_iter()
    .flatten()
}

/// Like [`normalize`], for a number to send to: E.164 or a short code. A sender name
/// ("Bank", "DHL Express") is `NotDialable`: networks deliver messages *from* such names,
/// but nothing can be sent *to* one.
pub fn normalize_recipient(
    input: &str,
    default_region: Option<&str>,
) -> Result<String, NumberError> {
    let number = normalize(input, default_region)?;
    if number.starts_with('+') || number.bytes().all(|b| b.is_ascii_digit()) {
        Ok(number)
    } else {
        Err(NumberError::NotDialable { input: number })
    }
}

/// Checks a region code ("US", "DE") is known to phonenumber (config validation).
/// Case-insensitive, like [`normalize`]'s `default_region`.
pub fn is_known_region(code: &str) -> bool {
    region_metadata(code).is_ok()
}

/// A two-letter region and its metadata, case-insensitively. Excludes "001", the
/// pseudo-region of non-geographic codes, which is not a region anyone lives in.
fn region_metadata(code: &str) -> Result<(Id, &'static Metadata), NumberError> {
    let upper = code.trim().to_ascii_uppercase();
    upper
        .parse::<Id>()
        .ok()
        .zip(DATABASE.by_id(upper.as_str()))
        .ok_or_else(|| NumberError::UnknownRegion {
            region: code.to_owned(),
        })
}

/// A GSM alphanumeric sender: letters, digits and spaces, at least one letter and no
/// more digits than letters, at most 11 characters.
fn is_sender_name(text: &str) -> bool {
    let mut letters = 0usize;
    let mut digits = 0usize;
    for ch in text.chars() {
        if ch.is_alphabetic() {
            letters += 1;
        } else if ch.is_ascii_digit() {
            digits += 1;
        } else if ch != ' ' {
            return false;
        }
    }
    letters > 0 && digits <= letters && text.chars().count() <= MAX_SENDER_CHARS
}

/// Splits a written number into "started with +" and its digits, refusing anything but
/// digits and the usual separators.
fn dialled_digits(text: &str) -> Result<(bool, String), NumberError> {
    let mut plus = false;
    let mut digits = String::with_capacity(text.len());
    for (index, ch) in text.char_indices() {
        match ch {
            '0'..='9' => digits.push(ch),
            '+' if index == 0 => plus = true,
            '+' => {
                return Err(NumberError::MisplacedPlus {
                    input: text.to_owned(),
                });
            }
            '-' | '.' | '/' | '(' | ')' | '\u{2010}'..='\u{2015}' => {}
            c if c.is_whitespace() => {}
            c => {
                return Err(NumberError::InvalidCharacter {
                    input: text.to_owned(),
                    ch: c,
                });
            }
        }
    }
    Ok((plus, digits))
}

/// The digits after the region's international call prefix, if they start with it.
fn strip_international_prefix<'a>(meta: &Metadata, digits: &'a str) -> Option<&'a str> {
    let prefix = meta.international_prefix()?;
    let found = prefix.find(digits)?;
    (found.start() == 0 && found.end() > 0).then(|| &digits[found.end()..])
}

/// Refuses a national significant number whose length no number type of the country
/// code has, or that is too long for E.164 with its country code.
fn check_length(input: &str, code: u16, nsn_len: usize) -> Result<(), NumberError> {
    let lengths = possible_lengths(code);
    if lengths.iter().any(|&len| usize::from(len) == nsn_len) {
        return Ok(());
    }
    let expected = match lengths.as_slice() {
        [] => "none (no metadata for this country code)".to_owned(),
        [one] => one.to_string(),
        [first, .., last] if usize::from(last - first) + 1 == lengths.len() => {
            format!("{first} to {last}")
        }
        many => many
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    };
    Err(NumberError::WrongLength {
        input: input.to_owned(),
        code,
        digits: nsn_len,
        expected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, region: Option<&str>, expected: Result<&str, &str>) {
        let got = normalize(input, region);
        match (&got, expected) {
            (Ok(value), Ok(want)) => assert_eq!(value, want, "normalize({input:?}, {region:?})"),
            (Err(err), Err(want)) => {
                let message = err.to_string();
                assert!(
                    message.contains(want),
                    "normalize({input:?}, {region:?}): error {message:?} lacks {want:?}"
                );
            }
            _ => panic!("normalize({input:?}, {region:?}) = {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn international_forms() {
        check("+15551234567", None, Ok("+15551234567"));
        check("+15550001111", None, Ok("+15550001111"));
        check("+1 555 123-4567", None, Ok("+15551234567"));
        check("+1 (555) 123-4567", None, Ok("+15551234567"));
        check("+1.555.123.4567", None, Ok("+15551234567"));
        check("  +1 555 123 4567\t", None, Ok("+15551234567"));
        check("+49 151 2345678", None, Ok("+491512345678"));
        check("+49 (0)151 2345678", None, Ok("+491512345678"));
        check("+44 (0) 7912 345678", None, Ok("+447912345678"));
        // Italian numbers keep their leading zero after the country code.
        check("+39 02 3661 8300", None, Ok("+390236618300"));
        check("+33 6 12 34 56 78", None, Ok("+33612345678"));
        check("+800 1234 5678", None, Ok("+80012345678"));
    }

    #[test]
    fn international_number_ignores_the_default_region() {
        // The crate alone would strip the region's national prefix from these.
        check("+49 1512345678", Some("US"), Ok("+491512345678"));
        check("+39 02 3661 8300", Some("DE"), Ok("+390236618300"));
        check("+15551234567", Some("DE"), Ok("+15551234567"));
    }

    #[test]
    fn international_call_prefix() {
        check("00491512345678", None, Ok("+491512345678"));
        check("00 49 151 2345678", Some("DE"), Ok("+491512345678"));
        check("011 49 1512345678", Some("US"), Ok("+491512345678"));
        check("011 39 02 3661 8300", Some("US"), Ok("+390236618300"));
        check("0015551234567", Some("de"), Ok("+15551234567"));
    }

    #[test]
    fn national_forms_with_region() {
        check("(555) 123-4567", Some("US"), Ok("+15551234567"));
        check("555-123-4567", Some("US"), Ok("+15551234567"));
        check("1 555 123 4567", Some("US"), Ok("+15551234567"));
        check("5550001111", Some("us"), Ok("+15550001111"));
        check("0151 2345678", Some("DE"), Ok("+491512345678"));
        check("0151/2345678", Some("DE"), Ok("+491512345678"));
        check("030 123456", Some("DE"), Ok("+4930123456"));
        check("07912 345678", Some("GB"), Ok("+447912345678"));
        check("06 12 34 56 78", Some("FR"), Ok("+33612345678"));
    }

    #[test]
    fn short_codes_and_senders_are_verbatim() {
        check("12345", None, Ok("12345"));
        check("112", None, Ok("112"));
        check("7", Some("DE"), Ok("7"));
        check("123456", Some("US"), Ok("123456"));
        check(" 33333 ", None, Ok("33333"));
        check("ACME", None, Ok("ACME"));
        check("Vodafone", Some("DE"), Ok("Vodafone"));
        check("1und1", None, Ok("1und1"));
        check("O2", None, Ok("O2"));
        check("DHL Express", None, Ok("DHL Express"));
        check("Müller", None, Ok("Müller"));
    }

    #[test]
    fn recipients_are_numbers_or_short_codes() {
        for (input, want) in [
            ("+1 555 123 4567", Ok("+15551234567")),
            ("(555) 123-4567", Ok("+15551234567")),
            ("12345", Ok("12345")),
            (" 112 ", Ok("112")),
            ("Bank", Err("\"Bank\" is a sender name")),
            ("DHL Express", Err("sender name")),
            ("O2", Err("sender name")),
            ("", Err("empty")),
            ("hello, world", Err("unexpected character")),
        ] {
            let got = normalize_recipient(input, Some("US"));
            match (&got, want) {
                (Ok(value), Ok(want)) => assert_eq!(value, want, "{input:?}"),
                (Err(err), Err(want)) => {
                    assert!(err.to_string().contains(want), "{input:?}: {err}")
                }
                _ => panic!("{input:?}: {got:?}, expected {want:?}"),
            }
        }
    }

    #[test]
    fn long_inputs_are_refused_unread() {
        let at_limit = format!("+1 555 123 4567{}", " ".repeat(MAX_INPUT_BYTES - 15));
        assert_eq!(at_limit.len(), MAX_INPUT_BYTES);
        check(&at_limit, None, Ok("+15551234567"));
        let over = format!("{at_limit} ");
        check(&over, None, Err("65 bytes is longer than the limit of 64"));
        // The message does not repeat the input.
        let huge = "9".repeat(1_000_000);
        let err = normalize(&huge, Some("US")).expect_err("too long");
        assert!(err.to_string().len() < 100, "{err}");
        assert!(matches!(
            normalize_recipient(&huge, None),
            Err(NumberError::TooLong { .. })
        ));
    }

    #[test]
    fn rejects_garbage() {
        check("", None, Err("empty"));
        check("   ", Some("US"), Err("empty"));
        check("+", None, Err("not a phone number"));
        check("hello, world", None, Err("unexpected character 'h'"));
        check("ACME Corporation", None, Err("unexpected character"));
        check("+1555123456a", None, Err("unexpected character 'a'"));
        check("555123a", Some("US"), Err("unexpected character 'a'"));
        check("+1-800-FLOWERS", None, Err("unexpected character 'F'"));
        check(
            "+1 555 123 4567 ext 22",
            None,
            Err("unexpected character 'e'"),
        );
        check("1+5551234567", None, Err("'+' may only start it"));
        check("++15551234567", None, Err("'+' may only start it"));
        check("tel:+15551234567", None, Err("unexpected character 't'"));
    }

    #[test]
    fn rejects_impossible_lengths() {
        check(
            "+1 555 123 456",
            None,
            Err("9 digits after country code +1, expected 10"),
        );
        check(
            "+1 555 123 45678",
            None,
            Err("11 digits after country code +1"),
        );
        check("+447912345678999", None, Err("after country code +44"));
        check("+49 12", None, Err("+49"));
        // A US 7-digit local number cannot be written in E.164.
        check(
            "555-1234",
            Some("US"),
            Err("7 digits after country code +1"),
        );
        check("0049 12", Some("DE"), Err("+49"));
        check("+999 1234567", None, Err("invalid country code"));
        check("+12345", None, Err("4 digits after country code +1"));
    }

    #[test]
    fn a_number_with_its_country_code_keeps_its_digits() {
        // Found by fuzzing (fuzz/corpus/number/cn-carrier-code): the crate took "11419"
        // for a carrier-selection code and dropped it, so the E.164 form of this number
        // normalised to another one.
        check("011 4 191256356", Some("CN"), Ok("+86114191256356"));
        check("+86114191256356", None, Ok("+86114191256356"));
        check("+86 114191256356", Some("CN"), Ok("+86114191256356"));
        check("0086114191256356", Some("DE"), Ok("+86114191256356"));
        // A national prefix written after the country code still goes.
        check("+49 (0)151 2345678", None, Ok("+491512345678"));
        check("+44 (0) 7912 345678", Some("US"), Ok("+447912345678"));
        check("+1 1 555 123 4567", None, Ok("+15551234567"));
        // ... but not when it is part of the number: St Petersburg is +7 812 (8 is
        // Russia's national prefix), which the crate shortened to 9 digits and refused.
        check("+7 812 123 45 67", None, Ok("+78121234567"));
        check("8 812 123 45 67", Some("RU"), Ok("+78121234567"));
        // A result is its own normal form (the fuzzer's cases, fuzz/corpus/number/).
        for input in [
            "+8200003244  1638",
            "+35 3000 2345678",
            "011 4 191256356",
            "+49 0 0151 2345678",
            "8 888 22222228",
            " 11 4 191256506",
        ] {
            for region in [None, Some("CN"), Some("DE"), Some("RU")] {
                if let Ok(number) = normalize(input, region) {
                    check(&number, None, Ok(&number));
                    check(&number, region, Ok(&number));
                }
            }
        }
        // E.164 in, the same out.
        for input in [
            "+86114191256356",
            "+78121234567",
            "+491512345678",
            "+390236618300",
        ] {
            check(input, None, Ok(input));
            check(input, Some("RU"), Ok(input));
        }
    }

    #[test]
    fn results_fit_in_e164() {
        // Found by fuzzing (fuzz/corpus/number/de-16-digits): the metadata's German fixed
        // lines go up to 15 national digits, 17 with +49, which E.164 cannot hold.
        check(
            "102/91353/918508",
            Some("DE"),
            Err("14 digits after country code +49, expected"),
        );
        check(
            "+49 10291353918508",
            None,
            Err("14 digits after country code +49"),
        );
        check(
            "+49 102913539185089",
            None,
            Err("15 digits after country code +49"),
        );
        // 13 national digits, 15 in all: the longest a German number can be.
        check("+49 30 12345678901", None, Ok("+493012345678901"));
        check("030 12345678901", Some("DE"), Ok("+493012345678901"));
    }

    #[test]
    fn national_number_needs_a_region() {
        check("(555) 123-4567", None, Err("no default region"));
        check("0151 2345678", None, Err("no default region"));
        check("1234567", None, Err("no default region"));
    }

    #[test]
    fn rejects_unknown_default_region() {
        check("0151 2345678", Some("XX"), Err("unknown region \"XX\""));
        check("0151 2345678", Some("001"), Err("unknown region"));
        check("0151 2345678", Some(""), Err("unknown region"));
    }

    #[test]
    fn known_regions() {
        for (code, known) in [
            ("US", true),
            ("DE", true),
            ("de", true),
            ("GB", true),
            ("UK", false),
            ("XX", false),
            ("001", false),
            ("", false),
            ("USA", false),
        ] {
            assert_eq!(is_known_region(code), known, "is_known_region({code:?})");
        }
    }
}
