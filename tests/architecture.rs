//! The architecture invariants of `ARCHITECTURE.md` that can be read off the source, as
//! tests: each fails, naming the file and line, when a change breaks the rule. (The
//! behavioural invariants are checked by the tests of the modules they are about.)
//!
//! They read `src/` as text: SQL is recognised by its statements' first words in string
//! literals, D-Bus by the `zbus` crate's name, a function's length by its braces.

use std::path::{Path, PathBuf};

/// The longest function allowed in `src/` outside tests, in lines.
const MAX_FUNCTION_LINES: usize = 80;

/// Every `.rs` file under `src/`, with its text, paths relative to the crate root.
fn sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = Vec::new();
    walk(&root.join("src"), &mut paths);
    paths.sort();
    let files: Vec<(String, String)> = paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("read source");
            let rel = path.strip_prefix(root).expect("under root");
            (rel.to_string_lossy().into_owned(), text)
        })
        .collect();
    assert!(files.len() > 50, "src/ not found where expected");
    files
}

/// The lines of `text` before its unit tests (`#[cfg(test)]` followed by a `mod`), with
/// comments removed; a file of tests (`tests.rs`) has none.
fn code_lines<'a>(path: &str, text: &'a str) -> Vec<(usize, &'a str)> {
    if path.ends_with("/tests.rs") {
        return Vec::new();
    }
    let lines: Vec<&str> = text.lines().collect();
    let end = (0..lines.len())
        .find(|&i| {
            lines[i].trim() == "#[cfg(test)]"
                && lines
                    .get(i + 1)
                    .is_some_and(|next| next.trim_start().starts_with("mod "))
        })
        .unwrap_or(lines.len());
    lines[..end]
        .iter()
        .enumerate()
        .map(|(i, line)| (i + 1, line.split("//").next().unwrap_or("")))
        .collect()
}

fn in_any(path: &str, prefixes: &[&str]) -> bool {
    prefixes.iter().any(|p| path.starts_with(p))
}

/// The places in `files` (outside `allowed`) whose code contains one of `needles`.
fn offenders(
    files: &[(String, String)],
    scope: &[&str],
    allowed: &[&str],
    needles: &[&str],
) -> Vec<String> {
    offenders_but(files, scope, allowed, needles, &[])
}

/// [`offenders`], with the phrases of `exempt` not counted where they stand.
fn offenders_but(
    files: &[(String, String)],
    scope: &[&str],
    allowed: &[&str],
    needles: &[&str],
    exempt: &[&str],
) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in files {
        if !in_any(path, scope) || in_any(path, allowed) {
            continue;
        }
        for (n, line) in code_lines(path, text) {
            let line = exempt
                .iter()
                .fold(line.to_owned(), |line, phrase| line.replace(phrase, ""));
            if let Some(needle) = needles.iter().find(|needle| line.contains(*needle)) {
                found.push(format!("{path}:{n}: {needle:?} in {:?}", line.trim()));
            }
        }
    }
    found
}

