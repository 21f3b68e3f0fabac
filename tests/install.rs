//! The install script puts every file where a distribution expects it, honouring
//! PREFIX and DESTDIR, with the binaries' real path in the unit and activation file,
//! and tandemctl's generated completions and man page.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Ran, program, temp_dir};

#[test]
fn install_honours_prefix_and_destdir() {
    let dest = temp_dir();
    let tandemd = program("tandemd");
    let bin_dir = Path::new(tandemd.get_program()).parent().expect("bin dir");
    let mut install = Command::new("sh");
    install
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/data/install.sh"))
        .env("PREFIX", "/usr")
        .env("DESTDIR", dest.path())
        .env("NO_BUILD", "1")
        .env("BINDIR_SRC", bin_dir);
    Ran::of(&mut install).success();
    let root = dest.path();
    for file in [
        "usr/bin/tandemd",
        "usr/bin/tandem-mmsim",
        "usr/lib/systemd/user/tandemd.service",
        "usr/share/dbus-1/services/org.tandem.Messages1.service",
        "usr/share/dbus-1/interfaces/org.tandem.Messages1.xml",
        "usr/share/doc/tandem/config.toml",
        "usr/bin/tandemctl",
    ] {
        assert!(root.join(file).is_file(), "{file} not installed");
    }
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
    ] {
        let text = std::fs::read_to_string(root.join(file))
            .unwrap_or_else(|e| panic!("{file} not installed: {e}"));
        assert!(text.contains(start), "{file} lacks {start:?}");
    }
    let unit =
        std::fs::read_to_string(root.join("usr/lib/systemd/user/tandemd.service")).expect("unit");
    assert!(unit.contains("ExecStart=/usr/bin/tandemd\n"), "{unit}");
    assert!(unit.contains("Type=dbus") && unit.contains("BusName=org.tandem.Messages1"));
    let activation = std::fs::read_to_string(
        root.join("usr/share/dbus-1/services/org.tandem.Messages1.service"),
    )
    .expect("activation file");
    assert!(
        activation.contains("Exec=/usr/bin/tandemd\n"),
        "{activation}"
    );
    assert!(
        activation.contains("SystemdService=tandemd.service"),
        "{activation}"
    );
    assert!(!unit.contains("@bindir@") && !activation.contains("@bindir@"));
}
