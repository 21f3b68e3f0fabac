//! One contact's vCard, as Evolution Data Server sends it (vCard 3.0, also 2.1 and 4.0
//! forms), read into what the daemon uses: its UID, the name to show, its telephone
//! numbers as written, and its photo.
//!
//! Content lines are unfolded and split here (RFC 6350 3.2/3.3: folding, parameters,
//! quoted parameter values, vCard 2.1's bare parameters); of them it reads the few
//! properties it needs: `UID`, `FN` (else
//! `N`, else `ORG`) with vCard's text escapes undone, every `TEL` (a `tel:` URI too), and
//! `PHOTO` as a `file://` URI or inline data (vCard 3.0's `ENCODING=b`, vCard 4.0's
//! `data:` URI), kept only when it is a PNG, JPEG, GIF or WebP image. Pure: no I/O.

use std::path::PathBuf;

use super::{MAX_NAME_CHARS, MAX_NUMBERS_PER_CONTACT, MAX_PHOTO_BYTES, MAX_VCARD_BYTES};

/// What the daemon keeps of one vCard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Card {
    pub(super) uid: String,
    /// Never empty; at most [`MAX_NAME_CHARS`] characters, on one line.
    pub(super) name: String,
    /// `TEL` values as written (unescaped, without `tel:`), at most
    /// [`MAX_NUMBERS_PER_CONTACT`].
    pub(super) numbers: Vec<String>,
    pub(super) photo: Option<Photo>,
}

/// A contact's photo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Photo {
    /// A local file the address book keeps (a `file://` URI).
    File(PathBuf),
    /// The image itself, at most [`MAX_PHOTO_BYTES`], with its file extension.
    Inline {
        bytes: Vec<u8>,
        extension: &'static str,
    },
}

/// Why a vCard was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum CardError {
    #[error("a vCard of {0} bytes is larger than the limit of {MAX_VCARD_BYTES}")]
    TooLarge(usize),
    #[error("not a vCard: {0}")]
    Unparsable(String),
    #[error("a vCard without a UID")]
    NoUid,
    #[error("a vCard without a name (FN, N or ORG)")]
    NoName,
}

/// One content line: its name (upper case, without a group), parameters (names upper
/// case, values unquoted; a bare vCard 2.1 parameter has no values) and raw value.
struct Prop {
    name: String,
    params: Vec<(String, Vec<String>)>,
    value: String,
}

impl Prop {
    /// Whether parameter `key` has `value` (case-insensitive), also as vCard 2.1's bare
    /// parameter (`PHOTO;JPEG;ENCODING=BASE64`).
    fn has(&self, key: &str, value: &str) -> bool {
        self.params.iter().any(|(k, values)| {
            (k == key && values.iter().any(|v| v.eq_ignore_ascii_case(value)))
                || (k.eq_ignore_ascii_case(value) && values.is_empty())
        })
    }

    /// A content line (`[group.]NAME *(;PARAM[=VALUE[,VALUE]]):value`); `None` if it has
    /// no `:` outside quotes.
    fn read(line: &str) -> Option<Prop> {
        let colon = split_unquoted(line, ':').next().map(str::len)?;
        let value = line.get(colon + 1..)?.to_owned();
        let mut head = split_unquoted(&line[..colon], ';');
        let name = head.next()?.rsplit('.').next()?.trim().to_ascii_uppercase();
        let params = head
            .map(|param| match param.split_once('=') {
                Some((key, values)) => (
                    key.trim().to_ascii_uppercase(),
                    split_unquoted(values, ',')
                        .map(|v| v.trim().trim_matches('"').to_owned())
                        .collect(),
                ),
                None => (param.trim().to_ascii_uppercase(), Vec::new()),
            })
            .collect();
        Some(Prop {
            name,
            params,
            value,
        })
    }
}

/// The parts of `text` between the `separator`s outside double quotes.
fn split_unquoted(text: &str, separator: char) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    text.split(move |c| {
        if c == '"' {
            quoted = !quoted;
        }
        c == separator && !quoted
    })
}

/// The content lines of a vCard, unfolded (RFC 6350 3.2: a line break followed by one
/// space or tab is removed, wherever it is, even right after a space), without blank
/// lines.
fn unfold(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for raw in text.split('\n') {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if let (Some(rest), Some(last)) = (raw.strip_prefix([' ', '\t']), lines.last_mut()) {
            last.push_str(rest);
        } else if !raw.trim().is_empty() {
            lines.push(raw.to_owned());
        }
    }
    lines
}

