//! The window: an `AdwLeaflet` with the conversation list beside the thread when the
//! window is wide, one at a time when it is narrow (a phone, 360 px), a banner above
//! both, and toasts for errors. It draws `model`'s state and turns the backend's events
//! into changes of that state; it never waits on D-Bus (commands go to the backend
//! thread, answers come back as events).
//!
//! Widgets the tests look for have names: rows of the list are named by their peer and
//! hold the labels `peer`, `time`, `last-text` and `unread`; bubbles of the thread are
//! named by their message id and hold `text` and `meta`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use adw::prelude::*;
use gtk::{glib, pango};

use crate::backend::{Command, Event, Props};
use crate::model::{self, Conversation, Inbox, Message, Thread, ThreadChange};

const CSS: &str = "
.bubble { padding: 6px 10px; border-radius: 14px; margin: 3px 10px; }
.bubble.incoming { background-color: alpha(currentColor, 0.08); }
.bubble.outgoing { background-color: @accent_bg_color; color: @accent_fg_color; }
.bubble.failed { background-color: @error_bg_color; color: @error_fg_color; }
.unread-badge { background-color: @accent_bg_color; color: @accent_fg_color;
  border-radius: 10px; min-width: 20px; padding: 0 6px; font-weight: bold; }
.tandem-banner { background-color: @warning_bg_color; color: @warning_fg_color; padding: 6px 12px; }
";

/// The window and what it shows. Widgets the tests read are public.
pub struct Ui {
    pub window: adw::ApplicationWindow,
    pub leaflet: adw::Leaflet,
    pub list_pane: gtk::Box,
    pub thread_pane: gtk::Box,
    pub conversations: gtk::ListBox,
    pub thread: gtk::ListBox,
    pub thread_title: adw::WindowTitle,
    pub compose: gtk::Entry,
    /// The number of a new conversation (in the list's "+" popover).
    pub new_number: gtk::Entry,
    pub send_button: gtk::Button,
    pub sms_cost: gtk::Label,
    pub banner: gtk::Revealer,
    pub banner_text: gtk::Label,
    toasts: adw::ToastOverlay,
    thread_scroll: gtk::ScrolledWindow,
    state: RefCell<State>,
    commands: async_channel::Sender<Command>,
}

#[derive(Default)]
struct State {
    inbox: Inbox,
    thread: Option<Thread>,
    props: Props,
    running: bool,
    estimate_seq: u64,
    /// The `meta` label of each bubble shown, by message id.
    metas: HashMap<String, (gtk::Box, gtk::Label)>,
}

/// Builds the window of `app` and starts its D-Bus thread on the session bus (`address`,
/// or the environment's). The window is presented by the caller; [`Ui::open`] opens a
/// conversation (the `app.open-conversation` action, [`crate::run`]).
pub fn build(app: &adw::Application, address: Option<String>) -> Rc<Ui> {
    load_css();
    let (commands, events) = crate::backend::spawn(address);
    let ui = Rc::new(Ui::new(app, commands));
    ui.connect();
    // The event loop keeps the UI for the app's life (its handlers hold it weakly).
    let handler = ui.clone();
    glib::spawn_future_local(async move {
        while let Ok(event) = events.recv().await {
            handler.handle(event);
        }
    });
    ui
}

fn load_css() {
    let Some(display) = gtk::gdk::Display::default() else {
        return;
    };
    let provider = gtk::CssProvider::new();
    provider.load_from_data(CSS);
    gtk::style_context_add_provider_for_display(
        &display,
        &provider,
        gtk::STYLE_PROVIDER_PRIORITY_APPLICATION,
    );
}

fn label(text: &str, name: &str, classes: &[&str]) -> gtk::Label {
    let label = gtk::Label::builder()
        .label(text)
        .xalign(0.0)
        .name(name)
        .ellipsize(pango::EllipsizeMode::End)
        .build();
    for class in classes {
        label.add_css_class(class);
    }
    label
}

