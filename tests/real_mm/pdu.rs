//! Just enough of 3GPP TS 23.040 for the fake modem: decode the SMS-SUBMIT PDUs that
//! ModemManager writes after `AT+CMGS`/`AT+CMGW`, and encode the SMS-DELIVER and
//! SMS-STATUS-REPORT PDUs a network would hand to the modem. GSM 7-bit (default alphabet and
//! its extension table) and UCS-2 texts; 8-bit data is refused. PDUs travel as hex strings,
//! as they do on the AT port.

/// The GSM 03.38 default alphabet, indexed by septet; 0x1B (the escape to the extension
/// table) is a placeholder here.
const GSM_DEFAULT: [char; 128] = [
    '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
    'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1b}', 'Æ', 'æ', 'ß', 'É', //
    ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
    '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
    'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
    '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
    'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
];

/// The extension table: (septet after the escape, character).
const GSM_EXTENSION: [(u8, char); 10] = [
    (0x0A, '\u{0c}'),
    (0x14, '^'),
    (0x28, '{'),
    (0x29, '}'),
    (0x2F, '\\'),
    (0x3C, '['),
    (0x3D, '~'),
    (0x3E, ']'),
    (0x40, '|'),
    (0x65, '€'),
];

const ESCAPE: u8 = 0x1B;

/// Septets of `text` in the GSM 7-bit alphabet, `None` if a character is not in it.
pub fn gsm_septets(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    for ch in text.chars() {
        if ch != '\u{1b}'
            && let Some(i) = GSM_DEFAULT.iter().position(|&c| c == ch)
        {
            out.push(i as u8);
        } else if let Some(&(code, _)) = GSM_EXTENSION.iter().find(|&&(_, c)| c == ch) {
            out.extend([ESCAPE, code]);
        } else {
            return None;
        }
    }
    Some(out)
}

fn gsm_text(septets: &[u8]) -> Result<String, String> {
    let mut text = String::new();
    let mut iter = septets.iter();
    while let Some(&s) = iter.next() {
        if s == ESCAPE {
            let &code = iter.next().ok_or("escape at the end of the text")?;
            let (_, ch) = GSM_EXTENSION
                .iter()
                .find(|&&(c, _)| c == code)
                .ok_or_else(|| format!("unknown extension septet {code:#04x}"))?;
            text.push(*ch);
        } else {
            text.push(GSM_DEFAULT[usize::from(s & 0x7F)]);
        }
    }
    Ok(text)
}

/// Packs septets into octets, least significant bit first.
fn pack(septets: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(septets.len() * 7 / 8 + 1);
    let (mut acc, mut bits) = (0u32, 0);
    for &s in septets {
        acc |= u32::from(s & 0x7F) << bits;
        bits += 7;
        while bits >= 8 {
            out.push(acc as u8);
            acc >>= 8;
            bits -= 8;
        }
    }
    if bits > 0 {
        out.push(acc as u8);
    }
    out
}

/// The first `count` septets packed in `octets`.
fn unpack(octets: &[u8], count: usize) -> Result<Vec<u8>, String> {
    if octets.len() * 8 < count * 7 {
        return Err(format!(
            "{count} septets announced, {} octets given",
            octets.len()
        ));
    }
    Ok((0..count)
        .map(|i| {
            let bit = i * 7;
            let lo = u16::from(octets[bit / 8]);
            let hi = octets.get(bit / 8 + 1).copied().map_or(0, u16::from);
            (((hi << 8 | lo) >> (bit % 8)) & 0x7F) as u8
        })
        .collect())
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

pub fn from_hex(hex: &str) -> Result<Vec<u8>, String> {
    let hex = hex.trim();
    if !hex.len().is_multiple_of(2) {
        return Err(format!("odd number of hex digits in {hex:?}"));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| format!("not hex: {hex:?}")))
        .collect()
}

/// Reads octets one after the other, with a clear error past the end.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self, what: &str) -> Result<u8, String> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or_else(|| format!("PDU ends before the {what}"))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self.pos + n;
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or_else(|| format!("PDU ends inside the {what}"))?;
        self.pos = end;
        Ok(slice)
    }

    fn rest(&self) -> &'a [u8] {
        &self.bytes[self.pos..]
    }
}

