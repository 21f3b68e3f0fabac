//! The notifier against a fake `org.freedesktop.Notifications` server on a private
//! session bus.
//!
//! This file holds a single test on purpose: it points `DBUS_SESSION_BUS_ADDRESS`
//! (process-wide) at its own bus, so it must not share a process with other tests,
//! whichever runner (`cargo test` runs a file's tests as threads of one process).

mod common;

use std::time::{Duration, Instant};

use common::Bus;
use common::notifications::{next_call, start_server};
use tandem::notifier::{APP_NAME, Notice, Notifier, preview};

fn notice(sender: &str, text: &str) -> Notice {
    Notice {
        sender: sender.to_owned(),
        text: text.to_owned(),
    }
}

#[tokio::test]
async fn notifications_reach_the_server_and_never_block() {
    let bus = Bus::start();
    // SAFETY: the only test of this binary, so no other thread reads the environment
    // while it changes; the notifier connects only after this.
    unsafe { std::env::set_var("DBUS_SESSION_BUS_ADDRESS", &bus.address) };

    let notifier = Notifier::spawn(true);

    // No server on the bus: notify returns at once, and a burst beyond the queue is
    // dropped, not waited for.
    let started = Instant::now();
    for n in 0..100 {
        notifier.notify(notice(&format!("+1555000{n:04}"), "nobody listens"));
    }
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "notify blocked for {:?}",
        started.elapsed()
    );
    // Let the task work through (and fail on) the queue before a server appears.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A server appears: the notice arrives, with the text's preview as body.
    let (server, mut calls) = start_server(&bus.address, &["body"]).await;
    let long = format!("<b>hi</b> & {}", "x".repeat(200));
    notifier.notify(notice("+15551234567", &long));
    // Skip what is left of the burst, if the task had not got through it yet.
    let call = loop {
        let call = next_call(&mut calls).await;
        if !call.summary.starts_with("+1555000") {
            break call;
        }
    };
    assert_eq!(call.app_name, APP_NAME);
    assert_eq!(call.app_name, "Tandem");
    assert_eq!(call.summary, "+15551234567");
    assert_eq!(call.body, preview(&long));
    assert!(call.body.ends_with('…'), "{:?}", call.body);
    assert_eq!(call.icon, "mail-message-new");
    assert_eq!(call.replaces_id, 0);
    assert!(call.actions.is_empty());
    assert_eq!(call.expire_timeout, -1);
    assert_eq!(
        call.string_hints.get("category").map(String::as_str),
        Some("im.received")
    );
    assert_eq!(
        call.string_hints.get("desktop-entry").map(String::as_str),
        Some("org.tandem.Messages")
    );

    notifier.notify(notice("ACME", "short"));
    let second = next_call(&mut calls).await;
    assert_eq!(
        (second.summary.as_str(), second.body.as_str()),
        ("ACME", "short")
    );

    // The server is replaced by another: notifications reach the new one.
    drop(calls);
    drop(server);
    let (_server, mut calls) = start_server(&bus.address, &["body"]).await;
    notifier.notify(notice("+491512345678", "a < b && c > d"));
    let plain = next_call(&mut calls).await;
    assert_eq!(plain.summary, "+491512345678");
    assert_eq!(plain.body, "a < b && c > d");

    // A server that reads markup gets summary and body escaped: a sender cannot make
    // text bold, add links or images, or hide part of the text.
    drop(calls);
    drop(_server);
    let (_server, mut calls) = start_server(&bus.address, &["body", "body-markup"]).await;
    let hostile = "<b>wine</b> & &amp; <a href=\"https://pay.example\">pay</a> <img src=\"x\"/>";
    notifier.notify(notice("Bank <i>", hostile));
    let escaped = next_call(&mut calls).await;
    assert_eq!(escaped.summary, "Bank &lt;i&gt;");
    assert_eq!(
        escaped.body,
        "&lt;b&gt;wine&lt;/b&gt; &amp; &amp;amp; &lt;a href=\"https://pay.example\"&gt;pay&lt;/a&gt; \
         &lt;img src=\"x\"/&gt;"
    );
    // The preview is cut before escaping: no entity is cut in half.
    let cut = format!("{}&<>", "x".repeat(99));
    notifier.notify(notice("+15551234567", &cut));
    assert_eq!(
        next_call(&mut calls).await.body,
        format!("{}&amp;…", "x".repeat(99))
    );
    // The same notice to a server without markup arrives as it is.
    drop(calls);
    drop(_server);
    let (_server, mut calls) = start_server(&bus.address, &["body", "actions"]).await;
    notifier.notify(notice("Bank <i>", hostile));
    let plain = next_call(&mut calls).await;
    assert_eq!(
        (plain.summary.as_str(), plain.body.as_str()),
        ("Bank <i>", hostile)
    );

    // A disabled notifier sends nothing.
    Notifier::spawn(false).notify(notice("+15550001111", "silent"));
    notifier.notify(notice("+15550002222", "last"));
    let last = next_call(&mut calls).await;
    assert_eq!(last.summary, "+15550002222");
}
