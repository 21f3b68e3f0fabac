//! The install script puts every file where a distribution expects it, by component
//! (daemon and relay by default, the simulator only when asked for), honouring PREFIX and
//! DESTDIR, with the binaries' real path in the units and activation file, and the
//! generated completions and man pages, which groff renders without a warning and whose
//! SEE ALSO pages all exist.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Ran, program, temp_dir};

/// Runs data/install.sh with PREFIX=/usr into `dest`, with these components.
fn install(dest: &Path, components: &[&str]) -> Ran {
    let tandemd = program("tandemd");
    let bin_dir = Path::new(tandemd.get_program()).parent().expect("bin dir");
    let mut install = Command::new("sh");
    install
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/data/install.sh"))
        .args(components)
        .env("PREFIX", "/usr")
        .env("DESTDIR", dest)
        .env("NO_BUILD", "1")
        .env("BINDIR_SRC", bin_dir);
    Ran::of(&mut install)
}

fn read(root: &Path, file: &str) -> String {
    std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Every file under `root`, relative, sorted.
fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).expect("under root");
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

const DAEMON_FILES: &[&str] = &[
    "usr/bin/tandemd",
    "usr/bin/tandemctl",
    "usr/lib/systemd/user/tandemd.service",
    "usr/share/dbus-1/services/org.tandem.Messages1.service",
    "usr/share/dbus-1/interfaces/org.tandem.Messages1.xml",
    "usr/share/doc/tandem/config.toml",
    "usr/share/doc/tandem/README.md",
    "usr/share/doc/tandem/reliability.md",
    "usr/share/bash-completion/completions/tandemctl",
    "usr/share/zsh/site-functions/_tandemctl",
    "usr/share/fish/vendor_completions.d/tandemctl.fish",
    "usr/share/man/man1/tandemctl.1",
    "usr/share/man/man1/tandemd.1",
];

const RELAY_FILES: &[&str] = &[
    "usr/bin/tandem-relay",
    "usr/lib/systemd/system/tandem-relay.service",
    "usr/share/doc/tandem-relay/relay.conf.example",
    "usr/share/doc/tandem-relay/relay-protocol.md",
    "usr/share/man/man1/tandem-relay.1",
];

#[test]
fn install_honours_prefix_and_destdir() {
    let dest = temp_dir();
    install(dest.path(), &[]).success();
    let root = dest.path();
    let mut expected: Vec<String> = DAEMON_FILES
        .iter()
        .chain(RELAY_FILES)
        .map(|f| f.to_string())
        .collect();
    expected.sort();
    // Exactly these: no simulator in bin or libexec by default.
    assert_eq!(tree(root), expected);
    for (file, start) in [
        (
            "usr/share/bash-completion/completions/tandemctl",
            "_tandemctl()",
        ),
        (
            "usr/share/zsh/site-functions/_tandemctl",
            "#compdef tandemctl",
        ),
        (
            "usr/share/fish/vendor_completions.d/tandemctl.fish",
            "complete -c tandemctl",
        ),
        ("usr/share/man/man1/tandemctl.1", ".TH tandemctl 1"),
        ("usr/share/man/man1/tandemd.1", ".TH tandemd 1"),
        ("usr/share/man/man1/tandem-relay.1", ".TH tandem-relay 1"),
    ] {
        let text = read(root, file);
        assert!(text.contains(start), "{file} lacks {start:?}");
    }
    let unit = read(root, "usr/lib/systemd/user/tandemd.service");
    assert!(unit.contains("ExecStart=/usr/bin/tandemd\n"), "{unit}");
    assert!(unit.contains("Type=dbus") && unit.contains("BusName=org.tandem.Messages1"));
    let activation = read(
        root,
        "usr/share/dbus-1/services/org.tandem.Messages1.service",
    );
    assert!(
        activation.contains("Exec=/usr/bin/tandemd\n"),
        "{activation}"
    );
    assert!(
        activation.contains("SystemdService=tandemd.service"),
        "{activation}"
    );
    let relay_unit = read(root, "usr/lib/systemd/system/tandem-relay.service");
    assert!(
        relay_unit.contains("ExecStart=/usr/bin/tandem-relay --listen"),
        "{relay_unit}"
    );
    assert!(relay_unit.contains("/usr/share/doc/tandem-relay/relay.conf.example"));
    for text in [&unit, &activation, &relay_unit] {
        assert!(
            !text.contains("@bindir@") && !text.contains("@docdir@"),
            "{text}"
        );
    }
    for (file, mode) in [
        ("usr/bin/tandemd", 0o755),
        ("usr/bin/tandem-relay", 0o755),
        ("usr/lib/systemd/system/tandem-relay.service", 0o644),
        ("usr/share/man/man1/tandemd.1", 0o644),
    ] {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = std::fs::metadata(root.join(file)).expect(file);
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
    }
}

#[test]
fn components_install_only_their_own_files() {
    let dest = temp_dir();
    install(dest.path(), &["daemon"]).success();
    let mut expected: Vec<String> = DAEMON_FILES.iter().map(|f| f.to_string()).collect();
    expected.sort();
    assert_eq!(tree(dest.path()), expected);

    let dest = temp_dir();
    install(dest.path(), &["relay"]).success();
    let mut expected: Vec<String> = RELAY_FILES.iter().map(|f| f.to_string()).collect();
    expected.sort();
    assert_eq!(tree(dest.path()), expected);

    // The simulator is a developer tool: only when asked for, and never in bin.
    let dest = temp_dir();
    install(dest.path(), &["simulator"]).success();
    assert_eq!(
        tree(dest.path()),
        vec!["usr/libexec/tandem/tandem-mmsim".to_string()]
    );
    // It runs from there (--help: it touches no bus).
    let ran =
        Ran::of(Command::new(dest.path().join("usr/libexec/tandem/tandem-mmsim")).arg("--help"))
            .success();
    assert!(ran.stdout.contains("--modem"), "{}", ran.stdout);
}