/// The properties of the first vCard in `text` (between `BEGIN:VCARD` and `END:VCARD`).
fn properties(text: &str) -> Result<Vec<Prop>, CardError> {
    let mut lines = unfold(text).into_iter();
    let is = |line: &str, what: &str| line.trim().eq_ignore_ascii_case(what);
    // Compared without regard to case; written so to stay clear of SQL's BEGIN.
    if !lines.next().is_some_and(|first| is(&first, "begin:vcard")) {
        return Err(CardError::Unparsable("no BEGIN:VCARD".into()));
    }
    let mut props = Vec::new();
    for line in lines {
        if is(&line, "end:vcard") {
            return Ok(props);
        }
        let prop = Prop::read(&line).ok_or_else(|| {
            CardError::Unparsable(format!("a line without ':' ({} bytes)", line.len()))
        })?;
        props.push(prop);
    }
    Err(CardError::Unparsable("no END:VCARD".into()))
}

/// Reads one vCard; its UID is `uid` when given (an address book view sends each vCard
/// with its UID beside it), else its `UID` property.
pub(super) fn parse(vcard: &str, uid: Option<&str>) -> Result<Card, CardError> {
    if vcard.len() > MAX_VCARD_BYTES {
        return Err(CardError::TooLarge(vcard.len()));
    }
    let props = properties(vcard)?;
    let first = |name: &str| {
        props
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.value.as_str())
    };
    let uid = uid
        .map(str::to_owned)
        .or_else(|| first("UID").map(unescape))
        .filter(|u| !u.is_empty())
        .ok_or(CardError::NoUid)?;
    let name = display_name(&props).ok_or(CardError::NoName)?;
    let mut numbers: Vec<String> = Vec::new();
    for tel in props.iter().filter(|p| p.name == "TEL") {
        let number = tel_number(&tel.value);
        if !number.is_empty() && !numbers.contains(&number) {
            numbers.push(number);
        }
        if numbers.len() == MAX_NUMBERS_PER_CONTACT {
            break;
        }
    }
    let photo = props
        .iter()
        .filter(|p| p.name == "PHOTO")
        .find_map(photo_of);
    Ok(Card {
        uid,
        name,
        numbers,
        photo,
    })
}

/// `FN`, else the given and family names of `N`, else the organisation (`ORG`): on one
/// line, cut to [`MAX_NAME_CHARS`].
fn display_name(props: &[Prop]) -> Option<String> {
    let first = |name: &str| {
        props
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.value.as_str())
    };
    let full = first("FN").map(unescape);
    let from_n = || {
        let parts = split_escaped(first("N")?);
        // N: family; given; additional; prefixes; suffixes.
        let order = [3, 1, 2, 0, 4];
        Some(
            order
                .iter()
                .filter_map(|&i| parts.get(i))
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
        )
    };
    let org = || split_escaped(first("ORG")?).into_iter().next();
    [full, from_n(), org()]
        .into_iter()
        .flatten()
        .map(|n| one_line(&n))
        .find(|n| !n.is_empty())
}

/// Control characters (newlines) as spaces, runs of spaces as one, trimmed, cut to
/// [`MAX_NAME_CHARS`] characters.
fn one_line(text: &str) -> String {
    let spaced: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    spaced
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(MAX_NAME_CHARS)
        .collect()
}

/// A text value with vCard's escapes (`\\`, `\,`, `\;`, `\n`) undone.
fn unescape(value: &str) -> String {
    split_escaped_on(value, None).concat()
}

/// A structured value (`N`, `ORG`) split on its unescaped `;`, each part unescaped.
fn split_escaped(value: &str) -> Vec<String> {
    split_escaped_on(value, Some(';'))
}

fn split_escaped_on(value: &str, separator: Option<char>) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        let part = parts.last_mut().expect("never empty");
        match c {
            '\\' => match chars.next() {
                Some('n' | 'N') => part.push('\n'),
                Some(other) => part.push(other),
                None => {}
            },
            c if Some(c) == separator => parts.push(String::new()),
            c => part.push(c),
        }
    }
    parts
}

/// A `TEL` value as written: unescaped, without a `tel:` URI's scheme and parameters.
fn tel_number(value: &str) -> String {
    let value = unescape(value);
    let value = value.trim();
    match value.get(..4) {
        Some(scheme) if scheme.eq_ignore_ascii_case("tel:") => value[4..]
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
        _ => value.to_owned(),
    }
}