impl Ui {
    fn new(app: &adw::Application, commands: async_channel::Sender<Command>) -> Ui {
        let conversations = gtk::ListBox::builder().name("conversations").build();
        conversations.add_css_class("navigation-sidebar");
        conversations.set_placeholder(Some(&label(
            "No conversations yet",
            "empty",
            &["dim-label"],
        )));
        let list_header = adw::HeaderBar::builder()
            .title_widget(&adw::WindowTitle::new("Messages", ""))
            .build();
        let new_number = gtk::Entry::builder()
            .name("new-number")
            .placeholder_text("Phone number")
            .input_purpose(gtk::InputPurpose::Phone)
            .build();
        let new_popover = gtk::Popover::builder().child(&new_number).build();
        let new_button = gtk::MenuButton::builder()
            .icon_name("list-add-symbolic")
            .tooltip_text("New conversation")
            .popover(&new_popover)
            .build();
        list_header.pack_start(&new_button);
        let list_pane = gtk::Box::builder()
            .orientation(gtk::Orientation::Vertical)
            .width_request(300)
            .name("list-pane")
            .build();
        list_pane.append(&list_header);
        list_pane.append(
            &gtk::ScrolledWindow::builder()
                .vexpand(true)
                .hscrollbar_policy(gtk::PolicyType::Never)
                .child(&conversations)
                .build(),
        );

        let thread = gtk::ListBox::builder()
            .name("thread")
            .selection_mode(gtk::SelectionMode::None)
            .build();
        let thread_scroll = gtk::ScrolledWindow::builder()
            .vexpand(true)
            .hscrollbar_policy(gtk::PolicyType::Never)
            .child(&thread)
            .build();
        let thread_title = adw::WindowTitle::new("", "");
        let back = gtk::Button::from_icon_name("go-previous-symbolic");
        back.set_tooltip_text(Some("Back"));
        back.set_widget_name("back");
        let thread_header = adw::HeaderBar::builder()
            .title_widget(&thread_title)
            .build();
        thread_header.pack_start(&back);
        let compose = gtk::Entry::builder()
            .name("compose")
            .placeholder_text("Message")
            .hexpand(true)
            .sensitive(false)
            .build();
        let send = gtk::Button::from_icon_name("go-up-symbolic");
        send.set_widget_name("send");
        send.set_tooltip_text(Some("Send"));
        send.add_css_class("circular");
        send.add_css_class("suggested-action");
        let compose_row = gtk::Box::builder()
            .spacing(6)
            .margin_start(8)
            .margin_end(8)
            .margin_top(6)
            .build();
        compose_row.append(&compose);
        compose_row.append(&send);
        let sms_cost = label("", "sms-cost", &["caption", "dim-label"]);
        sms_cost.set_margin_start(12);
        sms_cost.set_margin_bottom(6);
        let thread_pane = gtk::Box::builder()
            .orientation(gtk::Orientation::Vertical)
            .hexpand(true)
            .width_request(360)
            .name("thread-pane")
            .build();
        for child in [
            thread_header.upcast_ref::<gtk::Widget>(),
            thread_scroll.upcast_ref(),
            compose_row.upcast_ref(),
            sms_cost.upcast_ref(),
        ] {
            thread_pane.append(child);
        }

        let leaflet = adw::Leaflet::builder()
            .can_navigate_back(true)
            .fold_threshold_policy(adw::FoldThresholdPolicy::Minimum)
            .build();
        leaflet.append(&list_pane);
        leaflet
            .append(&gtk::Separator::new(gtk::Orientation::Vertical))
            .set_navigatable(false);
        leaflet.append(&thread_pane);
        // Title buttons where they belong: on the right pane when side by side.
        leaflet
            .bind_property("folded", &list_header, "show-end-title-buttons")
            .sync_create()
            .build();
        leaflet
            .bind_property("folded", &thread_header, "show-start-title-buttons")
            .sync_create()
            .build();
        leaflet
            .bind_property("folded", &back, "visible")
            .sync_create()
            .build();
        {
            let leaflet = leaflet.clone();
            let list_pane = list_pane.clone();
            back.connect_clicked(move |_| leaflet.set_visible_child(&list_pane));
        }

        let banner_text = label("", "banner-text", &[]);
        banner_text.set_wrap(true);
        banner_text.set_ellipsize(pango::EllipsizeMode::None);
        let banner_box = gtk::Box::new(gtk::Orientation::Horizontal, 0);
        banner_box.add_css_class("tandem-banner");
        banner_box.append(&banner_text);
        let banner = gtk::Revealer::builder()
            .name("banner")
            .transition_type(gtk::RevealerTransitionType::SlideDown)
            .child(&banner_box)
            .build();
        let toasts = adw::ToastOverlay::new();
        toasts.set_child(Some(&leaflet));
        toasts.set_vexpand(true);
        let content = gtk::Box::new(gtk::Orientation::Vertical, 0);
        content.append(&banner);
        content.append(&toasts);

        let window = adw::ApplicationWindow::builder()
            .application(app)
            .title("Messages")
            .default_width(360)
            .default_height(720)
            .width_request(360)
            .height_request(294)
            .content(&content)
            .build();
        Ui {
            window,
            leaflet,
            list_pane,
            thread_pane,
            conversations,
            thread,
            thread_title,
            compose,
            new_number,
            send_button: send,
            sms_cost,
            banner,
            banner_text,
            toasts,
            thread_scroll,
            state: RefCell::new(State::default()),
            commands,
        }
    }