/// The app's component: its binary (built by `cargo build -p tandem-messages`, which this
/// test does not need: a stand-in file takes its place) and the files that make it an app
/// of the desktop, with the D-Bus activation file pointing at the installed binary.
#[test]
fn the_app_component_installs_the_app_and_its_desktop_files() {
    let built = temp_dir();
    std::fs::write(built.path().join("tandem-messages"), "#!/bin/sh\n").expect("stand-in");
    let dest = temp_dir();
    let mut install = Command::new("sh");
    install
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/data/install.sh"))
        .arg("app")
        .env("PREFIX", "/usr")
        .env("DESTDIR", dest.path())
        .env("NO_BUILD", "1")
        .env("BINDIR_SRC", built.path());
    Ran::of(&mut install).success();
    assert_eq!(
        tree(dest.path()),
        [
            "usr/bin/tandem-messages",
            "usr/share/applications/org.tandem.Messages.desktop",
            "usr/share/dbus-1/services/org.tandem.Messages.service",
            "usr/share/icons/hicolor/scalable/apps/org.tandem.Messages.svg",
            "usr/share/metainfo/org.tandem.Messages.metainfo.xml",
        ]
    );
    let service = read(
        dest.path(),
        "usr/share/dbus-1/services/org.tandem.Messages.service",
    );
    assert!(service.contains("Name=org.tandem.Messages\n"), "{service}");
    assert!(
        service.contains("Exec=/usr/bin/tandem-messages"),
        "{service}"
    );
    let desktop = read(
        dest.path(),
        "usr/share/applications/org.tandem.Messages.desktop",
    );
    assert!(desktop.contains("DBusActivatable=true"), "{desktop}");
}

#[test]
fn an_unknown_component_is_refused_before_anything_is_installed() {
    let dest = temp_dir();
    let ran = install(dest.path(), &["daemon", "mmsim"]);
    assert_eq!(ran.status.code(), Some(2), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("unknown component 'mmsim'"),
        "{}",
        ran.stderr
    );
    assert!(tree(dest.path()).is_empty());
}

/// The `name(section)` references of a page's SEE ALSO section, from its roff source.
fn see_also(page: &str) -> Vec<(String, String)> {
    let section = page
        .split(".SH \"SEE ALSO\"")
        .nth(1)
        .expect("a SEE ALSO section");
    let section = section.split("\n.SH").next().unwrap_or(section);
    let text = section.replace("\\-", "-");
    let mut refs = Vec::new();
    for word in text.split([',', ' ', '\n', ';']) {
        if let Some((name, rest)) = word.split_once('(')
            && let Some(sect) = rest.strip_suffix(')')
            && !name.is_empty()
            && sect.len() == 1
        {
            refs.push((name.to_string(), sect.to_string()));
        }
    }
    refs
}

#[test]
fn man_pages_render_without_warnings_and_their_see_also_pages_exist() {
    let dest = temp_dir();
    install(dest.path(), &[]).success();
    let man1 = dest.path().join("usr/share/man/man1");
    for page in ["tandemd.1", "tandemctl.1", "tandem-relay.1"] {
        let path = man1.join(page);
        let ran = match Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(&path)
            .output()
        {
            Ok(out) => Ran {
                status: out.status,
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            },
            Err(e) => panic!("cannot run groff ({e}): install groff-base"),
        };
        assert!(ran.status.success(), "{page}: {}", ran.stderr);
        assert!(ran.stderr.is_empty(), "{page} warns:\n{}", ran.stderr);

        let text = std::fs::read_to_string(&path).expect("page");
        for section in ["SYNOPSIS", "OPTIONS", "ENVIRONMENT", "\"EXIT STATUS\""] {
            assert!(
                text.contains(&format!(".SH {section}")),
                "{page}: no {section}"
            );
        }
        let refs = see_also(&text);
        assert!(!refs.is_empty(), "{page}: empty SEE ALSO");
        for (name, sect) in refs {
            let own = man1.join(format!("{name}.{sect}"));
            if name.starts_with("tandem") {
                assert!(
                    own.is_file(),
                    "{page} refers to {name}({sect}), not installed"
                );
                continue;
            }
            // The system's pages (busctl, journalctl, systemd.exec, ModemManager): found
            // by man-db in the section named.
            let found = Command::new("man")
                .args(["-w", &sect, &name])
                .output()
                .unwrap_or_else(|e| panic!("cannot run man ({e}): install man-db"));
            assert!(
                found.status.success(),
                "{page} refers to {name}({sect}), which man -w does not find: install the \
                 package that has it (systemd, modemmanager) with its man pages"
            );
        }
    }
    // tandemd's and the relay's pages have the sections the generator adds.
    let tandemd = std::fs::read_to_string(man1.join("tandemd.1")).expect("tandemd.1");
    for needle in [
        ".SH FILES",
        ".SH SIGNALS",
        ".SH D-BUS",
        "org.tandem.Messages1",
    ] {
        assert!(tandemd.contains(needle), "tandemd.1 lacks {needle}");
    }
    let relay = std::fs::read_to_string(man1.join("tandem-relay.1")).expect("tandem-relay.1");
    for needle in [
        ".SH FILES",
        ".SH SIGNALS",
        "STATE_DIRECTORY",
        "\\-\\-sms\\-command",
    ] {
        assert!(relay.contains(needle), "tandem-relay.1 lacks {needle}");
    }
}
