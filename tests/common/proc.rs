//! Child processes of a test: started with their log (stderr) in a file, killed and
//! reaped when dropped, their log printed when the test fails.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;

use super::WAIT;

/// A running child process, killed when dropped.
pub struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with its stderr appended to `log`.
    pub fn spawn(name: &'static str, mut cmd: Command, log: &Path) -> Proc {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        // The tests' own RUST_LOG is not the program's, unless the command sets one.
        let chosen = cmd
            .get_envs()
            .any(|(key, value)| key == "RUST_LOG" && value.is_some());
        if !chosen {
            cmd.env_remove("RUST_LOG");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name,
            child,
            log: log.to_owned(),
        }
    }

    /// [`Proc::spawn`] with its stdout piped; returns it with the first line it prints
    /// (the programs under test print `ready` or their address), failing if none comes
    /// within [`WAIT`].
    pub fn start(name: &'static str, mut cmd: Command, log: &Path) -> (Proc, String) {
        cmd.stdout(Stdio::piped());
        let mut proc = Proc::spawn(name, cmd, log);
        let stdout = proc.child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("{name} printed nothing in time"));
        assert!(!line.is_empty(), "{name} exited: {}", proc.log_text());
        (proc, line.trim().to_owned())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for a child")
    }

    /// Waits for it to exit.
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait for a child")
    }

    pub fn log_text(&self) -> String {
        log_text(&self.log)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} log ----\n{}", self.name, self.log_text());
        }
    }
}

/// The text of a log file, empty if there is none.
pub fn log_text(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    text
}

/// Sends `sig` (such as `-STOP`) to `pid` with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}

/// One of the crate's programs, by its name.
pub fn program(name: &str) -> Command {
    Command::new(match name {
        "tandemd" => env!("CARGO_BIN_EXE_tandemd"),
        "tandem-mmsim" => env!("CARGO_BIN_EXE_tandem-mmsim"),
        "tandem-relay" => env!("CARGO_BIN_EXE_tandem-relay"),
        "tandemctl" => env!("CARGO_BIN_EXE_tandemctl"),
        "tandem-demo" => env!("CARGO_BIN_EXE_tandem-demo"),
        "tandem-bench" => env!("CARGO_BIN_EXE_tandem-bench"),
        other => panic!("no program {other}"),
    })
}

/// A finished run of a program, its output as text.
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Runs `cmd` to its end.
    pub fn of(cmd: &mut Command) -> Ran {
        let out = cmd.output().expect("the program runs");
        Ran {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Fails, with both outputs, unless it exited with 0.
    #[track_caller]
    pub fn success(self) -> Ran {
        assert!(
            self.status.success(),
            "{}\n{}\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Fails, with both outputs, if it exited with 0.
    #[track_caller]
    pub fn failure(self) -> Ran {
        assert!(
            !self.status.success(),
            "accepted:\n{}\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}
