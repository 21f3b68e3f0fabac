//! Phone-number normalisation (`number::normalize`, `normalize_recipient`): what the API
//! takes from callers and the modem path takes from incoming SMS senders, with each
//! default region a configuration can hold.
//!
//! Input: the first byte picks the default region (none, a list of real ones, or the
//! next two bytes as a region code), the rest is the number as written.
//!
//! Invariants: a normalised number is a fixed point (normalising it again, with the same
//! region or none, gives it back); one that starts with `+` is E.164 as the relay accepts
//! it; a recipient is a number or a short code; error messages stay short.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::number::{MAX_INPUT_BYTES, is_known_region, normalize, normalize_recipient};
use tandem::relay::protocol::is_e164;

/// Regions with different national and international prefixes and number lengths.
const REGIONS: &[&str] = &[
    "US", "DE", "GB", "FR", "IT", "IN", "BR", "JP", "CN", "RU", "AU", "CH", "AT", "SE", "AR", "MX",
    "NL", "ES", "KR", "ZA", "NG", "SG", "HK", "IL", "JM", "de",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let pick = usize::from(pick);
    let (region, rest): (Option<String>, &[u8]) = if pick == 0 {
        (None, rest)
    } else if pick <= REGIONS.len() {
        (Some(REGIONS[pick - 1].to_owned()), rest)
    } else if rest.len() >= 2 {
        (
            Some(String::from_utf8_lossy(&rest[..2]).into_owned()),
            &rest[2..],
        )
    } else {
        return;
    };
    // D-Bus strings are UTF-8.
    let Ok(input) = std::str::from_utf8(rest) else {
        return;
    };
    let region = region.as_deref();
    if let Some(region) = region {
        let _ = is_known_region(region);
    }

    let normalized = normalize(input, region);
    let recipient = normalize_recipient(input, region);
    match &normalized {
        Ok(number) => {
            assert!(number.len() <= MAX_INPUT_BYTES, "{input:?} -> {number:?}");
            assert_eq!(
                normalize(number, region).as_ref(),
                Ok(number),
                "not a fixed point: {input:?} ({region:?}) -> {number:?}"
            );
            if number.starts_with('+') {
                assert!(
                    is_e164(number),
                    "the relay would refuse {number:?}, from {input:?} ({region:?})"
                );
                assert_eq!(
                    normalize(number, None).as_ref(),
                    Ok(number),
                    "an E.164 number needs no region: {number:?}"
                );
            }
            let dialable = number.starts_with('+') || number.bytes().all(|b| b.is_ascii_digit());
            match &recipient {
                Ok(r) => assert!(dialable && r == number, "{input:?}: {r:?} vs {number:?}"),
                Err(_) => assert!(!dialable, "{input:?}: {number:?} refused as recipient"),
            }
        }
        Err(err) => {
            assert!(
                recipient.is_err(),
                "{input:?}: recipient accepted, number refused"
            );
            // Errors become D-Bus error messages: bounded whatever the input.
            let message = err.to_string();
            assert!(message.len() <= 1024, "{} bytes: {message}", message.len());
        }
    }
});
