//! What the relay reads from clients: the text of a WebSocket message through
//! `protocol::decode_client`, then the checks the hub makes on numbers and ids.
//!
//! Invariants: a decoded frame came from one JSON object whose `type` is the frame's
//! kind; encoding it and decoding again gives the same frame; the number and id checks
//! never accept what the protocol forbids.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::relay::protocol::{
    ClientFrame, MAX_ID_BYTES, decode_client, encode, is_e164, is_message_id,
};

fuzz_target!(|data: &[u8]| {
    // tungstenite hands the relay text messages only as valid UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let frame = match decode_client(text) {
        Ok(frame) => frame,
        Err(err) => {
            // The error is sent back in a `malformed` frame: it must render.
            let _ = err.to_string();
            return;
        }
    };

    let value: serde_json::Value = serde_json::from_str(text).expect("a decoded frame is JSON");
    let object = value.as_object().unwrap_or_else(|| {
        panic!("a frame must be a JSON object, decoded {frame:?} from {text:?}")
    });
    assert_eq!(
        object.get("type").and_then(|t| t.as_str()),
        Some(frame.kind()),
        "the frame's `type` decides its kind: {text:?}"
    );

    let encoded = encode(&frame);
    let again = decode_client(&encoded)
        .unwrap_or_else(|err| panic!("re-decoding {encoded:?} failed: {err}"));
    assert_eq!(again, frame, "round trip through {encoded:?}");

    match &frame {
        ClientFrame::Register { number }
        | ClientFrame::Verify { number, .. }
        | ClientFrame::Login { number, .. } => check_number(number),
        ClientFrame::Send { id, to, .. } => {
            check_id(id);
            check_number(to);
        }
        ClientFrame::Ack { from, id } => {
            check_id(id);
            check_number(from);
        }
        ClientFrame::Revoke { id } => check_id(id),
        ClientFrame::Subscribe { numbers } => numbers.iter().for_each(|n| check_number(n)),
        ClientFrame::Typing { to, .. } => check_number(to),
        ClientFrame::Hello { .. } | ClientFrame::Ping { .. } => {}
    }
});

/// `is_e164` accepts `+`, a non-zero digit and 1 to 14 more digits, nothing else.
fn check_number(number: &str) {
    if is_e164(number) {
        let digits = number.strip_prefix('+').expect("starts with +");
        assert!((2..=15).contains(&digits.len()), "{number:?}");
        assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{number:?}");
        assert!(!digits.starts_with('0'), "{number:?}");
    }
}

/// `is_message_id` accepts 1 to 64 bytes of `[A-Za-z0-9._:-]`, nothing else.
fn check_id(id: &str) {
    if is_message_id(id) {
        assert!(!id.is_empty() && id.len() <= MAX_ID_BYTES, "{id:?}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b)),
            "{id:?}"
        );
    }
}
