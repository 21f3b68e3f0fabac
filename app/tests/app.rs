//! End to end, under Xvfb: Tandem Messages against the real `tandemd` and
//! `tandem-mmsim` of this workspace, each on private buses, asserting on the widget tree
//! (labels, badges, the leaflet's state), not on pixels.
//!
//! GTK must run on the process's main thread, so this test has its own `main` (the
//! target has `harness = false`): it starts the rig, runs the app, and drives it with a
//! script on the GTK main loop while a tokio thread talks to the simulator and the
//! daemon. Each step prints `ok` or the first failure, and a failure exits non-zero after
//! every process of the rig is stopped.
//!
//! With `TANDEM_SCREENSHOTS=DIR`, it also saves the screens at 360×720 and 1024×768 there
//! (`docs/screenshots/` holds the committed ones).

mod support;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use adw::prelude::*;
use gtk::glib;
use support::{Client, Proc, rows, text, until};
use tandem_messages::ui::Ui;

const ALICE: &str = "+15550001111";
const BOB: &str = "+15550002222";
const CAROL: &str = "+15559998888";

/// The rig: the processes and what the script needs to reach them. GTK's closures keep
/// clones of it to the process's end, so it is not left to `Drop`: [`Rig::shutdown`]
/// stops every process and removes the directory.
struct Rig {
    /// The simulator, the buses and Xvfb, stopped in this order.
    procs: RefCell<Vec<Proc>>,
    daemon: RefCell<Option<Proc>>,
    session: String,
    system: String,
    dir: RefCell<Option<tempfile::TempDir>>,
    phone_dir: PathBuf,
    runtime: tokio::runtime::Handle,
}

impl Rig {
    /// Runs `f` on the rig's tokio thread with clients of both buses; awaitable from the
    /// GTK main loop.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce(Client, Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, String>> + Send + 'static,
    {
        let (session, system) = (self.session.clone(), self.system.clone());
        self.runtime
            .spawn(async move {
                let s = Client::new(&session).await?;
                let y = Client::new(&system).await?;
                f(s, y).await
            })
            .await
            .map_err(|e| e.to_string())?
    }

    fn daemon_dir(&self) -> PathBuf {
        self.phone_dir.clone()
    }

    /// Stops the daemon, then every other process (killed and reaped), and removes the
    /// temporary directory.
    fn shutdown(&self) {
        self.stop_daemon();
        for proc in self.procs.take() {
            drop(proc);
        }
        drop(self.dir.take());
    }

    /// Starts `tandemd` and waits until it owns its name.
    async fn start_daemon(&self) -> Result<(), String> {
        let proc = support::daemon(&self.session, &self.system, ALICE, &self.daemon_dir())?;
        *self.daemon.borrow_mut() = Some(proc);
        for _ in 0..1000 {
            if self
                .call(|s, _| async move { Ok(s.owned("org.tandem.Messages1").await) })
                .await?
            {
                return Ok(());
            }
            glib::timeout_future(Duration::from_millis(20)).await;
        }
        Err(format!("tandemd did not start:\n{}", self.daemon_log()))
    }

