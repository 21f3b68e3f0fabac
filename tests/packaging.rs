//! What a distribution takes: the systemd units' sandboxing, measured by systemd's own
//! `systemd-analyze security` on the unit files (offline: nothing is started, no manager
//! is asked), and what the relay's system unit relies on in the binary (its database in
//! `$STATE_DIRECTORY`, logs on stderr when `JOURNAL_STREAM` is not its stderr).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Proc, Ran, program, signal, temp_dir};

/// The relay's system unit: at most 2.0 ("OK"); it is at 1.1.
const RELAY_THRESHOLD: u32 = 20;
/// The daemon's user unit: at most 6.2, what a user unit reaches without user namespaces
/// (7.1 before; systemd/tandemd.service says what is left out and why).
const USER_THRESHOLD: u32 = 62;

/// `unit` with `@bindir@` and `@docdir@` filled in as `data/install.sh` does, in `dir`.
fn installed_unit(dir: &Path, unit: &str) -> PathBuf {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(unit))
        .unwrap_or_else(|e| panic!("{unit}: {e}"));
    let text = text
        .replace("@bindir@", "/usr/bin")
        .replace("@docdir@", "/usr/share/doc/tandem-relay");
    let path = dir.join(Path::new(unit).file_name().expect("file name"));
    std::fs::write(&path, text).expect("write unit");
    path
}

/// `systemd-analyze security --offline=yes --threshold=T [--user] UNIT`, run in `dir`.
fn analyze(dir: &Path, unit: &Path, user: bool, threshold: u32) -> Ran {
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("security")
        .arg("--offline=yes")
        .arg(format!("--threshold={threshold}"))
        .arg("--no-pager")
        .current_dir(dir);
    if user {
        // The offline user-manager analysis still wants a runtime directory to exist.
        let runtime = dir.join("runtime");
        std::fs::create_dir_all(&runtime).expect("runtime dir");
        std::fs::set_permissions(
            &runtime,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .expect("chmod");
        cmd.arg("--user").env("XDG_RUNTIME_DIR", &runtime);
    }
    cmd.arg(unit);
    match cmd.output() {
        Ok(out) => Ran {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "systemd-analyze is missing: install systemd (Debian: apt-get install systemd, \
             version 252 or later for --offline)"
        ),
        Err(e) => panic!("cannot run systemd-analyze: {e}"),
    }
}

/// The overall exposure printed by `systemd-analyze security`, in tenths.
fn exposure(ran: &Ran) -> u32 {
    let line = ran
        .stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no overall exposure:\n{}\n{}", ran.stdout, ran.stderr));
    let figure = line
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unreadable: {line}"));
    let (whole, tenth) = figure
        .split_once('.')
        .unwrap_or_else(|| panic!("unreadable: {line}"));
    whole.parse::<u32>().expect("whole") * 10 + tenth.parse::<u32>().expect("tenth")
}

#[test]
fn relay_system_unit_exposure_is_at_most_2_0() {
    let dir = temp_dir();
    let unit = installed_unit(dir.path(), "systemd/tandem-relay.service");
    let ran = analyze(dir.path(), &unit, false, RELAY_THRESHOLD);
    assert!(
        ran.status.success(),
        "above {RELAY_THRESHOLD}:\n{}\n{}",
        ran.stdout,
        ran.stderr
    );
    let figure = exposure(&ran);
    assert!(figure <= RELAY_THRESHOLD, "{figure}\n{}", ran.stdout);
}

#[test]
fn user_unit_exposure_stays_at_what_a_user_unit_reaches() {
    let dir = temp_dir();
    let unit = installed_unit(dir.path(), "systemd/tandemd.service");
    let ran = analyze(dir.path(), &unit, true, USER_THRESHOLD);
    assert!(
        ran.status.success(),
        "above {USER_THRESHOLD}:\n{}\n{}",
        ran.stdout,
        ran.stderr
    );
    let figure = exposure(&ran);
    assert!(figure <= USER_THRESHOLD, "{figure}\n{}", ran.stdout);
}

/// The threshold bites: a unit without any sandboxing is refused by the same check, so
/// the two tests above cannot pass because the option was ignored.
#[test]
fn an_unsandboxed_unit_fails_the_same_checks() {
    let dir = temp_dir();
    let unit = dir.path().join("bare.service");
    std::fs::write(&unit, "[Service]\nExecStart=/usr/bin/tandem-relay\n").expect("write");
    let system = analyze(dir.path(), &unit, false, RELAY_THRESHOLD);
    assert!(!system.status.success(), "{}", system.stdout);
    assert!(exposure(&system) > RELAY_THRESHOLD);
    let user = analyze(dir.path(), &unit, true, USER_THRESHOLD);
    assert!(!user.status.success(), "{}", user.stdout);
    assert!(exposure(&user) > USER_THRESHOLD);
}

/// The system unit gives the relay no --db: its database must land in the state
/// directory systemd made for it. And the unit's JOURNAL_STREAM, inherited by a child
/// whose stderr is something else, must not swallow the child's logs.
#[test]
fn relay_keeps_its_database_in_the_state_directory_and_logs_to_its_own_stderr() {
    let dir = temp_dir();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    let mut cmd = program("tandem-relay");
    cmd.args(["--listen", "127.0.0.1:0", "--verify", "none"])
        .current_dir(dir.path())
        .env("STATE_DIRECTORY", &state)
        // A stream that is not the relay's stderr (a file's, a pipe's: never 0:1).
        .env("JOURNAL_STREAM", "0:1");
    let log = dir.path().join("relay.log");
    let (mut relay, line) = Proc::start("tandem-relay", cmd, &log);
    assert!(line.starts_with("listening on 127.0.0.1:"), "{line}");
    assert!(
        state.join("relay.db").is_file(),
        "no relay.db in the state directory"
    );
    assert!(
        !dir.path().join("tandem-relay.db").exists(),
        "database in the working directory"
    );
    signal(relay.pid(), "-TERM");
    assert!(relay.wait().success());
    let text = relay.log_text();
    assert!(text.contains("relay listening"), "log: {text}");
    assert!(text.contains("relay stopped"), "log: {text}");
}
