//! How many SMS parts a text needs (the `EstimateSms` method): GSM 03.38 7-bit default
//! alphabet with its extension table, else UCS-2.
//!
//! Owns: the character tables and the part-size rules (160/153 septets, 70/67 UTF-16
//! units). Must not encode or pack PDUs (ModemManager does that) and does no I/O.
//!
//! Written by hand on purpose. The crates looked at (2026): `sms_splitter` 0.1.9 is a
//! line-by-line port of a JavaScript splitter that panics through `unwrap`s, replaces
//! unknown characters with spaces and is carried by one author with no recent releases;
//! `gsm7-alt` 0.1.2 only maps characters and counts no parts;
//! `message_segment_calculator` is not in the crates.io index. The rules fit in a page,
//! and the tests below pin every boundary.
//!
//! Rules: a text made only of GSM default-alphabet characters is `gsm7`, where each
//! character is one septet and each extension-table character (`^ { } \ [ ] ~ | €` and
//! form feed) is an escape pair of two septets. One part holds 160 septets; a longer text
//! is split into parts of 153 (the rest carries the concatenation header), and an escape
//! pair is never split across two parts. Any other character makes the whole text `ucs2`:
//! 70 UTF-16 code units in one part, 67 per part when split, and a surrogate pair (most
//! emoji) is never split across parts. National language shift tables are not used:
//! ModemManager does not use them either.

/// Septets in a single-part GSM 7-bit message.
const GSM_SINGLE: u32 = 160;
/// Septets per part of a concatenated GSM 7-bit message.
const GSM_MULTI: u32 = 153;
/// UTF-16 code units in a single-part UCS-2 message.
const UCS2_SINGLE: u32 = 70;
/// UTF-16 code units per part of a concatenated UCS-2 message.
const UCS2_MULTI: u32 = 67;

/// The GSM 03.38 default alphabet (3GPP TS 23.038 6.2.1), without the escape code 0x1B.
const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
     ¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// The default extension table (6.2.1.1): each is sent as 0x1B plus one septet.
const GSM_EXTENSION: &str = "\u{c}^{}\\[~]|€";

/// The SMS data coding a text needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

impl Encoding {
    /// The spelling used on D-Bus: `gsm7` or `ucs2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gsm7 => "gsm7",
            Encoding::Ucs2 => "ucs2",
        }
    }
}

/// The answer of `EstimateSms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// Number of SMS parts, at least 1.
    pub segments: u32,
    pub encoding: Encoding,
    /// Room left in the last part: septets for GSM 7-bit, UTF-16 code units for UCS-2.
    pub remaining: u32,
}

/// How many SMS parts `text` needs, the encoding, and characters (septets for GSM 7-bit,
/// UTF-16 code units for UCS-2) left in the last part.
pub fn estimate(text: &str) -> Estimate {
    if text.chars().all(|c| gsm_septets(c).is_some()) {
        let costs = text.chars().filter_map(gsm_septets);
        let (segments, remaining) = pack(costs, GSM_SINGLE, GSM_MULTI);
        Estimate {
            segments,
            encoding: Encoding::Gsm7,
            remaining,
        }
    } else {
        // len_utf16 is 1 or 2, so the cast cannot truncate.
        let costs = text.chars().map(|c| c.len_utf16() as u32);
        let (segments, remaining) = pack(costs, UCS2_SINGLE, UCS2_MULTI);
        Estimate {
            segments,
            encoding: Encoding::Ucs2,
            remaining,
        }
    }
}