    fn stop_daemon(&self) {
        if let Some(proc) = self.daemon.borrow_mut().take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &proc.pid().to_string()])
                .status();
            // Dropping it waits for the exit.
        }
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.daemon_dir().join("tandemd.log")).unwrap_or_default()
    }

    async fn inject(&self, from: &'static str, text: &'static str) -> Result<(), String> {
        self.call(move |_, system| async move {
            let opts = std::collections::HashMap::<String, zbus::OwnedVariant>::new();
            system
                .sim::<_, zbus::OwnedObjectPath>("InjectSms", &(ALICE, from, text, opts))
                .await
                .map(drop)
        })
        .await
    }

    /// The daemon's own view of a conversation's unread count (as another client reads it).
    async fn unread(&self, peer: &'static str) -> Result<Option<u32>, String> {
        self.call(move |session, _| async move {
            let list: Vec<tandem_messages::api::ConversationDict> =
                session.api("ListConversations", &(0u32, 100u32)).await?;
            Ok(list.into_iter().find(|c| c.peer == peer).map(|c| c.unread))
        })
        .await
    }

    /// The SMS the simulated modem sent: (number, text).
    async fn sent(&self) -> Result<Vec<(String, String)>, String> {
        self.call(|_, system| async move {
            let sent: Vec<std::collections::HashMap<String, zbus::OwnedVariant>> =
                system.sim("GetSent", &(ALICE,)).await?;
            let field = |d: &std::collections::HashMap<String, zbus::OwnedVariant>, k: &str| {
                d.get(k)
                    .and_then(|v| <&str>::try_from(&**v).ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            Ok(sent
                .iter()
                .map(|d| (field(d, "number"), field(d, "text")))
                .collect())
        })
        .await
    }
}

fn main() {
    let outcome = run();
    match outcome {
        Ok(passed) => {
            println!("app: {passed} passed, 0 failed");
        }
        Err(e) => {
            eprintln!("FAILED: {e}");
            println!("app: 0 passed, 1 failed");
            std::process::exit(1);
        }
    }
}

/// Starts the rig, runs the app with the script; the number of steps that passed.
fn run() -> Result<usize, String> {
    let dir = tempfile::Builder::new()
        .prefix("tandem-app-test-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let (xvfb, display) = support::xvfb(dir.path())?;
    let (session_bus, session) = support::bus(dir.path(), "session")?;
    let (system_bus, system) = support::bus(dir.path(), "system")?;
    for sub in ["config", "data", "cache", "runtime"] {
        std::fs::create_dir_all(dir.path().join(sub)).map_err(|e| e.to_string())?;
    }
    let runtime_dir = dir.path().join("runtime");
    std::fs::set_permissions(
        &runtime_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .map_err(|e| e.to_string())?;
    // SAFETY: no other thread runs yet (the rig's processes are children, not threads),
    // so nothing reads the environment while it changes. The app, GTK and GApplication
    // then see only the private display, bus and directories.
    unsafe {
        for (key, value) in [
            ("DISPLAY", display.as_str()),
            ("GDK_BACKEND", "x11"),
            ("GSK_RENDERER", "cairo"),
            ("GTK_A11Y", "none"),
            ("NO_AT_BRIDGE", "1"),
            ("GSETTINGS_BACKEND", "memory"),
            ("DBUS_SESSION_BUS_ADDRESS", session.as_str()),
            ("LC_ALL", "C.UTF-8"),
        ] {
            std::env::set_var(key, value);
        }
        std::env::remove_var("WAYLAND_DISPLAY");
        std::env::remove_var("DBUS_SYSTEM_BUS_ADDRESS");
        for (key, sub) in [
            ("XDG_CONFIG_HOME", "config"),
            ("XDG_DATA_HOME", "data"),
            ("XDG_CACHE_HOME", "cache"),
            ("XDG_RUNTIME_DIR", "runtime"),
        ] {
            std::env::set_var(key, dir.path().join(sub));
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let tokio_thread = std::thread::spawn(move || {
        runtime.block_on(async {
            let _ = stopped.await;
        })
    });

    let sim = support::simulator(&system, &[ALICE, BOB], dir.path())?;
    let rig = Rc::new(Rig {
        procs: RefCell::new(vec![sim, session_bus, system_bus, xvfb]),
        daemon: RefCell::new(None),
        session,
        system,
        phone_dir: dir.path().join("phone"),
        dir: RefCell::new(Some(dir)),
        runtime: handle,
    });
    let outcome = run_app(rig.clone());
    if outcome.is_err() {
        eprintln!("---- tandemd log ----\n{}", rig.daemon_log());
    }
    rig.shutdown();
    let _ = stop.send(());
    let _ = tokio_thread.join();
    outcome
}

fn run_app(rig: Rc<Rig>) -> Result<usize, String> {
    gtk::init().map_err(|e| format!("GTK: {e}"))?;
    adw::init().map_err(|e| format!("libadwaita: {e}"))?;
    let app = adw::Application::builder()
        .application_id(tandem_messages::APP_ID)
        .build();
    let outcome: Rc<RefCell<Result<usize, String>>> =
        Rc::new(RefCell::new(Err("the app never activated".into())));
    let result = outcome.clone();
    app.connect_activate(move |app| {
        let ui = tandem_messages::ui::build(app, None);
        let shown = ui.clone();
        tandem_messages::add_actions(app, move |_| shown.clone());
        ui.window.set_default_size(360, 720);
        ui.window.present();
        let (rig, result, app) = (rig.clone(), result.clone(), app.clone());
        glib::spawn_future_local(async move {
            let outcome = script(&ui, &rig).await;
            *result.borrow_mut() = outcome;
            app.quit();
        });
    });
    // A watchdog: a script stuck past every step's bound still ends the test.
    let watched = app.clone();
    let watchdog_result = outcome.clone();
    glib::timeout_add_local_once(Duration::from_secs(300), move || {
        *watchdog_result.borrow_mut() = Err("the test took more than 300 s".into());
        watched.quit();
    });
    app.run_with_args::<&str>(&[]);
    outcome.replace(Ok(0))
}

/// What the screen shows, for failure messages.
fn dump(ui: &Ui) -> String {
    let mut out = format!(
        "active {} folded {} showing {:?}; banner {:?} {:?}\nlist:\n",
        ui.window.is_active(),
        ui.leaflet.is_folded(),
        ui.leaflet.visible_child().map(|w| w.widget_name()),
        ui.banner.reveals_child(),
        ui.banner_text.label()
    );
    for row in rows(&ui.conversations) {
        out += &format!(
            "  {} | {:?} | {:?} | {:?} | unread {:?}\n",
            row.widget_name(),
            text(&row, "peer"),
            text(&row, "last-text"),
            text(&row, "time"),
            text(&row, "unread"),
        );
    }
    out += "thread:\n";
    for row in rows(&ui.thread) {
        out += &format!("  {:?} | {:?}\n", text(&row, "text"), text(&row, "meta"));
    }
    out += &format!("cost: {:?}\n", ui.sms_cost.label());
    out
}

/// The list's row of `peer`.
fn row(ui: &Ui, peer: &str) -> Option<gtk::ListBoxRow> {
    rows(&ui.conversations)
        .into_iter()
        .find(|r| r.widget_name() == peer)
}

/// The thread's bubble with this text: its meta line.
fn bubble_meta(ui: &Ui, body: &str) -> Option<String> {
    rows(&ui.thread)
        .into_iter()
        .find(|r| text(r, "text").as_deref() == Some(body))
        .and_then(|r| text(&r, "meta"))
}

struct Steps<'a> {
    ui: &'a Ui,
    passed: usize,
}

impl Steps<'_> {
    async fn until(&mut self, what: &str, check: impl FnMut() -> bool) -> Result<(), String> {
        let ui = self.ui;
        until(what, check, || dump(ui)).await?;
        self.passed += 1;
        println!("ok: {what}");
        Ok(())
    }

    fn check(&mut self, what: &str, holds: bool) -> Result<(), String> {
        if !holds {
            return Err(format!(
                "{what} does not hold; the screen:\n{}",
                dump(self.ui)
            ));
        }
        self.passed += 1;
        println!("ok: {what}");
        Ok(())
    }
}

async fn script(ui: &Ui, rig: &Rig) -> Result<usize, String> {
    let mut s = Steps { ui, passed: 0 };
    // Without the daemon: the banner says so.
    s.until("the banner says the daemon is not running", || {
        ui.banner.reveals_child() && ui.banner_text.label().contains("not running")
    })
    .await?;

    // The daemon starts: the app finds it by itself.
    rig.start_daemon().await?;
    s.until("the banner goes once the modem is registered", || {
        !ui.banner.reveals_child()
    })
    .await?;
    rig.inject(CAROL, "hi from Carol").await?;
    s.until("Carol's SMS is listed, unread", || {
        row(ui, CAROL).is_some_and(|r| {
            text(&r, "last-text").as_deref() == Some("hi from Carol")
                && text(&r, "unread").as_deref() == Some("1")
                && text(&r, "time").is_some_and(|t| !t.is_empty())
        })
    })
    .await?;
    s.check(
        "at 360 px the leaflet is folded, showing the list",
        ui.leaflet.is_folded()
            && ui.leaflet.visible_child().as_ref() == Some(ui.list_pane.upcast_ref()),
    )?;

    // An SMS injected in the simulator comes first in the list.
    rig.inject(BOB, "hello from Bob").await?;
    s.until("Bob's SMS comes first, unread", || {
        rows(&ui.conversations).first().is_some_and(|r| {
            r.widget_name() == BOB
                && text(r, "peer").as_deref() == Some(BOB)
                && text(r, "last-text").as_deref() == Some("hello from Bob")
                && text(r, "unread").as_deref() == Some("1")
        }) && rows(&ui.conversations).len() == 2
    })
    .await?;

    screenshot(ui, "list-360x720.png").await?;

    // Opening it shows the thread and marks it read.
    row(ui, BOB).ok_or("no row for Bob")?.activate();
    s.until("the thread replaces the list and shows Bob's SMS", || {
        ui.leaflet.visible_child().as_ref() == Some(ui.thread_pane.upcast_ref())
            && bubble_meta(ui, "hello from Bob").is_some_and(|m| m.starts_with("SMS · "))
            && ui.thread_title.title() == BOB
    })
    .await?;
    s.until("Bob's badge goes", || {
        row(ui, BOB).is_some_and(|r| text(&r, "unread").is_none())
    })
    .await?;
    s.check(
        "the daemon has Bob's conversation read",
        rig.unread(BOB).await? == Some(0),
    )?;
    s.check(
        "Carol's conversation is still unread",
        rig.unread(CAROL).await? == Some(1)
            && row(ui, CAROL).is_some_and(|r| text(&r, "unread").as_deref() == Some("1")),
    )?;

    // Compose: the SMS cost while typing, Enter sends, the status reaches delivered.
    ui.compose.set_text("hi Bob, how are you?");
    s.until("the SMS cost shows as you type", || {
        ui.sms_cost.label() == "1 SMS · GSM 7-bit · 140 left"
    })
    .await?;
    ui.compose.emit_by_name::<()>("activate", &[]);
    s.until("the sent message is in the thread, then delivered", || {
        bubble_meta(ui, "hi Bob, how are you?").is_some_and(|m| m.ends_with("· delivered"))
    })
    .await?;
    s.check(
        "the delivered message went by SMS and the field is empty",
        bubble_meta(ui, "hi Bob, how are you?").is_some_and(|m| m.starts_with("SMS · "))
            && ui.compose.text().is_empty(),
    )?;
    let sent = rig.sent().await?;
    s.check(
        "the simulated modem sent it to Bob",
        sent.iter()
            .any(|(to, body)| to == BOB && body == "hi Bob, how are you?"),
    )?;
    s.check(
        "Bob's conversation shows it last",
        row(ui, BOB)
            .is_some_and(|r| text(&r, "last-text").as_deref() == Some("You: hi Bob, how are you?")),
    )?;
    ui.compose.set_text("Ça va? 👋");
    s.until("a text beyond GSM 7-bit costs Unicode", || {
        ui.sms_cost.label().contains("· Unicode ·")
    })
    .await?;
    ui.compose.set_text("See you at eight?");
    s.until("the cost follows the text", || {
        ui.sms_cost.label() == "1 SMS · GSM 7-bit · 143 left"
    })
    .await?;
    screenshot(ui, "thread-360x720.png").await?;

    // Wide: side by side.
    ui.window.set_default_size(1024, 768);
    s.until(
        "at 1024 px the list and the thread are side by side",
        || !ui.leaflet.is_folded() && ui.list_pane.is_mapped() && ui.thread_pane.is_mapped(),
    )
    .await?;
    screenshot(ui, "thread-1024x768.png").await?;
    ui.compose.set_text("");
    s.until("an empty field costs nothing", || {
        ui.sms_cost.label().is_empty()
    })
    .await?;

    // A message into the open thread, in front of the user: shown and read.
    rig.inject(BOB, "fine, and you?").await?;
    s.until("a new SMS appears in the open thread", || {
        bubble_meta(ui, "fine, and you?").is_some()
    })
    .await?;
    for _ in 0..100 {
        if rig.unread(BOB).await? == Some(0) {
            break;
        }
        glib::timeout_future(Duration::from_millis(20)).await;
    }
    s.check(
        "seen in the open thread, it is read",
        rig.unread(BOB).await? == Some(0)
            && row(ui, BOB).is_some_and(|r| text(&r, "unread").is_none()),
    )?;

    // The daemon restarts: the app follows it by itself.
    rig.stop_daemon();
    s.until("the banner shows while the daemon is gone", || {
        ui.banner.reveals_child() && ui.banner_text.label().contains("not running")
    })
    .await?;
    rig.start_daemon().await?;
    s.until("the banner goes when it is back", || {
        !ui.banner.reveals_child()
    })
    .await?;
    rig.inject(CAROL, "back again").await?;
    s.until("a message after the restart is listed first", || {
        rows(&ui.conversations).first().is_some_and(|r| {
            r.widget_name() == CAROL
                && text(r, "last-text").as_deref() == Some("back again")
                && text(r, "unread").as_deref() == Some("2")
        })
    })
    .await?;
    s.check(
        "the open thread was read again",
        bubble_meta(ui, "hi Bob, how are you?").is_some_and(|m| m.ends_with("· delivered"))
            && bubble_meta(ui, "fine, and you?").is_some(),
    )?;

    // A notification's click: ActivateAction on the app's bus name, as the daemon's
    // notifications call it, opens Carol's conversation and reads it.
    rig.call(|session, _| async move {
        let proxy = zbus::proxy::Builder::<zbus::Proxy<'static>>::new(&session.conn)
            .destination("org.tandem.Messages")
            .path("/org/tandem/Messages")
            .interface("org.freedesktop.Application")
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let peer = vec![zbus::Variant::from(CAROL)];
        let platform = std::collections::HashMap::<&str, zbus::Variant<'_>>::new();
        proxy
            .call::<_, _, ()>("ActivateAction", &("open-conversation", peer, platform))
            .await
            .map_err(|e| format!("ActivateAction: {e}"))
    })
    .await?;
    s.until(
        "open-conversation opens Carol's thread and reads it",
        || {
            ui.thread_title.title() == CAROL
                && bubble_meta(ui, "hi from Carol").is_some()
                && bubble_meta(ui, "back again").is_some()
                && row(ui, CAROL).is_some_and(|r| text(&r, "unread").is_none())
        },
    )
    .await?;

    // A new conversation with a number as a person types it: the thread becomes the
    // daemon's conversation of the normalised number once the message is sent.
    ui.new_number.set_text("(555) 000-2222");
    ui.new_number.emit_by_name::<()>("activate", &[]);
    s.check(
        "a new conversation opens on the number as typed",
        ui.thread_title.title() == "(555) 000-2222" && rows(&ui.thread).is_empty(),
    )?;
    ui.compose.set_text("new thread, same Bob");
    ui.compose.emit_by_name::<()>("activate", &[]);
    s.until("sent, it joins Bob's conversation", || {
        ui.thread_title.title() == BOB
            && bubble_meta(ui, "hello from Bob").is_some()
            && bubble_meta(ui, "new thread, same Bob").is_some_and(|m| m.ends_with("· delivered"))
            && rows(&ui.conversations).first().is_some_and(|r| {
                r.widget_name() == BOB
                    && text(r, "last-text").as_deref() == Some("You: new thread, same Bob")
            })
            && rows(&ui.conversations).len() == 2
    })
    .await?;

    // The modem goes: the banner says SMS wait.
    rig.call(|_, system| async move { system.sim::<_, ()>("RemoveModem", &(ALICE,)).await })
        .await?;
    s.until("the banner shows when the modem goes", || {
        ui.banner.reveals_child() && ui.banner_text.label().contains("No modem")
    })
    .await?;
    Ok(s.passed)
}

/// Saves the window as `name` in `$TANDEM_SCREENSHOTS`, if set, once it is drawn.
async fn screenshot(ui: &Ui, name: &str) -> Result<(), String> {
    let Some(dir) = std::env::var_os("TANDEM_SCREENSHOTS") else {
        return Ok(());
    };
    glib::timeout_future(Duration::from_millis(500)).await;
    support::screenshot(&ui.window, &Path::new(&dir).join(name))
}