    /// Signal handlers; they hold the UI weakly (the window must not keep itself).
    fn connect(self: &Rc<Self>) {
        let ui = Rc::downgrade(self);
        self.conversations.connect_row_activated(move |_, row| {
            if let Some(ui) = ui.upgrade() {
                ui.open(&row.widget_name());
            }
        });
        let ui = Rc::downgrade(self);
        self.compose.connect_activate(move |_| {
            if let Some(ui) = ui.upgrade() {
                ui.send();
            }
        });
        let ui = Rc::downgrade(self);
        self.compose.connect_changed(move |entry| {
            if let Some(ui) = ui.upgrade() {
                ui.estimate(&entry.text());
            }
        });
        let ui = Rc::downgrade(self);
        self.new_number.connect_activate(move |entry| {
            let number = entry.text().trim().to_owned();
            if let (Some(ui), false) = (ui.upgrade(), number.is_empty()) {
                entry.set_text("");
                if let Some(popover) = entry
                    .ancestor(gtk::Popover::static_type())
                    .and_downcast::<gtk::Popover>()
                {
                    popover.popdown();
                }
                ui.open(&number);
            }
        });
        let ui = Rc::downgrade(self);
        self.window.connect_is_active_notify(move |_| {
            if let Some(ui) = ui.upgrade() {
                ui.on_active();
            }
        });
        let ui = Rc::downgrade(self);
        self.send_button.connect_clicked(move |_| {
            if let Some(ui) = ui.upgrade() {
                ui.send();
            }
        });
    }

    fn command(&self, command: Command) {
        // Unbounded: never blocks; fails only once the backend is gone.
        let _ = self.commands.try_send(command);
    }

    /// Opens the thread of `peer`: shown at once (empty), filled when the daemon answers,
    /// and marked read.
    pub fn open(&self, peer: &str) {
        {
            let mut state = self.state.borrow_mut();
            state.thread = Some(Thread::new(peer, Vec::new()));
            let title = state
                .inbox
                .get(peer)
                .map(|c| c.title().to_owned())
                .unwrap_or_else(|| peer.to_owned());
            let subtitle = if title == peer { "" } else { peer };
            self.thread_title.set_title(&title);
            self.thread_title.set_subtitle(subtitle);
        }
        self.render_thread();
        self.compose.set_sensitive(true);
        self.compose.set_text("");
        self.leaflet.set_visible_child(&self.thread_pane);
        self.compose.grab_focus();
        self.command(Command::OpenThread {
            peer: peer.to_owned(),
            mark_read: true,
        });
    }

    fn open_peer(&self) -> Option<String> {
        self.state.borrow().thread.as_ref().map(|t| t.peer.clone())
    }

