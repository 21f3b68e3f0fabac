//! Evolution Data Server (Debian's `evolution-data-server`) on a private session bus:
//! its source registry and address-book factory, started by the test itself (the
//! private bus activates nothing), with their configuration, data and cache in a
//! temporary directory, GSettings in memory and no system bus, so nothing of the
//! machine's is read or written. [`AddressBook`] writes contacts through EDS's own D-Bus
//! API (`CreateContacts`, `ModifyContacts`, `RemoveContacts`), as GNOME Contacts does.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use super::Bus;
use super::bus::{temp_dir, until_owned};
use super::proc::{Proc, log_text};

pub const REGISTRY: &str = "org.gnome.evolution.dataserver.Sources5";
pub const FACTORY: &str = "org.gnome.evolution.dataserver.AddressBook10";
const REGISTRY_PATH: &str = "/org/gnome/evolution/dataserver/SourceManager";
const FACTORY_PATH: &str = "/org/gnome/evolution/dataserver/AddressBookFactory";
const BOOK_IFACE: &str = "org.gnome.evolution.dataserver.AddressBook";

/// The two EDS services on a private session bus, killed on drop.
pub struct Eds {
    registry: Option<Proc>,
    factory: Option<Proc>,
    session: String,
    pub dir: tempfile::TempDir,
}

impl Eds {
    /// Starts the registry and the factory on `session`; returns once both own their
    /// names.
    pub async fn start(session: &Bus) -> Eds {
        let mut eds = Eds {
            registry: None,
            factory: None,
            session: session.address.clone(),
            dir: temp_dir(),
        };
        eds.start_registry().await;
        eds.start_factory().await;
        eds
    }

    fn command(&self, program: &str) -> Command {
        let home = self.dir.path();
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("DBUS_SESSION_BUS_ADDRESS", &self.session)
            // No system bus: nothing may reach the machine's.
            .env(
                "DBUS_SYSTEM_BUS_ADDRESS",
                "unix:path=/nonexistent/tandem-test",
            )
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_DATA_HOME", home.join("data"))
            .env("XDG_CACHE_HOME", home.join("cache"))
            .env("XDG_RUNTIME_DIR", home)
            .env("GSETTINGS_BACKEND", "memory")
            .env("GIO_USE_VFS", "local")
            .env("GIO_USE_NETWORK_MONITOR", "base");
        cmd
    }

    async fn start_registry(&mut self) {
        let cmd = self.command("/usr/libexec/evolution-source-registry");
        let log = self.dir.path().join("registry.log");
        let proc = self
            .registry
            .insert(Proc::spawn("evolution-source-registry", cmd, &log));
        let exited = || proc.try_wait();
        let name = REGISTRY;
        until_owned(&self.session, name, exited, || log_text(&log)).await;
    }

    async fn start_factory(&mut self) {
        let mut cmd = self.command("/usr/libexec/evolution-addressbook-factory");
        cmd.arg("--keep-running");
        let log = self.dir.path().join("factory.log");
        let proc = self
            .factory
            .insert(Proc::spawn("evolution-addressbook-factory", cmd, &log));
        let exited = || proc.try_wait();
        let name = FACTORY;
        until_owned(&self.session, name, exited, || log_text(&log)).await;
    }

    /// Kills the address-book factory (as if it crashed) and starts it again.
    pub async fn restart_factory(&mut self) {
        self.factory = None;
        self.start_factory().await;
    }

    /// The logs of both services.
    pub fn logs(&self) -> String {
        let log = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        format!(
            "---- registry ----\n{}\n---- factory ----\n{}",
            log(&self.dir.path().join("registry.log")),
            log(&self.dir.path().join("factory.log"))
        )
    }

    /// Adds a local address book (a new source, as an account's would be).
    pub async fn create_book(&self, session: &Bus, uid: &str, name: &str) {
        let conn = session.connect().await;
        let data = format!(
            "[Data Source]\nDisplayName={name}\nEnabled=true\nParent=local-stub\n\n[Address Book]\nBackendName=local\n"
        );
        let sources = HashMap::from([(uid.to_owned(), data)]);
        conn.call_method(
            Some(REGISTRY),
            REGISTRY_PATH,
            Some("org.gnome.evolution.dataserver.SourceManager"),
            "CreateSources",
            &(sources,),
        )
        .await
        .unwrap_or_else(|e| panic!("CreateSources: {e}\n{}", self.logs()));
    }
}

/// One address book, opened through the factory; its contacts written through it.
pub struct AddressBook {
    book: zbus::Proxy<'static>,
    _conn: zbus::Connection,
}

impl AddressBook {
    /// Opens the book of `source_uid` ("system-address-book" is the built-in one).
    pub async fn open(session: &Bus, source_uid: &str) -> AddressBook {
        let conn = session.connect().await;
        let factory = zbus::Proxy::new(
            &conn,
            FACTORY,
            FACTORY_PATH,
            "org.gnome.evolution.dataserver.AddressBookFactory",
        )
        .await
        .expect("factory proxy");
        // A source just made reaches the factory a moment later.
        let deadline = std::time::Instant::now() + super::WAIT;
        let (path, bus): (String, String) = loop {
            match factory.call("OpenAddressBook", &(source_uid,)).await {
                Ok(found) => break found,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("OpenAddressBook {source_uid}: {e}"),
            }
        };
        let book = zbus::Proxy::new_owned(conn.clone(), bus, path, BOOK_IFACE)
            .await
            .expect("book proxy");
        let _: Vec<String> = book.call("Open", &()).await.expect("Open");
        AddressBook { book, _conn: conn }
    }

    /// Adds a contact; its UID.
    pub async fn create(&self, vcard: &str) -> String {
        let uids: Vec<String> = self
            .book
            .call("CreateContacts", &(vec![vcard], 0u32))
            .await
            .expect("CreateContacts");
        uids.into_iter().next().expect("one UID")
    }

    /// Replaces a contact (the vCard carries its UID).
    pub async fn modify(&self, vcard: &str) {
        let () = self
            .book
            .call("ModifyContacts", &(vec![vcard], 0u32))
            .await
            .expect("ModifyContacts");
    }

    pub async fn remove(&self, uid: &str) {
        let () = self
            .book
            .call("RemoveContacts", &(vec![uid], 0u32))
            .await
            .expect("RemoveContacts");
    }
}

/// A vCard 3.0 with these lines between BEGIN and END.
pub fn vcard(lines: &[&str]) -> String {
    let mut text = String::from("BEGIN:VCARD\r\nVERSION:3.0\r\n");
    for line in lines {
        text.push_str(line);
        text.push_str("\r\n");
    }
    text.push_str("END:VCARD\r\n");
    text
}