/// A TP address: semi-octet digits (`+` for the international type) or, for the
/// alphanumeric type, GSM 7-bit text.
fn read_address(r: &mut Reader<'_>) -> Result<String, String> {
    let semi_octets = usize::from(r.byte("address length")?);
    let toa = r.byte("type of address")?;
    let value = r.take(semi_octets.div_ceil(2), "address")?;
    match toa & 0x70 {
        0x50 => gsm_text(&unpack(value, semi_octets * 4 / 7)?),
        kind => {
            let mut number = String::from(if kind == 0x10 { "+" } else { "" });
            for i in 0..semi_octets {
                let digit = (value[i / 2] >> (4 * (i % 2))) & 0x0F;
                if digit > 9 {
                    return Err(format!("address digit {digit:#x} in {value:02X?}"));
                }
                number.push(char::from(b'0' + digit));
            }
            Ok(number)
        }
    }
}

fn write_address(out: &mut Vec<u8>, address: &str) {
    let digits = address.strip_prefix('+').unwrap_or(address);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        let toa = if address.starts_with('+') { 0x91 } else { 0x81 };
        out.extend([digits.len() as u8, toa]);
        out.extend(semi_octets(digits));
    } else {
        let septets = gsm_septets(address).expect("alphanumeric address in the GSM alphabet");
        let packed = pack(&septets);
        out.extend([(septets.len() * 7).div_ceil(4) as u8, 0xD0]);
        out.extend(packed);
    }
}

/// Decimal digits as swapped semi-octets, padded with F.
fn semi_octets(digits: &str) -> Vec<u8> {
    digits
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            let lo = pair[0] - b'0';
            let hi = pair.get(1).map_or(0x0F, |d| d - b'0');
            hi << 4 | lo
        })
        .collect()
}

/// Concatenation information of one part of a multipart SMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concat {
    pub reference: u16,
    pub total: u8,
    pub sequence: u8,
}

/// An SMS-SUBMIT as ModemManager wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submit {
    pub destination: String,
    pub text: String,
    /// TP-SRR: a status report was requested.
    pub status_report_request: bool,
    /// TP-MR as written (modems usually replace it with their own).
    pub message_reference: u8,
    pub concat: Option<Concat>,
}

/// Decodes the hex PDU of `AT+CMGS`/`AT+CMGW` (with its SMSC field, usually empty: `00`).
pub fn decode_submit(hex: &str) -> Result<Submit, String> {
    let bytes = from_hex(hex)?;
    let mut r = Reader {
        bytes: &bytes,
        pos: 0,
    };
    let smsc_len = usize::from(r.byte("SMSC length")?);
    r.take(smsc_len, "SMSC")?;
    let first = r.byte("first octet")?;
    if first & 0x03 != 0x01 {
        return Err(format!("not an SMS-SUBMIT: first octet {first:#04x}"));
    }
    let message_reference = r.byte("TP-MR")?;
    let destination = read_address(&mut r)?;
    let _pid = r.byte("TP-PID")?;
    let dcs = r.byte("TP-DCS")?;
    match (first >> 3) & 0x03 {
        0 => {}
        2 => {
            r.take(1, "TP-VP")?;
        }
        _ => {
            r.take(7, "TP-VP")?;
        }
    }
    let udl = usize::from(r.byte("TP-UDL")?);
    let ud = r.rest();

    let (header_len, concat) = if first & 0x40 != 0 {
        let udhl = usize::from(*ud.first().ok_or("UDHI set but no user data")?);
        let header = ud.get(1..1 + udhl).ok_or("user data header cut short")?;
        (1 + udhl, concat_of(header)?)
    } else {
        (0, None)
    };
    let text = match alphabet(dcs)? {
        Alphabet::Gsm7 => {
            let septets = unpack(ud, udl)?;
            let skip = (header_len * 8).div_ceil(7);
            gsm_text(septets.get(skip..).ok_or("header longer than the text")?)?
        }
        Alphabet::Ucs2 => {
            let body = ud
                .get(header_len..udl)
                .ok_or("UCS-2 text shorter than its length")?;
            let units: Vec<u16> = body
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                .collect();
            String::from_utf16(&units).map_err(|e| format!("bad UCS-2 text: {e}"))?
        }
    };
    Ok(Submit {
        destination,
        text,
        status_report_request: first & 0x20 != 0,
        message_reference,
        concat,
    })
}

enum Alphabet {
    Gsm7,
    Ucs2,
}