    /// Whether the thread is on screen (not hidden behind the list of a folded leaflet).
    fn thread_visible(&self) -> bool {
        !self.leaflet.is_folded()
            || self.leaflet.visible_child().as_ref() == Some(self.thread_pane.upcast_ref())
    }

    /// Whether the user has the open thread in front of them: shown, in the active
    /// window (not behind another app or a locked screen).
    fn thread_seen(&self) -> bool {
        self.window.is_active() && self.thread_visible()
    }

    /// The window came to the front: what arrived in the open thread meanwhile is read.
    fn on_active(&self) {
        let Some(peer) = self.open_peer() else {
            return;
        };
        let unread = self
            .state
            .borrow()
            .inbox
            .get(&peer)
            .is_some_and(|c| c.unread > 0);
        if unread && self.thread_seen() {
            self.command(Command::MarkRead(peer));
        }
    }

    fn send(&self) {
        let text = self.compose.text().to_string();
        let Some(peer) = self.open_peer() else {
            return;
        };
        if text.trim().is_empty() {
            return;
        }
        self.compose.set_text("");
        self.command(Command::Send { peer, text });
    }

    fn estimate(&self, text: &str) {
        let seq = {
            let mut state = self.state.borrow_mut();
            state.estimate_seq += 1;
            state.estimate_seq
        };
        if text.is_empty() {
            self.sms_cost.set_label("");
        } else {
            self.command(Command::Estimate {
                text: text.to_owned(),
                seq,
            });
        }
    }

    fn toast(&self, text: &str) {
        self.toasts.add_toast(adw::Toast::new(text));
    }

    fn handle(&self, event: Event) {
        match event {
            Event::Daemon(running) => {
                self.state.borrow_mut().running = running;
                self.render_banner();
                if let (true, Some(peer)) = (running, self.open_peer()) {
                    // A fresh start: the open thread is read again.
                    self.command(Command::OpenThread {
                        peer,
                        mark_read: self.thread_seen(),
                    });
                }
            }
            Event::Props(props) => {
                self.state.borrow_mut().props = props;
                self.render_banner();
            }
            Event::Conversations(list) => {
                self.state.borrow_mut().inbox.replace(list);
                self.render_list();
            }
            Event::Thread { peer, messages } => {
                let mut state = self.state.borrow_mut();
                if state.thread.as_ref().is_some_and(|t| t.peer == peer) {
                    state.thread = Some(Thread::new(&peer, messages));
                    drop(state);
                    self.render_thread();
                }
            }
            Event::Received(m) => self.on_message(m, true),
            Event::Message(m) => self.on_message(m, false),
            Event::Sent { to, message } => {
                // A new conversation started with the number as typed: the thread
                // becomes the daemon's conversation of the normalised number.
                if self.open_peer().as_deref() == Some(to.as_str()) && message.peer != to {
                    self.open(&message.peer);
                }
                self.on_message(message, false);
            }
            Event::Status {
                id,
                status,
                channel,
            } => self.on_status(&id, &status, &channel),
            Event::Read(peer) => {
                self.state.borrow_mut().inbox.mark_read(&peer);
                self.render_list();
            }
            Event::MessageDeleted(id) => self.on_deleted(&id),
            Event::ConversationDeleted(peer) => {
                self.state.borrow_mut().inbox.remove(&peer);
                self.render_list();
                if self.open_peer().as_deref() == Some(peer.as_str()) {
                    self.state.borrow_mut().thread = None;
                    self.compose.set_sensitive(false);
                    self.render_thread();
                    self.leaflet.set_visible_child(&self.list_pane);
                }
            }
            Event::Estimate { seq, estimate } => {
                if seq == self.state.borrow().estimate_seq {
                    let text = match estimate {
                        Ok((segments, encoding, remaining)) => {
                            model::sms_cost(segments, &encoding, remaining)
                        }
                        Err(why) => why,
                    };
                    self.sms_cost.set_label(&text);
                }
            }
            Event::SendFailed { peer, text, error } => {
                self.toast(&format!("Not sent: {error}"));
                if self.open_peer().as_deref() == Some(peer.as_str())
                    && self.compose.text().is_empty()
                {
                    self.compose.set_text(&text);
                }
            }
            Event::Error(text) => self.toast(&text),
        }
    }

