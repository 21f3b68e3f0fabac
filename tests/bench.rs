//! `tandem-bench --quick`, as CI runs it: a smoke test that every scenario runs and
//! prints its JSON line with every figure (no timing is asserted), and cleans up.

mod common;

use std::collections::BTreeMap;

use common::{Ran, program, temp_dir};

use serde_json::Value;

/// Each scenario (before the colon) and the figures its line must carry.
const SCENARIOS: &str = "
store: startup_ms list_conversations_ms get_messages_ms search_ms bytes_per_message rss_mib
sms-latency: messages p50_ms p99_ms floor_ms ratio session_rtt_ms system_rtt_ms commit_ms
relay: clients kib_per_connection messages_per_s p99_ms relay_cpu_pct fsync_ms fd_limit
ip-latency: messages p50_ms p99_ms floor_ms ratio session_rtt_ms ws_hop_ms commit_ms
idle: seconds contacts online_contacts cpu_ms_per_min wakeups_per_min rss_mib rss_anon_mib \
      rss_file_mib bytes_per_min data_frames keepalive_frames ping_interval_s threads
";

/// [`SCENARIOS`] as (name, figures).
fn scenarios() -> Vec<(&'static str, Vec<&'static str>)> {
    SCENARIOS
        .lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(name, keys)| (name, keys.split_whitespace().collect()))
        .collect()
}

#[test]
fn quick_bench_prints_every_figure() {
    let dir = temp_dir();
    let mut bench = program("tandem-bench");
    bench.arg("--quick").arg("--dir").arg(dir.path());
    let stdout = Ran::of(&mut bench).success().stdout;

    // One JSON object per line, one line per scenario, in order.
    let lines: Vec<BTreeMap<String, Value>> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let names: Vec<&str> = lines
        .iter()
        .map(|line| line.get("scenario").and_then(Value::as_str).unwrap_or("?"))
        .collect();
    let scenarios = scenarios();
    let expected: Vec<&str> = scenarios.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, expected, "{stdout}");

    for (line, (name, keys)) in lines.iter().zip(&scenarios) {
        for key in keys {
            let value = line.get(*key);
            assert!(
                value.and_then(Value::as_f64).is_some_and(f64::is_finite),
                "{name}: {key} is missing or not a number: {line:?}"
            );
        }
    }
    // The counts that make the other figures mean something.
    let relay = &lines[2];
    assert!(relay["clients"].as_u64() > Some(0), "{relay:?}");
    assert!(relay["messages"].as_u64() > Some(0), "{relay:?}");
    assert_eq!(lines[1]["messages"].as_u64(), Some(20), "{:?}", lines[1]);
    assert_eq!(lines[3]["messages"].as_u64(), Some(20), "{:?}", lines[3]);
    let idle = &lines[4];
    assert_eq!(idle["contacts"].as_u64(), Some(50), "{idle:?}");
    assert!(idle["online_contacts"].as_u64() > Some(0), "{idle:?}");
    // No message is sent in the window: whatever the timing, no data frame may pass.
    assert_eq!(idle["data_frames"].as_u64(), Some(0), "{idle:?}");
    assert!(idle["threads"].as_u64() > Some(0), "{idle:?}");
    assert!(idle["ping_interval_s"].as_f64() > Some(0.0), "{idle:?}");
    assert!(idle["per_thread"].is_array(), "{idle:?}");
    for text_key in [
        ("sms-latency", 1, "floor_note"),
        ("relay", 2, "note"),
        ("ip-latency", 3, "floor_note"),
        ("idle", 4, "note"),
    ] {
        let (name, index, key) = text_key;
        assert!(
            lines[index][key].as_str().is_some_and(|s| !s.is_empty()),
            "{name}: no {key}"
        );
    }

    // It cleaned up after itself.
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
}

#[test]
fn without_a_scenario_or_quick_it_says_what_to_do() {
    let out = Ran::of(&mut program("tandem-bench"));
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = out.stderr;
    for name in ["store", "sms-latency", "relay", "ip-latency", "idle"] {
        assert!(stderr.contains(name), "{stderr}");
    }
}