/// The photo of one `PHOTO` property: a local file, or inline image data.
fn photo_of(prop: &Prop) -> Option<Photo> {
    let value = prop.value.trim();
    if let Some(path) = file_uri_path(value) {
        return Some(Photo::File(path));
    }
    let encoded = if let Some(data) = strip_prefix_ignore_case(value, "data:") {
        // vCard 4.0: data:image/png;base64,....
        let (header, data) = data.split_once(',')?;
        if !header.to_ascii_lowercase().ends_with(";base64") {
            return None;
        }
        data
    } else if prop.has("ENCODING", "b") || prop.has("ENCODING", "BASE64") {
        value
    } else {
        return None;
    };
    let bytes = decode_base64(encoded)?;
    let extension = image_extension(&bytes)?;
    Some(Photo::Inline { bytes, extension })
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

/// The absolute local path of a `file://` URI (its `%XX` escapes decoded), if it is one.
fn file_uri_path(value: &str) -> Option<PathBuf> {
    let rest = strip_prefix_ignore_case(value, "file://")?;
    let rest = strip_prefix_ignore_case(rest, "localhost").unwrap_or(rest);
    if !rest.starts_with('/') {
        return None;
    }
    let bytes = rest.as_bytes();
    let mut path = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            path.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            path.push(bytes[i]);
            i += 1;
        }
    }
    if path.contains(&0) {
        return None;
    }
    use std::os::unix::ffi::OsStringExt as _;
    Some(PathBuf::from(std::ffi::OsString::from_vec(path)))
}

/// Base64 (whitespace ignored, padding optional), if it decodes to at most
/// [`MAX_PHOTO_BYTES`].
fn decode_base64(encoded: &str) -> Option<Vec<u8>> {
    // Four characters make three bytes: refuse a too-large photo before decoding it.
    if encoded.len() / 4 * 3 > MAX_PHOTO_BYTES + 3 * 1024 {
        return None;
    }
    let mut clean: Vec<u8> = encoded
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    while !clean.len().is_multiple_of(4) {
        clean.push(b'=');
    }
    let bytes = data_encoding::BASE64.decode(&clean).ok()?;
    (bytes.len() <= MAX_PHOTO_BYTES).then_some(bytes)
}