    /// A message new or fresher: into the list, and into the thread if it is open.
    /// A received one read in front of the user is marked read.
    fn on_message(&self, m: Message, received: bool) {
        let open = self.open_peer().as_deref() == Some(m.peer.as_str());
        let seen = open && self.thread_seen();
        self.state.borrow_mut().inbox.on_message(&m, seen);
        self.render_list();
        if open {
            let peer = m.peer.clone();
            let change = match self.state.borrow_mut().thread.as_mut() {
                Some(t) => t.upsert(m.clone()),
                None => ThreadChange::None,
            };
            match change {
                ThreadChange::Added(_) => self.append_bubble(&m),
                ThreadChange::Updated(_) => self.update_bubble(&m),
                ThreadChange::None => {}
            }
            if seen && received {
                self.command(Command::MarkRead(peer));
            }
        }
    }

    fn on_status(&self, id: &str, status: &str, channel: &str) {
        let shown = {
            let mut state = self.state.borrow_mut();
            let changed = state
                .thread
                .as_mut()
                .map(|t| t.set_status(id, status, channel));
            match changed {
                Some(ThreadChange::Updated(i)) => {
                    state.thread.as_ref().map(|t| t.messages()[i].clone())
                }
                _ => None,
            }
        };
        match shown {
            Some(m) => self.update_bubble(&m),
            None => {
                // A message no screen knows (sent by another client): fetch it once.
                if !self.state.borrow().inbox.knows(id) {
                    self.command(Command::Fetch(id.to_owned()));
                }
            }
        }
    }

    fn on_deleted(&self, id: &str) {
        let removed = self
            .state
            .borrow_mut()
            .thread
            .as_mut()
            .and_then(|t| t.remove(id));
        let shown = removed.and_then(|_| self.state.borrow_mut().metas.remove(id));
        if let Some(row) = shown.and_then(|(bubble, _)| bubble.parent()) {
            self.thread.remove(&row);
        }
        // The list's last text may have been this one.
        self.command(Command::ReloadList);
    }

    fn render_banner(&self) {
        let state = self.state.borrow();
        let text = model::banner(
            state.running,
            &state.props.modem_state,
            &state.props.relay_state,
        );
        self.banner_text.set_label(text.as_deref().unwrap_or(""));
        self.banner.set_reveal_child(text.is_some());
    }

    fn render_list(&self) {
        while let Some(row) = self.conversations.first_child() {
            self.conversations.remove(&row);
        }
        let state = self.state.borrow();
        let open = state.thread.as_ref().map(|t| t.peer.as_str());
        for c in state.inbox.conversations() {
            let row = conversation_row(c);
            self.conversations.append(&row);
            if open == Some(c.peer.as_str()) {
                self.conversations.select_row(Some(&row));
            }
        }
    }

    fn render_thread(&self) {
        while let Some(row) = self.thread.first_child() {
            self.thread.remove(&row);
        }
        self.state.borrow_mut().metas.clear();
        let messages = match &self.state.borrow().thread {
            Some(t) => t.messages().to_vec(),
            None => Vec::new(),
        };
        for m in &messages {
            self.append_bubble(m);
        }
    }

    fn append_bubble(&self, m: &Message) {
        let (row, bubble, meta) = bubble(m);
        self.thread.append(&row);
        self.state
            .borrow_mut()
            .metas
            .insert(m.id.clone(), (bubble, meta));
        // To the newest message, once the row has its size.
        let adjustment = self.thread_scroll.vadjustment();
        glib::idle_add_local_once(move || adjustment.set_value(adjustment.upper()));
    }

    fn update_bubble(&self, m: &Message) {
        if let Some((bubble, meta)) = self.state.borrow().metas.get(&m.id) {
            meta.set_label(&model::bubble_meta(m, &bubble_time(m.timestamp_ms)));
            if m.status == "failed" {
                bubble.add_css_class("failed");
            } else {
                bubble.remove_css_class("failed");
            }
        }
    }
}

