//! The README's first command: the demo plays its script end to end and exits cleanly,
//! leaving no process behind.

mod common;

use common::{Ran, program};

#[test]
fn the_demo_plays_its_script() {
    let mut demo = program("tandem-demo");
    demo.arg("--exit")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env_remove("DBUS_SYSTEM_BUS_ADDRESS");
    let stdout = Ran::of(&mut demo).success().stdout;
    for needle in [
        "Alice: PresenceChanged +15550002222 online",
        "Bob: MessageReceived from +15550001111 over ip: \"Hi Bob! Dinner at eight?\"",
        "Alice: MessageStatusChanged delivered via \"ip\"",
        "Alice: MessageReceived from +15550002222 over ip: \"Sounds good, see you then 🙂\"",
        // Bob's daemon stopped: presence goes offline and the next message goes by SMS.
        "Alice: PresenceChanged +15550002222 offline",
        "Alice: MessageStatusChanged sent via \"sms\"",
        "Bob: MessageReceived from +15550001111 over sms: \"Shall I bring wine?\" (waited on his modem)",
        // Back online: IP again.
        "Bob: MessageReceived from +15550001111 over ip: \"See you at eight!\"",
        "presence online  last: \"See you at eight!\" (outgoing)",
        "busctl --user call",
        "Stopping.",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }
}
