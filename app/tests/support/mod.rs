//! The rig of the app's end-to-end test: an X server (Xvfb) and two D-Bus buses of its
//! own, the real `tandem-mmsim` and `tandemd` of this workspace on them, and helpers that
//! read the app's widget tree. Nothing here touches the machine's buses or display:
//! every process is started here, on sockets in a temporary directory, and killed when
//! dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gtk::glib;
use gtk::prelude::*;

/// How long a step may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// A child process, killed and reaped when dropped.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stderr into `log`; with `first_line`, waits for the first line
    /// it prints on stdout and returns it too.
    fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc, String> {
        let stderr = std::fs::File::create(log).map_err(|e| format!("{name} log: {e}"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    fn first_line(&mut self) -> Result<String, String> {
        let stdout = self.child.stdout.take().ok_or("stdout not piped")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(WAIT)
            .map_err(|_| format!("{} printed nothing in time", self.name))?;
        if line.is_empty() {
            return Err(format!("{} exited: {}", self.name, self.log_text()));
        }
        Ok(line.trim().to_owned())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Xvfb on a display number it chooses itself (`-displayfd`), so tests running beside
/// each other never share one.
pub fn xvfb(dir: &Path) -> Result<(Proc, String), String> {
    let mut cmd = Command::new("Xvfb");
    cmd.args([
        "-displayfd",
        "1",
        "-screen",
        "0",
        "1280x1024x24",
        "-nolisten",
        "tcp",
    ])
    .stdout(Stdio::piped());
    let mut proc = Proc::spawn("Xvfb", cmd, &dir.join("xvfb.log"))
        .map_err(|e| format!("{e} (install the xvfb package)"))?;
    let display = proc.first_line()?;
    Ok((proc, format!(":{display}")))
}

/// A private `dbus-daemon` listening in `dir`, with no service activation; its address.
pub fn bus(dir: &Path, name: &str) -> Result<(Proc, String), String> {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let config = dir.join("bus.conf");
    let text = format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
        dir.display()
    );
    std::fs::write(&config, text).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("dbus-daemon");
    cmd.arg(format!("--config-file={}", config.display()))
        .args(["--nofork", "--nopidfile", "--print-address=1"])
        .stdout(Stdio::piped());
    let mut proc = Proc::spawn("dbus-daemon", cmd, &dir.join("bus.log"))?;
    let address = proc.first_line()?;
    Ok((proc, address))
}

/// A program of the workspace, built beside this test (`target/<profile>/`).
pub fn program(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/deps/app-<hash>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("no target directory")?;
    let path = dir.join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is not built: run `cargo build --bins` (or `cargo test --workspace`) first",
            path.display()
        ))
    }
}

/// `tandem-mmsim` with the modems `modems`, on the bus at `system`.
pub fn simulator(system: &str, modems: &[&str], dir: &Path) -> Result<Proc, String> {
    let mut cmd = Command::new(program("tandem-mmsim")?);
    cmd.args(["--bus", system, "--report-delay-ms", "50", "-v"])
        .args(modems.iter().flat_map(|m| ["--modem", m]))
        .stdout(Stdio::piped());
    let mut proc = Proc::spawn("tandem-mmsim", cmd, &dir.join("mmsim.log"))?;
    match proc.first_line()?.as_str() {
        "ready" => Ok(proc),
        other => Err(format!("tandem-mmsim said {other:?}: {}", proc.log_text())),
    }
}

/// `tandemd` on the simulator's modem `modem`, in `dir`, on the two buses.
pub fn daemon(session: &str, system: &str, modem: &str, dir: &Path) -> Result<Proc, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let config = dir.join("config.toml");
    let text = format!(
        "default_region = \"US\"\n\n[sms]\nmodem = \"{modem}\"\n\n[notifications]\nenabled = false\n"
    );
    std::fs::write(&config, text).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(program("tandemd")?);
    cmd.arg("--config")
        .arg(&config)
        .arg("-v")
        .env("DBUS_SESSION_BUS_ADDRESS", session)
        .env("DBUS_SYSTEM_BUS_ADDRESS", system)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("HOME", dir)
        .env_remove("JOURNAL_STREAM")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null());
    // Appends: a restarted daemon keeps the log of the one before.
    let log = dir.join("tandemd.log");
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| e.to_string())?;
    let child = cmd
        .stdin(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start tandemd: {e}"))?;
    Ok(Proc {
        name: "tandemd".into(),
        child,
        log,
    })
}

/// A D-Bus client on a bus, for the rig's own calls (the simulator's control, the
/// daemon's API as another client would use it).
pub struct Client {
    pub conn: zbus::Connection,
}

impl Client {
    pub async fn new(address: &str) -> Result<Client, String> {
        let conn = zbus::connection::Builder::address(address)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        Ok(Client { conn })
    }

