//! The fault suite: `tandemd` and ModemManager killed at random points of real traffic,
//! on private buses with the simulator. What each run must show: every message accepted
//! by `SendMessage` leaves the modem at most once and is either sent or failed with a
//! reason; every SMS that reached the modem is stored exactly once; no SMS object of ours
//! is left on the modem. docs/reliability.md lists what each guarantee rests on.
//!
//! Each test prints its figures as one JSON line. The size of a run comes from the
//! environment: `TANDEM_FAULT_POINTS` (kill points per test; small by default, for CI)
//! and `TANDEM_FAULT_SEED` (to replay a run; printed with the figures). The full run:
//! `TANDEM_FAULT_POINTS=1000 cargo test --release --test faults -- --nocapture`.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{
    Bus, Daemon, DaemonRig, FaultRng, Phone, Sim, SimCtl, client, dict_str, fault_points, temp_dir,
};
use tandem::api::MessagesProxy;

const A: &str = "+15550001111";
const OUTSIDE: &str = "+15559876543";
/// Recipients: messages to one peer go one after the other (a retry delay holds the
/// later ones), so several keep sends in flight for the kills to land in.
const PEERS: [&str; 4] = [
    "+15559870001",
    "+15559870002",
    "+15559870003",
    "+15559870004",
];

/// How long the end of a run may take to settle (every message final): a message whose
/// send a kill cut short waits out the outbox's retry backoff (at most 5 minutes) and
/// holds its peer's later messages meanwhile. A passing run returns long before.
const SETTLE: Duration = Duration::from_secs(360);

fn config(extra_sms: &str) -> String {
    format!(
        "default_region = \"US\"\n\n[sms]\nmodem = \"{A}\"\nmax_attempts = 1000\n\
         send_timeout_s = 5\n{extra_sms}\n[notifications]\nenabled = false\n"
    )
}

/// What the store says of one message.
async fn status_of(api: &MessagesProxy<'_>, id: &str) -> Option<(String, String)> {
    let m = api.get_message(id).await.ok()?;
    Some((m.status, m.error.unwrap_or_default()))
}