fn alphabet(dcs: u8) -> Result<Alphabet, String> {
    let alphabet = match dcs {
        d if d & 0xC0 == 0 && d & 0x20 == 0 => (d >> 2) & 0x03,
        d if d & 0xF0 == 0xF0 => (d >> 2) & 0x01,
        d if d & 0xF0 == 0xE0 => 2,
        d if d & 0xE0 == 0xC0 => 0,
        d => return Err(format!("unsupported TP-DCS {d:#04x}")),
    };
    match alphabet {
        0 => Ok(Alphabet::Gsm7),
        2 => Ok(Alphabet::Ucs2),
        _ => Err(format!("8-bit data (TP-DCS {dcs:#04x}) is not text")),
    }
}

/// The concatenation element (IEI 0x00 or 0x08) of a user data header.
fn concat_of(header: &[u8]) -> Result<Option<Concat>, String> {
    let mut i = 0;
    while i + 1 < header.len() {
        let (iei, len) = (header[i], usize::from(header[i + 1]));
        let data = header
            .get(i + 2..i + 2 + len)
            .ok_or("information element cut short")?;
        match (iei, len) {
            (0x00, 3) => {
                return Ok(Some(Concat {
                    reference: u16::from(data[0]),
                    total: data[1],
                    sequence: data[2],
                }));
            }
            (0x08, 4) => {
                return Ok(Some(Concat {
                    reference: u16::from_be_bytes([data[0], data[1]]),
                    total: data[2],
                    sequence: data[3],
                }));
            }
            _ => {}
        }
        i += 2 + len;
    }
    Ok(None)
}

/// A service-centre time stamp: local time of the SMSC and its offset from UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scts {
    pub year: u16,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    /// Offset from UTC in quarters of an hour (-8 is UTC-2).
    pub offset_quarters: i8,
}

impl Scts {
    fn write(&self, out: &mut Vec<u8>) {
        let swap = |v: u8| (v % 10) << 4 | (v / 10);
        out.extend([
            swap((self.year % 100) as u8),
            swap(self.month),
            swap(self.day),
            swap(self.hour),
            swap(self.minute),
            swap(self.second),
        ]);
        let q = self.offset_quarters.unsigned_abs();
        let sign = if self.offset_quarters < 0 { 0x08 } else { 0 };
        out.push(swap(q) | sign);
    }
}

/// The SMSC field of the PDUs this fake network hands out (+31624000000).
fn write_smsc(out: &mut Vec<u8>) {
    out.extend([0x07, 0x91]);
    out.extend(semi_octets("31624000000"));
}

/// An SMS-DELIVER of one part: GSM 7-bit when `text` fits the alphabet, UCS-2 otherwise.
pub fn encode_deliver(sender: &str, text: &str, scts: &Scts) -> String {
    let mut out = Vec::new();
    write_smsc(&mut out);
    out.push(0x04); // SMS-DELIVER, no more messages to send
    write_address(&mut out, sender);
    out.push(0x00); // TP-PID
    match gsm_septets(text) {
        Some(septets) => {
            assert!(septets.len() <= 160, "one part holds 160 septets");
            out.push(0x00);
            scts.write(&mut out);
            out.push(septets.len() as u8);
            out.extend(pack(&septets));
        }
        None => {
            let body: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
            assert!(body.len() <= 140, "one part holds 140 octets");
            out.push(0x08);
            scts.write(&mut out);
            out.push(body.len() as u8);
            out.extend(body);
        }
    }
    to_hex(&out)
}

/// An SMS-STATUS-REPORT for the SMS with `reference` sent to `recipient`; `status` is TP-ST
/// (0: received by the recipient).
pub fn encode_status_report(
    recipient: &str,
    reference: u8,
    status: u8,
    sent: &Scts,
    discharged: &Scts,
) -> String {
    let mut out = Vec::new();
    write_smsc(&mut out);
    out.push(0x06); // SMS-STATUS-REPORT, no more messages to send
    out.push(reference);
    write_address(&mut out, recipient);
    sent.write(&mut out);
    discharged.write(&mut out);
    out.push(status);
    to_hex(&out)
}