/// The file extension of an image by its first bytes: PNG, JPEG, GIF or WebP only.
fn image_extension(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("jpg")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("gif")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("webp")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1x1 PNG.
    const PNG: &[u8] =
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89";

    fn parsed(lines: &[&str]) -> Result<Card, CardError> {
        parse(&card(lines), None)
    }

    fn card(lines: &[&str]) -> String {
        let mut text = String::from("BEGIN:VCARD\r\nVERSION:3.0\r\n");
        for line in lines {
            text.push_str(line);
            text.push_str("\r\n");
        }
        text.push_str("END:VCARD");
        text
    }

    #[test]
    fn names_numbers_and_uid() {
        let c = parsed(&[
            "UID:pas-id-1",
            "FN:Martin\\, Alice",
            "N:Martin;Alice;;;",
            "TEL;TYPE=CELL:(555) 987-6543",
            "item1.TEL;TYPE=\"home,voice\":+1 555 123 4567",
            "TEL;VALUE=uri:tel:+15550001111;ext=12",
            "TEL:(555) 987-6543",
            "TEL;X-LABEL=\"Desk: 2nd floor; left\";CELL:+15550002222",
        ])
        .expect("a card");
        assert_eq!(c.uid, "pas-id-1");
        assert_eq!(c.name, "Martin, Alice");
        assert_eq!(
            c.numbers,
            [
                "(555) 987-6543",
                "+1 555 123 4567",
                "+15550001111",
                "+15550002222"
            ]
        );
        assert_eq!(c.photo, None);
    }

    #[test]
    fn folded_lines_are_joined_where_they_were_cut() {
        // RFC 6350 3.2: CRLF and one space (or tab) are removed, wherever they are,
        // also right after a space of the value.
        let c = parsed(&[
            "UID:u",
            "FN:Alice \r\n Martin-Dupont de la Tour\r\n\t du Pin",
            "TEL:+1555\r\n 9876543",
        ])
        .expect("a card");
        assert_eq!(c.name, "Alice Martin-Dupont de la Tour du Pin");
        assert_eq!(c.numbers, ["+15559876543"]);
    }

    #[test]
    fn name_falls_back_to_n_then_org() {
        let rows: [(&[&str], Result<&str, CardError>); 6] = [
            (
                &["N:Martin;Alice;B.;Dr.;Jr."],
                Ok("Dr. Alice B. Martin Jr."),
            ),
            (&["FN:", "N:Martin;Alice;;;"], Ok("Alice Martin")),
            (&["FN:  ", "ORG:ACME\\; Inc;Sales"], Ok("ACME; Inc")),
            (&["FN:Two\\nLines\t here"], Ok("Two Lines here")),
            (&["N:;;;;", "TEL:+15551112222"], Err(CardError::NoName)),
            (&["TEL:+15551112222"], Err(CardError::NoName)),
        ];
        for (lines, expected) in rows {
            let mut all = vec!["UID:x"];
            all.extend_from_slice(lines);
            let got = parsed(&all).map(|c| c.name);
            assert_eq!(got, expected.map(str::to_owned), "{lines:?}");
        }
    }

    #[test]
    fn long_names_are_cut_and_bad_cards_refused() {
        let long = format!("FN:{}", "é".repeat(MAX_NAME_CHARS + 50));
        let c = parsed(&["UID:x", &long]).expect("a card");
        assert_eq!(c.name.chars().count(), MAX_NAME_CHARS);
        assert_eq!(parsed(&["FN:Alice"]), Err(CardError::NoUid));
        // The UID an address book view sends beside the vCard is the contact's.
        let c = parse(&card(&["FN:Alice", "UID:old"]), Some("pas-id-2")).expect("a card");
        assert_eq!(c.uid, "pas-id-2");
        let huge = card(&[
            "UID:x",
            "FN:A",
            &format!("NOTE:{}", "x".repeat(MAX_VCARD_BYTES)),
        ]);
        assert_eq!(parse(&huge, None), Err(CardError::TooLarge(huge.len())));
        assert!(matches!(
            parse("hello", None),
            Err(CardError::Unparsable(_))
        ));
        assert!(matches!(parse("", None), Err(CardError::Unparsable(_))));
    }

    #[test]
    fn too_many_numbers_are_cut() {
        let tels: Vec<String> = (0..40).map(|i| format!("TEL:+1555000{i:04}")).collect();
        let mut lines = vec!["UID:x", "FN:Many"];
        lines.extend(tels.iter().map(String::as_str));
        let c = parsed(&lines).expect("a card");
        assert_eq!(c.numbers.len(), MAX_NUMBERS_PER_CONTACT);
    }

    #[test]
    fn photos() {
        let b64 = data_encoding::BASE64.encode(PNG);
        let (head, tail) = b64.split_at(20);
        let inline = Some(Photo::Inline {
            bytes: PNG.to_vec(),
            extension: "png",
        });
        let rows: [(String, Option<Photo>); 8] = [
            (
                "PHOTO;VALUE=uri:file:///home/u/.local/share/evolution/addressbook/system/photos/a%20b.png".into(),
                Some(Photo::File(
                    "/home/u/.local/share/evolution/addressbook/system/photos/a b.png".into(),
                )),
            ),
            (
                "PHOTO:file://localhost/tmp/p.jpg".into(),
                Some(Photo::File("/tmp/p.jpg".into())),
            ),
            (format!("PHOTO;ENCODING=b;TYPE=image/png:{head}\r\n {tail}"), inline.clone()),
            (format!("PHOTO;ENCODING=BASE64;PNG:{b64}"), inline.clone()),
            (format!("PHOTO:data:image/png;base64,{}", b64.trim_end_matches('=')), inline),
            ("PHOTO;VALUE=uri:http://example.org/a.png".into(), None),
            // Not an image (text), even if well encoded.
            (
                format!("PHOTO;ENCODING=b:{}", data_encoding::BASE64.encode(b"hello")),
                None,
            ),
            // Larger than the bound once decoded.
            (
                format!(
                    "PHOTO;ENCODING=b:{}",
                    data_encoding::BASE64.encode(&[PNG, &vec![0u8; MAX_PHOTO_BYTES]].concat())
                ),
                None,
            ),
        ];
        for (line, expected) in rows {
            let c = parsed(&["UID:x", "FN:A", &line]).expect("a card");
            assert_eq!(c.photo, expected, "{}", &line[..line.len().min(80)]);
        }
    }
}
