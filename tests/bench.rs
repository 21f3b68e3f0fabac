//! `tandem-bench --quick`, as CI runs it: a smoke test that every scenario runs and
//! prints its JSON line with every figure (no timing is asserted).

use std::process::Command;

#[test]
fn quick_bench_prints_every_figure() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_tandem-bench"))
        .arg("--quick")
        .arg("--dir")
        .arg(dir.path())
        .output()
        .expect("tandem-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().next().expect("one JSON line");
    assert!(line.starts_with("{\"scenario\":\"store\""), "{line}");
    for key in [
        "startup_ms",
        "list_conversations_ms",
        "get_messages_ms",
        "search_ms",
        "bytes_per_message",
        "rss_mib",
    ] {
        assert!(
            line.contains(&format!("\"{key}\":")),
            "{key} missing: {line}"
        );
    }
    // It cleaned up after itself.
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
}