fn conversation_row(c: &Conversation) -> gtk::ListBoxRow {
    let title = label(c.title(), "peer", &["heading"]);
    title.set_hexpand(true);
    let time = label(
        &list_time(c.last_timestamp_ms),
        "time",
        &["caption", "dim-label"],
    );
    let top = gtk::Box::new(gtk::Orientation::Horizontal, 6);
    top.append(&title);
    top.append(&time);
    let one_line = c.last_text.replace('\n', " ");
    let last = if c.last_outgoing {
        format!("You: {one_line}")
    } else {
        one_line
    };
    let last = label(&last, "last-text", &["dim-label"]);
    last.set_hexpand(true);
    let unread = label(&c.unread.to_string(), "unread", &["unread-badge"]);
    unread.set_xalign(0.5);
    unread.set_visible(c.unread > 0);
    let bottom = gtk::Box::new(gtk::Orientation::Horizontal, 6);
    bottom.append(&last);
    bottom.append(&unread);
    let column = gtk::Box::builder()
        .orientation(gtk::Orientation::Vertical)
        .spacing(2)
        .margin_top(6)
        .margin_bottom(6)
        .build();
    column.append(&top);
    column.append(&bottom);
    let row = gtk::ListBoxRow::builder()
        .name(c.peer.as_str())
        .child(&column)
        .build();
    if c.unread > 0 {
        row.add_css_class("unread");
    }
    row
}

/// A message's bubble: its row, the bubble (for its state's style) and its `meta` label.
fn bubble(m: &Message) -> (gtk::ListBoxRow, gtk::Box, gtk::Label) {
    let text = gtk::Label::builder()
        .label(m.text.as_str())
        .name("text")
        .wrap(true)
        .wrap_mode(pango::WrapMode::WordChar)
        .xalign(0.0)
        .selectable(true)
        .max_width_chars(40)
        .build();
    let meta = label(
        &model::bubble_meta(m, &bubble_time(m.timestamp_ms)),
        "meta",
        &["caption"],
    );
    meta.set_opacity(0.8);
    let bubble = gtk::Box::builder()
        .orientation(gtk::Orientation::Vertical)
        .spacing(2)
        .halign(if m.outgoing {
            gtk::Align::End
        } else {
            gtk::Align::Start
        })
        .build();
    bubble.add_css_class("bubble");
    bubble.add_css_class(if m.outgoing { "outgoing" } else { "incoming" });
    if m.status == "failed" {
        bubble.add_css_class("failed");
    }
    bubble.append(&text);
    bubble.append(&meta);
    let row = gtk::ListBoxRow::builder()
        .name(m.id.as_str())
        .activatable(false)
        .selectable(false)
        .child(&bubble)
        .build();
    (row, bubble, meta)
}

/// A local date-time from ms since the epoch, and today's.
fn local(ms: i64) -> Option<(glib::DateTime, glib::DateTime)> {
    let at = glib::DateTime::from_unix_local(ms.div_euclid(1000)).ok()?;
    let now = glib::DateTime::now_local().ok()?;
    Some((at, now))
}

fn format(at: &glib::DateTime, pattern: &str) -> String {
    at.format(pattern)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The list's time: the hour today, the day this year, the date before.
fn list_time(ms: i64) -> String {
    let Some((at, now)) = local(ms) else {
        return String::new();
    };
    if at.year() == now.year() && at.day_of_year() == now.day_of_year() {
        format(&at, "%H:%M")
    } else if at.year() == now.year() {
        format(&at, "%e %b")
    } else {
        format(&at, "%x")
    }
}

/// A bubble's time: the hour, with the day when not today.
fn bubble_time(ms: i64) -> String {
    let Some((at, now)) = local(ms) else {
        return String::new();
    };
    if at.year() == now.year() && at.day_of_year() == now.day_of_year() {
        format(&at, "%H:%M")
    } else {
        format(&at, "%e %b %H:%M")
    }
}
