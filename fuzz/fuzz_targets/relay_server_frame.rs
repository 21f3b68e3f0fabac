//! What the daemon's relay client reads from the relay: the text of a WebSocket message
//! through `protocol::decode_server`.
//!
//! Invariants: a decoded frame came from one JSON object; unknown frame types decode as
//! `Unknown` (a client ignores them) and known ones survive encoding and decoding again
//! unchanged, so nothing the client reads is misread as another frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::relay::protocol::{ErrorCode, ServerFrame, decode_server, encode};

/// Every frame type a version-1 client knows, as spelled on the wire.
const KNOWN: &[&str] = &[
    "welcome",
    "code-sent",
    "registered",
    "logged-in",
    "ack",
    "deliver",
    "confirm",
    "receipt",
    "revoke-result",
    "snapshot",
    "presence",
    "pong",
    "error",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(frame) = decode_server(text) else {
        return;
    };

    let value: serde_json::Value = serde_json::from_str(text).expect("a decoded frame is JSON");
    let object = value.as_object().unwrap_or_else(|| {
        panic!("a frame must be a JSON object, decoded {frame:?} from {text:?}")
    });
    let kind = object
        .get("type")
        .and_then(|t| t.as_str())
        .unwrap_or_else(|| {
            panic!("decoded {frame:?} from a frame without a string `type`: {text:?}")
        });

    if frame == ServerFrame::Unknown {
        assert!(
            !KNOWN.contains(&kind),
            "a known type decoded as Unknown: {text:?}"
        );
        return;
    }
    assert!(KNOWN.contains(&kind), "{kind:?} decoded as {frame:?}");

    let encoded = encode(&frame);
    let again = decode_server(&encoded)
        .unwrap_or_else(|err| panic!("re-decoding {encoded:?} failed: {err}"));
    assert_eq!(again, frame, "round trip through {encoded:?}");

    if let ServerFrame::Error(error) = &frame {
        // An error code the client does not know is never taken for one it acts on.
        let code = object
            .get("code")
            .and_then(|c| c.as_str())
            .unwrap_or_else(|| panic!("an error frame without a string code: {text:?}"));
        if error.code != ErrorCode::Unknown {
            assert_eq!(code, error.code.as_str(), "{text:?}");
        }
    }
});
