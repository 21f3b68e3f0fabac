//! SMS segmentation (`sms_text::estimate`, behind `EstimateSms`, the `sms-parts` of
//! every message and the `max_parts` refusal): any text a caller or peer sends.
//!
//! Invariants: at least one part; the encoding is GSM 7-bit exactly when every character
//! has a GSM 7-bit form; the parts and the room left agree with the text's cost (160/70
//! in one part, else 153/67 per part, an escape pair or surrogate pair never split, so a
//! full part wastes at most one unit); a longer text never needs fewer parts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::sms_text::{Encoding, estimate};

fuzz_target!(|data: &[u8]| {
    // D-Bus strings and relay texts are UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let e = estimate(text);
    assert!(e.segments >= 1, "{text:?}: {e:?}");

    // Each character alone: GSM 7-bit (costing 1 or 2 septets) or not.
    let gsm: Vec<Option<u32>> = text
        .chars()
        .map(|c| {
            let one = estimate(c.encode_utf8(&mut [0; 4]));
            assert_eq!(one.segments, 1, "{c:?}: {one:?}");
            match one.encoding {
                Encoding::Gsm7 => Some(160 - one.remaining),
                Encoding::Ucs2 => {
                    assert_eq!(70 - one.remaining, c.len_utf16() as u32, "{c:?}: {one:?}");
                    None
                }
            }
        })
        .collect();
    let all_gsm = gsm.iter().all(Option::is_some);
    assert_eq!(e.encoding == Encoding::Gsm7, all_gsm, "{text:?}: {e:?}");
    for (c, cost) in text.chars().zip(&gsm) {
        if let Some(cost) = cost {
            assert!(matches!(cost, 1 | 2), "{c:?} costs {cost}");
        }
    }

    let (cost, single, multi): (u64, u64, u64) = if all_gsm {
        (gsm.iter().map(|c| u64::from(c.unwrap())).sum(), 160, 153)
    } else {
        (text.encode_utf16().count() as u64, 70, 67)
    };
    let parts = u64::from(e.segments);
    let remaining = u64::from(e.remaining);
    if cost <= single {
        assert_eq!(parts, 1, "{text:?}: {e:?}");
        assert_eq!(remaining, single - cost, "{text:?}: {e:?}");
    } else {
        assert!(parts >= 2, "{text:?}: {e:?}");
        // The last part holds something; every other part is full but for at most one
        // unit left over by an indivisible pair.
        assert!(remaining < multi, "{text:?}: {e:?}");
        let last = multi - remaining;
        assert!(cost <= (parts - 1) * multi + last, "{text:?}: {e:?}");
        assert!(cost >= (parts - 1) * (multi - 1) + last, "{text:?}: {e:?}");
    }

    // Removing the last character never needs more parts.
    let mut shorter = text.chars();
    if shorter.next_back().is_some() {
        let before = estimate(shorter.as_str());
        assert!(
            before.segments <= e.segments,
            "{text:?}: {before:?} then {e:?}"
        );
    }
});