/// Every message of a conversation, paging back from the newest.
async fn conversation(api: &MessagesProxy<'_>, peer: &str) -> Vec<tandem::api::MessageDict> {
    let mut all: Vec<tandem::api::MessageDict> = Vec::new();
    loop {
        let before = all.last().map(|m| m.id.clone()).unwrap_or_default();
        let page = api
            .get_messages(peer, &before, 1000)
            .await
            .expect("GetMessages");
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// Waits until the daemon has its modem.
async fn registered(api: &MessagesProxy<'_>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while api.modem_state().await.ok().as_deref() != Some("registered") {
        assert!(Instant::now() < deadline, "the modem did not come back");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How many times the modem sent each text.
async fn sent_texts(sim: &SimCtl) -> HashMap<String, u32> {
    let mut counts = HashMap::new();
    for sms in sim.get_sent(A).await {
        *counts.entry(dict_str(&sms, "text")).or_default() += 1;
    }
    counts
}

/// Every accepted message's final status, waiting until none is queued or sending.
async fn settle(api: &MessagesProxy<'_>, accepted: &[(String, String)]) -> Vec<(String, String)> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let mut finals = Vec::new();
        let mut pending = 0;
        for (id, _) in accepted {
            match status_of(api, id).await {
                Some((status, error)) if status == "queued" || status == "sending" => {
                    pending += 1;
                    finals.push((status, error));
                }
                Some(found) => finals.push(found),
                None => finals.push(("missing".into(), String::new())),
            }
        }
        if pending == 0 || Instant::now() > deadline {
            return finals;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SendMessage and InjectSms at random moments, `tandemd` killed -9 at random points among
/// them (while its SMS are being created, recorded, sent, stored, announced, deleted) and
/// started again, the simulated modem taking 0-30 ms per send.
#[tokio::test]
async fn kill_9_of_tandemd_loses_and_doubles_nothing() {
    let kills = fault_points(16);
    let mut rng = FaultRng::new();
    let mut w = DaemonRig::start(&[A], &config("")).await;
    let (api, sim) = (w.phone.api.clone(), &w.ctl);
    registered(&api).await;

    let mut accepted: Vec<(String, String)> = Vec::new();
    let mut injected: Vec<String> = Vec::new();
    let started = Instant::now();
    for point in 0..kills {
        // A modem busy 10-80 ms with each send: most kills land in a send.
        sim.set_send_delay(A, 10 + rng.below(71) as u32).await;
        for i in 0..1 + rng.below(3) {
            accepted.push(send_out(&w.phone, &mut rng, format!("out {point}.{i}")).await);
            if rng.below(2) == 0 {
                let text = format!("in {point}.{i}");
                sim.inject_sms(A, OUTSIDE, &text).await;
                injected.push(text);
            }
        }
        tokio::time::sleep(rng.millis(60)).await;
        w.phone.daemon.kill9();
        w.phone.daemon.restart().await;
        // Traffic resumes once the modem is back, so the next kill lands in it.
        registered(&api).await;
    }

    // Let everything settle with no more kills.
    let finals = settle(&api, &accepted).await;
    let sent = sent_texts(sim).await;
    let (mut once, mut doubled, mut lost, mut unknown, mut failed) = (0, 0, 0, 0, 0);
    for ((id, text), (status, error)) in accepted.iter().zip(&finals) {
        let times = sent.get(text).copied().unwrap_or(0);
        match (status.as_str(), times) {
            ("sent" | "delivered", 1) => once += 1,
            (_, n) if n > 1 => {
                doubled += 1;
                eprintln!("DOUBLED: {id} {text:?} sent {n} times, status {status}");
            }
            ("failed", 0 | 1) if error.contains("may not have been sent") => unknown += 1,
            ("failed", _) => {
                failed += 1;
                eprintln!("failed: {id} {text:?}: {error}");
            }
            _ => {
                lost += 1;
                eprintln!("LOST: {id} {text:?} status {status}, sent {times} times");
            }
        }
    }
    // Every incoming SMS stored exactly once, and none left on the modem.
    let mut stored_twice = 0;
    let mut missing = 0;
    let deadline = Instant::now() + SETTLE;
    let (history, left_on_modem) = loop {
        let history = conversation(&api, OUTSIDE).await;
        let left = sim.list_sms(A).await;
        let incoming = history.iter().filter(|m| m.direction == "incoming").count();
        if (incoming >= injected.len() && left.is_empty()) || Instant::now() > deadline {
            break (history, left);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for text in &injected {
        let n = history.iter().filter(|m| &m.text == text).count();
        match n {
            0 => missing += 1,
            1 => {}
            _ => stored_twice += 1,
        }
    }
    let counters = counters(&api).await;
    println!(
        "{{\"test\":\"kill_9_of_tandemd\",\"kill_points\":{kills},\"accepted\":{},\"sent_once\":{once},\
         \"doubled\":{doubled},\"lost\":{lost},\"failed_unknown_outcome\":{unknown},\"failed_other\":{failed},\
         \"incoming\":{},\"stored_twice\":{stored_twice},\"incoming_missing\":{missing},\
         \"left_on_modem\":{},\"counters\":{counters:?},\"seconds\":{:.1}}}",
        accepted.len(),
        injected.len(),
        left_on_modem.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!((doubled, lost, failed), (0, 0, 0), "see the lines above");
    assert_eq!((stored_twice, missing), (0, 0), "incoming");
    assert!(
        left_on_modem.is_empty(),
        "SMS objects left on the modem: {left_on_modem:?}"
    );
}

/// `SendMessage` of `text` to a random one of the peers: (id, text).
async fn send_out(phone: &Phone, rng: &mut FaultRng, text: String) -> (String, String) {
    let peer = PEERS[rng.below(PEERS.len() as u64) as usize];
    (phone.send(peer, &text).await, text)
}

/// The reliability counters, as `GetCounters` gives them, by name.
async fn counters(api: &MessagesProxy<'_>) -> Vec<(String, u64)> {
    let mut counters: Vec<(String, u64)> = api
        .get_counters()
        .await
        .expect("GetCounters")
        .into_iter()
        .collect();
    counters.sort();
    counters
}

/// A small filesystem of its own (tmpfs), mounted on a temporary directory for one test and
/// unmounted when dropped: a disk that can be filled and freed. Mounting needs root, as CI
/// runs.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).expect("mount point");
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "this test mounts a small tmpfs to fill up, which needs root (CI runs as root)"
        );
        SmallDisk {
            dir: dir.to_owned(),
        }
    }

    /// Writes a filler file until the disk is full.
    fn fill(&self) {
        use std::io::Write;
        let mut filler = std::fs::File::create(self.dir.join("filler")).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while filler.write_all(&block).is_ok() {}
        let small = [0u8; 512];
        while filler.write_all(&small).is_ok() {}
        let _ = filler.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.dir.join("filler")).expect("remove the filler");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// The daemon's disk fills up while SMS arrive and messages are sent, then is freed: what
/// could not be stored stays on the modem and is stored (and announced) once as soon as
/// there is room, without a restart; a send refused meanwhile is refused with an error,
/// never accepted and lost.
#[tokio::test]
async fn a_full_disk_loses_nothing_and_recovers_once_freed() {
    let (session, system) = (Bus::start(), Bus::start());
    let _sim = Sim::start(&system, &[A]);
    let sim = SimCtl::new(&system.connect().await).await;
    let dir = temp_dir();
    let disk = SmallDisk::mount(&dir.path().join("data"), "6m");
    let mut daemon = Daemon::start(&session, &system, dir.path(), &config("")).await;
    let api = client(&session).await;
    let log = common::SignalLog::start(&session).await;
    registered(&api).await;
    api.send_message(OUTSIDE, "before", HashMap::new())
        .await
        .expect("a send while there is room");

    disk.fill();
    // Long texts: they need new pages, which a full disk cannot give.
    let texts: Vec<String> = (0..3)
        .map(|i| format!("arrived on a full disk {i}: {}", "x".repeat(1_000)))
        .collect();
    for text in &texts {
        sim.inject_sms(A, OUTSIDE, text).await;
    }
    let refused = api
        .send_message(OUTSIDE, &"y".repeat(1_200), HashMap::new())
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = sim.list_sms(A).await.len();
    assert!(
        daemon
            .log_text()
            .contains("cannot store an incoming sms; will try again"),
        "the disk never refused a write: the test did not test anything"
    );
    assert!(waiting > 0, "unstored SMS must stay on the modem");
    assert!(
        log.received()
            .iter()
            .all(|m| !m.text.starts_with("arrived")),
        "announced before stored"
    );

    disk.free();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = api
            .get_messages(OUTSIDE, "", 100)
            .await
            .expect("GetMessages");
        let all = texts
            .iter()
            .all(|t| stored.iter().filter(|m| &m.text == t).count() == 1);
        if all && sim.list_sms(A).await.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not stored after the disk was freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored = api
        .get_messages(OUTSIDE, "", 100)
        .await
        .expect("GetMessages");
    for text in &texts {
        assert_eq!(stored.iter().filter(|m| &m.text == text).count(), 1);
        assert_eq!(
            log.received().iter().filter(|m| &m.text == text).count(),
            1,
            "announced once"
        );
    }
    // The send refused on the full disk was refused, not lost: an error came back, or it
    // was accepted and then goes like any other.
    let send_on_full_disk = if refused.is_err() {
        "refused"
    } else {
        "accepted"
    };
    match refused {
        Err(e) => assert!(e.to_string().contains("Error.Failed"), "{e}"),
        Ok(id) => {
            let status = status_of(&api, &id).await.expect("accepted is stored");
            assert_ne!(status.0, "missing");
        }
    }
    println!(
        "{{\"test\":\"full_disk\",\"incoming\":{},\"waited_on_modem\":{waiting},\"send_on_full_disk\":\"{}\"}}",
        texts.len(),
        send_on_full_disk
    );
    daemon.stop();
}

/// Counts every SMS any simulator instance on `bus` sends (its `Sent` signal), across
/// restarts of the simulator (whose own record of sent SMS dies with it).
async fn count_sent(bus: &Bus) -> std::sync::Arc<std::sync::Mutex<HashMap<String, u32>>> {
    use futures_util::StreamExt;
    let conn = bus.connect().await;
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("org.tandem.MMSim1")
        .member("Sent")
        .build()
        .expect("match rule");
    let mut stream = zbus::MessageStream::for_match_rule(rule, &conn, None)
        .await
        .expect("subscribe to Sent");
    let counts = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
    let seen = counts.clone();
    tokio::spawn(async move {
        let _conn = conn;
        while let Some(Ok(msg)) = stream.next().await {
            if let Ok((_, _, text)) = msg.body().deserialize::<(String, String, String)>() {
                *seen.lock().expect("counts").entry(text).or_insert(0) += 1;
            }
        }
    });
    counts
}

/// ModemManager (the simulator) killed -9 and started again at random points while the
/// daemon sends, the modem taking 20-150 ms per send: a send cut short by it is never
/// sent again blindly. Each message ends sent once, or failed under the rule for an
/// unknown outcome (counted); none is sent twice or lost.
#[tokio::test]
async fn modem_manager_killed_mid_send_never_doubles() {
    let kills = fault_points(8);
    let mut rng = FaultRng::new();
    let system = Bus::start();
    let sent = count_sent(&system).await;
    let sim = Sim::start(&system, &[A]);
    let mut w = DaemonRig::on(system, sim, &config("")).await;
    registered(&w.api).await;

    let mut accepted: Vec<(String, String)> = Vec::new();
    let started = Instant::now();
    for point in 0..kills {
        w.ctl.set_send_delay(A, 20 + rng.below(131) as u32).await;
        for i in 0..1 + rng.below(2) {
            accepted.push(send_out(&w, &mut rng, format!("out {point}.{i}")).await);
        }
        tokio::time::sleep(rng.millis(150)).await;
        w.sim.restart();
        registered(&w.api).await;
    }
    w.ctl.set_send_delay(A, 0).await;
    let api = &w.api;

    let finals = settle(api, &accepted).await;
    let sent = sent.lock().expect("counts").clone();
    let (mut once, mut doubled, mut lost, mut unknown) = (0, 0, 0, 0);
    for ((id, text), (status, error)) in accepted.iter().zip(&finals) {
        let times = sent.get(text).copied().unwrap_or(0);
        match (status.as_str(), times) {
            (_, n) if n > 1 => {
                doubled += 1;
                eprintln!("DOUBLED: {id} {text:?} sent {n} times, status {status}");
            }
            ("sent" | "delivered", 1) => once += 1,
            ("failed", 0 | 1) if error.contains("may not have been sent") => unknown += 1,
            _ => {
                lost += 1;
                eprintln!("LOST: {id} {text:?} status {status} ({error}), sent {times} times");
            }
        }
    }
    let counters = counters(api).await;
    let counted = counters
        .iter()
        .find(|(name, _)| name == "sms-outcome-unknown")
        .map_or(0, |(_, n)| *n);
    println!(
        "{{\"test\":\"modem_manager_killed\",\"kill_points\":{kills},\"accepted\":{},\"sent_once\":{once},\
         \"doubled\":{doubled},\"lost\":{lost},\"failed_unknown_outcome\":{unknown},\
         \"counters\":{counters:?},\"seconds\":{:.1}}}",
        accepted.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!((doubled, lost), (0, 0), "see the lines above");
    assert_eq!(unknown as u64, counted, "every unknown outcome is counted");
}
