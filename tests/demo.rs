//! The README's first command: the demo plays its script end to end and exits cleanly,
//! leaving no process behind.

use std::process::Command;

#[test]
fn the_demo_plays_its_script() {
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-demo"))
        .arg("--exit")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env_remove("DBUS_SYSTEM_BUS_ADDRESS")
        .output()
        .expect("tandem-demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for needle in [
        "Alice: MessageStatusChanged sending",
        "Alice: MessageStatusChanged delivered",
        "Bob: MessageReceived from +15550001111 over sms: \"Hi Bob! Dinner at eight?\"",
        "Alice: MessageReceived from +15550002222 over sms",
        // Bob's quick reply is the newest, although the SMS centre stamps whole seconds.
        "unread 1  last: \"Sounds good, see you then 🙂\" (incoming)",
        "busctl --user call",
        "Stopping.",
    ] {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from:\n{stdout}"
        );
    }
}