    async fn proxy(
        &self,
        service: &'static str,
        path: &'static str,
        interface: &'static str,
    ) -> Result<zbus::Proxy<'static>, String> {
        zbus::proxy::Builder::<zbus::Proxy<'static>>::new(&self.conn)
            .destination(service)
            .path(path)
            .interface(interface)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| e.to_string())
    }

    /// A call to the simulator's control interface.
    pub async fn sim<B, R>(&self, method: &str, body: &B) -> Result<R, String>
    where
        B: serde_like::Body,
        R: for<'d> zbus::wire::DynamicDeserialize<'d>,
    {
        let proxy = self
            .proxy(
                "org.freedesktop.ModemManager1",
                "/org/tandem/MMSim1",
                "org.tandem.MMSim1",
            )
            .await?;
        proxy
            .call(method, body)
            .await
            .map_err(|e| format!("{method}: {e}"))
    }

    /// A call to the daemon's API.
    pub async fn api<B, R>(&self, method: &str, body: &B) -> Result<R, String>
    where
        B: serde_like::Body,
        R: for<'d> zbus::wire::DynamicDeserialize<'d>,
    {
        let proxy = self
            .proxy(
                "org.tandem.Messages1",
                "/org/tandem/Messages1",
                "org.tandem.Messages1",
            )
            .await?;
        proxy
            .call(method, body)
            .await
            .map_err(|e| format!("{method}: {e}"))
    }

    /// Whether `name` has an owner on this bus.
    pub async fn owned(&self, name: &str) -> bool {
        let Ok(dbus) = zbus::fdo::DBusProxy::new(&self.conn).await else {
            return false;
        };
        let Ok(name) = zbus::names::BusName::try_from(name) else {
            return false;
        };
        dbus.name_has_owner(name).await.unwrap_or(false)
    }
}

/// The bound of a call body (kept in one place).
pub mod serde_like {
    pub trait Body: serde::Serialize + zbus::DynamicType + Sync {}
    impl<T: serde::Serialize + zbus::DynamicType + Sync> Body for T {}
}

/// Polls `check` on the GTK main loop until it holds, for at most [`WAIT`]; the error
/// says what was awaited and what `state` showed last.
pub async fn until(
    what: &str,
    mut check: impl FnMut() -> bool,
    state: impl Fn() -> String,
) -> Result<(), String> {
    let deadline = Instant::now() + WAIT;
    while !check() {
        if Instant::now() > deadline {
            return Err(format!(
                "timed out waiting for {what}; the screen:\n{}",
                state()
            ));
        }
        glib::timeout_future(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The children of a widget.
pub fn children(widget: &gtk::Widget) -> Vec<gtk::Widget> {
    let mut out = Vec::new();
    let mut child = widget.first_child();
    while let Some(c) = child {
        child = c.next_sibling();
        out.push(c);
    }
    out
}

/// The rows of a list box, top to bottom.
pub fn rows(list: &gtk::ListBox) -> Vec<gtk::ListBoxRow> {
    children(list.upcast_ref())
        .into_iter()
        .filter_map(|w| w.downcast::<gtk::ListBoxRow>().ok())
        .collect()
}

/// The first label named `name` under `root`, depth first.
pub fn label(root: &gtk::Widget, name: &str) -> Option<gtk::Label> {
    for child in children(root) {
        if child.widget_name() == name
            && let Ok(label) = child.clone().downcast::<gtk::Label>()
        {
            return Some(label);
        }
        if let Some(found) = label(&child, name) {
            return Some(found);
        }
    }
    None
}

/// The text of the label `name` under `row`, if it is there and shown.
pub fn text(row: &impl IsA<gtk::Widget>, name: &str) -> Option<String> {
    label(row.upcast_ref(), name)
        .filter(|l| l.is_visible())
        .map(|l| l.label().to_string())
}

/// Draws `widget` as it is on screen into a PNG at `path`.
pub fn screenshot(widget: &impl IsA<gtk::Widget>, path: &Path) -> Result<(), String> {
    let widget = widget.upcast_ref::<gtk::Widget>();
    let (width, height) = (widget.width(), widget.height());
    let paintable = gtk::WidgetPaintable::new(Some(widget));
    let snapshot = gtk::Snapshot::new();
    paintable.snapshot(&snapshot, f64::from(width), f64::from(height));
    let node = snapshot.to_node().ok_or("nothing drawn")?;
    let renderer = widget.native().ok_or("not on screen")?.renderer();
    let renderer = renderer.ok_or("no renderer")?;
    let texture = renderer.render_texture(
        &node,
        Some(&gtk::graphene::Rect::new(
            0.0,
            0.0,
            width as f32,
            height as f32,
        )),
    );
    texture
        .save_to_png(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}
