//! Tandem Messages (`org.tandem.Messages`): the GTK 4 / libadwaita messenger of Tandem,
//! a client of `tandemd`'s D-Bus API (`org.tandem.Messages1`) and of nothing else.
//!
//! - `api`: the proxy and wire types, written from `dbus/org.tandem.Messages1.xml`;
//! - `backend`: the D-Bus thread (tokio, zbus), behind a command and an event channel;
//! - `model`: what the screens show, as plain data, and how signals change it;
//! - `ui`: the adaptive window that draws the model.

pub mod api;
pub mod backend;
pub mod model;
pub mod ui;

use std::cell::RefCell;
use std::rc::Rc;

use adw::prelude::*;
use gtk::{gio, glib};

/// The application id, which the daemon's notifications name.
pub const APP_ID: &str = "org.tandem.Messages";

/// Runs the app on the session bus of the environment: one window, made when first
/// needed and presented again after.
pub fn run() -> glib::ExitCode {
    let app = adw::Application::builder().application_id(APP_ID).build();
    let window: Rc<RefCell<Option<Rc<ui::Ui>>>> = Rc::default();
    let ensure = move |app: &adw::Application| -> Rc<ui::Ui> {
        window
            .borrow_mut()
            .get_or_insert_with(|| ui::build(app, None))
            .clone()
    };
    let on_activate = ensure.clone();
    app.connect_activate(move |app| on_activate(app).window.present());
    app.connect_startup(move |app| add_actions(app, ensure.clone()));
    app.run()
}

/// The app's actions: `app.open-conversation` (a string, the peer) opens a conversation
/// in the window `ui` gives (made if need be); notifications activate it through
/// `org.freedesktop.Application.ActivateAction`, which may start the app.
pub fn add_actions(app: &adw::Application, ui: impl Fn(&adw::Application) -> Rc<ui::Ui> + 'static) {
    let open = gio::SimpleAction::new("open-conversation", Some(glib::VariantTy::STRING));
    let weak_app = app.downgrade();
    open.connect_activate(move |_, peer| {
        let (Some(app), Some(peer)) = (weak_app.upgrade(), peer.and_then(|p| p.str())) else {
            return;
        };
        let ui = ui(&app);
        ui.open(peer);
        ui.window.present();
    });
    app.add_action(&open);
}