/// Length of a PDU as `+CMGR`/`+CMGL`/`+CDS` give it: octets after the SMSC field.
pub fn tpdu_len(hex: &str) -> usize {
    let bytes = from_hex(hex).unwrap_or_default();
    let smsc = bytes.first().map_or(0, |&n| 1 + usize::from(n));
    bytes.len().saturating_sub(smsc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests' instant at the SMS centre, in UTC.
    const SCTS: Scts = Scts {
        offset_quarters: 0,
        ..crate::SCTS
    };

    #[test]
    fn decodes_what_modem_manager_1_20_wrote() {
        // Written by ModemManager 1.20.4 for Create{number, text} and Send.
        let s = decode_submit("0001000B915155000000F200000BE8329BFD06DDDF723619").unwrap();
        assert_eq!(
            s,
            Submit {
                destination: "+15550000002".into(),
                text: "hello world".into(),
                status_report_request: false,
                message_reference: 0,
                concat: None,
            }
        );
        // The same with delivery-report-request: TP-SRR set.
        let s = decode_submit("0021000B915155000000F2000009F232FC2DA783DA65").unwrap();
        assert_eq!(
            (s.text.as_str(), s.status_report_request),
            ("report me", true)
        );
    }

    #[test]
    fn encodes_a_deliver_that_modem_manager_parsed() {
        // ModemManager 1.20.4 read this one as from +15550000010, "Hello from outside",
        // 2024-05-20T12:34:56Z, SMSC +31624000000.
        assert_eq!(
            encode_deliver("+15550000010", "Hello from outside", &SCTS),
            "07911326040000F0040B915155000010F000004250022143650012\
             C8329BFD0699E5EF36E85DA7CFD3E432"
        );
    }

    #[test]
    fn gsm_extension_and_ucs2_round_trip_through_a_submit() {
        for text in ["{a} [b] ~c~ \\d\\ |e| €5 ^", "Grüße, Здравствуй 👋"] {
            // A submit built like the deliver, to check both directions of the codec.
            let deliver = from_hex(&encode_deliver("+15550000010", text, &SCTS)).unwrap();
            // SMSC (8 octets), first octet, OA (2 + 6), PID, DCS, SCTS (7), UDL, UD.
            let dcs = deliver[8 + 1 + 8 + 1];
            let ud = &deliver[8 + 1 + 8 + 2 + 7..];
            let mut submit = vec![0x00, 0x01, 0x00, 0x0B, 0x91];
            submit.extend(semi_octets("15550000002"));
            submit.extend([0x00, dcs]);
            submit.extend(ud);
            let s = decode_submit(&to_hex(&submit)).unwrap();
            assert_eq!(s.text, text);
            assert_eq!(s.destination, "+15550000002");
        }
    }

    #[test]
    fn reads_the_concatenation_header_and_skips_its_fill_bits() {
        // UDH 05 00 03 2A 02 01 (ref 0x2A, 2 parts, part 1), then "hi" in GSM 7-bit after
        // one fill bit: 7 septets of header, 2 of text.
        let header = [0x05u8, 0x00, 0x03, 0x2A, 0x02, 0x01];
        let mut septets = vec![0u8; 7];
        septets.extend(gsm_septets("hi").unwrap());
        let mut ud = pack(&septets);
        ud[..6].copy_from_slice(&header);
        let mut pdu = vec![0x00, 0x41, 0x07, 0x03, 0x81, 0x21, 0xF3, 0x00, 0x00, 9];
        pdu.extend(ud);
        let s = decode_submit(&to_hex(&pdu)).unwrap();
        assert_eq!(s.destination, "123");
        assert_eq!(s.text, "hi");
        assert_eq!(
            s.concat,
            Some(Concat {
                reference: 0x2A,
                total: 2,
                sequence: 1
            })
        );
    }

    #[test]
    fn alphanumeric_senders_and_negative_offsets() {
        let scts = Scts {
            offset_quarters: -8,
            ..SCTS
        };
        let hex = encode_deliver("Bank", "x", &scts);
        let bytes = from_hex(&hex).unwrap();
        let mut r = Reader {
            bytes: &bytes[9..],
            pos: 0,
        };
        assert_eq!(read_address(&mut r).unwrap(), "Bank");
        // The time-zone octet: 8 quarters, swapped, with the sign bit.
        assert_eq!(bytes[bytes.len() - 3], 0x88);
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(decode_submit("0004").is_err(), "a deliver is not a submit");
        assert!(decode_submit("0001000B9151550000").is_err(), "cut short");
        assert!(
            decode_submit("0001000B915155000000F200040161").is_err(),
            "8-bit"
        );
        assert!(decode_submit("0G").is_err());
    }
}