#[test]
fn only_the_store_and_the_relays_db_know_sql() {
    let sql = [
        "\"SELECT ",
        "\"INSERT ",
        "\"UPDATE ",
        "\"DELETE FROM",
        "\"CREATE ",
        "\"DROP ",
        "\"PRAGMA ",
        "\"BEGIN",
        "\"COMMIT",
        "execute_batch(",
        "pragma_update(",
    ];
    let found = offenders(
        &sources(),
        &["src/"],
        &["src/store/", "src/relay/server/db.rs"],
        &sql,
    );
    assert!(
        found.is_empty(),
        "SQL outside the store:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_daemons_core_knows_no_dbus() {
    // D-Bus belongs to the adapters (modem, logind, NetworkManager's), the API, the
    // wiring, and the tools; the core, the store and the relay client never call it. The
    // engine holds ModemManager's object paths (`zbus::OwnedObjectPath`) as opaque
    // handles that it gives back to the adapter: the one zbus name allowed there.
    let core = [
        "src/engine/",
        "src/router.rs",
        "src/store/",
        "src/domain.rs",
        "src/number.rs",
        "src/sms_text.rs",
        "src/config.rs",
        "src/relay/",
    ];
    let found = offenders_but(
        &sources(),
        &core,
        &[],
        &["zbus", "notify_rust"],
        &["zbus::OwnedObjectPath"],
    );
    assert!(found.is_empty(), "D-Bus in the core:\n{}", found.join("\n"));
}

#[test]
fn the_router_does_no_io_and_waits_for_nothing() {
    let io = [
        "tokio", "async ", "await", "std::fs", "std::io", "std::net", "Mutex", "RwLock", "thread",
        "panic!", "unwrap(", "expect(",
    ];
    let found = offenders(&sources(), &["src/router.rs"], &[], &io);
    assert!(
        found.is_empty(),
        "the router must stay pure:\n{}",
        found.join("\n")
    );
}

/// What a sans-I/O core must not touch: the clock, sockets, files, tasks, threads,
/// channels, the websocket library or the database.
const SANS_IO: [&str; 14] = [
    "Instant::now",
    "SystemTime",
    "now_ms()",
    "tungstenite",
    "std::thread",
    "std::fs",
    "tokio::spawn",
    "tokio::net",
    "tokio::fs",
    "tokio::sync",
    "tokio::task",
    "tokio::time::sleep",
    "TcpStream",
    "rusqlite",
];

#[test]
fn the_cores_of_the_hub_and_the_relay_client_do_no_io() {
    // The hub's core gets the time as `Now`, sends frames through `Link` and keeps state
    // through `Storage` (the seam a second storage, Redis, plugs into); the client's core
    // gets the time with every input and leaves the I/O to its shell (task.rs).
    let cores = [
        "src/relay/server/hub/core.rs",
        "src/relay/server/hub/access.rs",
        "src/relay/server/hub/deliver.rs",
        "src/relay/server/hub/presence.rs",
        "src/relay/client/core.rs",
    ];
    let found = offenders(&sources(), &cores, &[], &SANS_IO);
    assert!(found.is_empty(), "I/O in a core:\n{}", found.join("\n"));
}

#[test]
fn nothing_in_the_daemon_depends_on_the_relay_server() {
    let daemon = [
        "src/engine/",
        "src/api.rs",
        "src/daemon.rs",
        "src/store/",
        "src/modem/",
        "src/relay/client/",
        "src/router.rs",
        "src/logind.rs",
        "src/notifier.rs",
    ];
    let found = offenders(
        &sources(),
        &daemon,
        &[],
        &["relay::server", "super::server"],
    );
    assert!(
        found.is_empty(),
        "the daemon uses the relay server:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_engine_sees_no_relay_wire_types() {
    // Frames are turned into domain types in the relay client; the engine never sees them.
    let found = offenders(&sources(), &["src/engine/"], &[], &["relay::protocol"]);
    assert!(
        found.is_empty(),
        "wire types in the engine:\n{}",
        found.join("\n")
    );
}

/// The length in lines of each function starting in `lines`: (first line, name, length).
fn function_lengths(lines: &[(usize, &str)]) -> Vec<(usize, String, usize)> {
    let mut out = Vec::new();
    for (i, (number, line)) in lines.iter().enumerate() {
        let Some(name) = function_name(line) else {
            continue;
        };
        let (mut depth, mut opened) = (0i64, false);
        for (number_end, rest) in &lines[i..] {
            for c in strip_literals(rest).chars() {
                match c {
                    '{' => {
                        depth += 1;
                        opened = true;
                    }
                    '}' => depth -= 1,
                    _ => {}
                }
            }
            if !opened && rest.trim_end().ends_with(';') {
                break; // a declaration without a body
            }
            if opened && depth <= 0 {
                out.push((*number, name.clone(), number_end - number + 1));
                break;
            }
        }
    }
    out
}

/// The name of the function a line starts (`fn`, with any visibility and qualifiers).
fn function_name(line: &str) -> Option<String> {
    let mut words = line.split_whitespace().peekable();
    while let Some(word) = words.next() {
        match word {
            "fn" => {
                let name: String = words
                    .next()?
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                return (!name.is_empty()).then_some(name);
            }
            "pub" | "async" | "const" | "unsafe" | "extern" | "\"C\"" => {}
            w if w.starts_with("pub(") => {}
            _ => return None,
        }
    }
    None
}

/// A line with its string and character literals emptied, so braces in them do not count.
fn strip_literals(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        match (in_string, c) {
            (true, '\\') => {
                chars.next();
            }
            (true, '"') => in_string = false,
            (true, _) => {}
            (false, '"') => in_string = true,
            (false, '\'') => {
                // A char literal ('{', '\n'); a lifetime has no closing quote soon after.
                let ahead: String = chars.clone().take(3).collect();
                if let Some(escaped) = ahead.strip_prefix('\\') {
                    let close = escaped.find('\'').map_or(0, |i| i + 2);
                    for _ in 0..close {
                        chars.next();
                    }
                } else if ahead.chars().nth(1) == Some('\'') {
                    chars.next();
                    chars.next();
                }
            }
            (false, c) => out.push(c),
        }
    }
    out
}

#[test]
fn no_function_in_src_is_longer_than_80_lines() {
    let mut long = Vec::new();
    for (path, text) in sources() {
        if path.contains("/proxies/") {
            continue; // generated by zbus-xmlgen
        }
        for (line, name, length) in function_lengths(&code_lines(&path, &text)) {
            if length > MAX_FUNCTION_LINES {
                long.push(format!("{path}:{line}: {name} is {length} lines"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions longer than {MAX_FUNCTION_LINES} lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn the_length_check_counts_what_it_should() {
    let source = "fn short() {\n    let s = \"}\";\n    let c = '{';\n}\n\
                  pub(crate) async fn longer<'a>(x: &'a str) {\n    if true {\n    }\n}\n\
                  fn declared();\n";
    let lines: Vec<(usize, &str)> = source
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .collect();
    assert_eq!(
        function_lengths(&lines),
        [(1, "short".to_owned(), 4), (5, "longer".to_owned(), 4)]
    );
    assert_eq!(function_name("    fn f() {"), Some("f".to_owned()));
    assert_eq!(function_name("let fn_name = 1;"), None);
}