/// Septets `c` takes in GSM 7-bit, or `None` when it has no GSM 7-bit form.
fn gsm_septets(c: char) -> Option<u32> {
    if c.is_ascii_alphanumeric() || GSM_BASIC.contains(c) {
        Some(1)
    } else if GSM_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// Packs indivisible items of the given sizes into parts: everything in one part of
/// `single` when it fits, else parts of `multi` filled in order, an item that does not
/// fit in the room left starting the next part. Returns (parts, room left in the last).
fn pack(costs: impl Iterator<Item = u32> + Clone, single: u32, multi: u32) -> (u32, u32) {
    let total: u32 = costs.clone().sum();
    if total <= single {
        return (1, single - total);
    }
    let mut parts = 1;
    let mut used = 0;
    for cost in costs {
        if used + cost > multi {
            parts += 1;
            used = 0;
        }
        used += cost;
    }
    (parts, multi - used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Encoding::{Gsm7, Ucs2};

    #[track_caller]
    fn check(text: &str, segments: u32, encoding: Encoding, remaining: u32) {
        assert_eq!(
            estimate(text),
            Estimate {
                segments,
                encoding,
                remaining
            },
            "estimate of a text of {} chars starting {:?}",
            text.chars().count(),
            text.chars().take(12).collect::<String>()
        );
    }

    fn rep(s: &str, n: usize) -> String {
        s.repeat(n)
    }

    #[test]
    fn gsm_single_part() {
        check("", 1, Gsm7, 160);
        check("a", 1, Gsm7, 159);
        check("hello", 1, Gsm7, 155);
        check(&rep("a", 159), 1, Gsm7, 1);
        check(&rep("a", 160), 1, Gsm7, 0);
    }

    #[test]
    fn gsm_multipart() {
        check(&rep("a", 161), 2, Gsm7, 153 * 2 - 161);
        check(&rep("a", 153 * 2), 2, Gsm7, 0);
        check(&rep("a", 153 * 2 + 1), 3, Gsm7, 152);
        check(&rep("a", 153 * 3), 3, Gsm7, 0);
        check(&rep("a", 153 * 10), 10, Gsm7, 0);
        check(&rep("a", 153 * 10 + 1), 11, Gsm7, 152);
    }

    #[test]
    fn gsm_extension_counts_two_septets() {
        check("€", 1, Gsm7, 158);
        check("^{}\\[]~|€\u{c}", 1, Gsm7, 140);
        check(&rep("€", 80), 1, Gsm7, 0);
        check(&(rep("a", 159) + "€"), 2, Gsm7, 153 * 2 - 161);
        check(&(rep("a", 158) + "€"), 1, Gsm7, 0);
    }

    #[test]
    fn gsm_escape_pair_is_never_split() {
        // 152 septets, then an escape pair: it moves whole to the second part.
        check(&(rep("a", 152) + "[" + &rep("a", 10)), 2, Gsm7, 153 - 12);
        // 151 + 2 fills the first part exactly.
        check(&(rep("a", 151) + "[" + &rep("a", 10)), 2, Gsm7, 153 - 10);
        // Same at the second boundary: 153 + 152, then '€'.
        check(&(rep("a", 305) + "€"), 3, Gsm7, 151);
        check(&(rep("a", 304) + "€"), 2, Gsm7, 0);
        // Only escape pairs: 76 pairs fill 152 of each 153.
        check(&rep("{", 81), 2, Gsm7, 153 - 10);
        check(&rep("{", 152), 2, Gsm7, 1);
        check(&rep("{", 153), 3, Gsm7, 151);
    }

    #[test]
    fn gsm_basic_alphabet() {
        check("@£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ", 1, Gsm7, 160 - 29);
        check(" !\"#¤%&'()*+,-./:;<=>?¡ÄÖÑÜ§¿äöñüà", 1, Gsm7, 160 - 34);
        // CR and LF are in the default alphabet, one septet each.
        check("a\r\nb", 1, Gsm7, 156);
        check(&rep("\r\n", 80), 1, Gsm7, 0);
        check(&(rep("\r\n", 80) + "\n"), 2, Gsm7, 145);
    }

    #[test]
    fn outside_gsm_is_ucs2() {
        check("ç", 1, Ucs2, 69); // only capital Ç is in the GSM alphabet
        check("`", 1, Ucs2, 69);
        check("\t", 1, Ucs2, 69);
        check("Привет", 1, Ucs2, 64);
        check("naïve", 1, Ucs2, 65);
        check("日本", 1, Ucs2, 68);
        // One non-GSM character makes the whole text UCS-2, extension ones count 1.
        check(&(rep("a", 100) + "ç"), 2, Ucs2, 67 * 2 - 101);
        check("€ç", 1, Ucs2, 68);
    }

    #[test]
    fn ucs2_boundaries() {
        check(&rep("ж", 69), 1, Ucs2, 1);
        check(&rep("ж", 70), 1, Ucs2, 0);
        check(&rep("ж", 71), 2, Ucs2, 67 * 2 - 71);
        check(&rep("ж", 67 * 2), 2, Ucs2, 0);
        check(&rep("ж", 67 * 2 + 1), 3, Ucs2, 66);
        check(&rep("ж", 67 * 3), 3, Ucs2, 0);
    }

    #[test]
    fn emoji_is_a_surrogate_pair() {
        check("😀", 1, Ucs2, 68);
        check(&rep("😀", 35), 1, Ucs2, 0);
        // 33 pairs fill 66 of the first part's 67 units.
        check(&rep("😀", 36), 2, Ucs2, 67 - 6);
        check(&(rep("ж", 69) + "😀"), 2, Ucs2, 67 - 4);
        check(&(rep("ж", 68) + "😀"), 1, Ucs2, 0);
    }

    #[test]
    fn surrogate_pair_is_never_split() {
        // 66 units, then a pair: it moves whole to the second part.
        check(&(rep("ж", 66) + "😀" + &rep("ж", 10)), 2, Ucs2, 67 - 12);
        // 65 + 2 fills the first part exactly.
        check(&(rep("ж", 65) + "😀" + &rep("ж", 10)), 2, Ucs2, 67 - 10);
        // Only pairs: 33 per part (66 units), one unit left empty in each.
        check(&rep("😀", 66), 2, Ucs2, 1);
        check(&rep("😀", 67), 3, Ucs2, 65);
        // Second boundary: 67 + 66 units, then a pair.
        check(&(rep("ж", 133) + "😀"), 3, Ucs2, 65);
    }

    #[test]
    fn tables_are_complete_and_disjoint() {
        // 128 code points minus the escape 0x1B; 10 extension characters.
        let basic: std::collections::HashSet<char> = GSM_BASIC.chars().collect();
        assert_eq!(GSM_BASIC.chars().count(), 127);
        assert_eq!(basic.len(), 127, "duplicate in GSM_BASIC");
        assert_eq!(GSM_EXTENSION.chars().count(), 10);
        assert!(GSM_EXTENSION.chars().all(|c| !basic.contains(&c)));
    }

    #[test]
    fn encoding_spellings() {
        assert_eq!(Gsm7.as_str(), "gsm7");
        assert_eq!(Ucs2.as_str(), "ucs2");
    }
}
