//! A fake AT modem on a unix socket: what ModemManager's generic plugin needs from a GSM
//! modem with a SIM, registered on a home network, with SMS storage in PDU mode.
//!
//! ModemManager's test mode (`Test.SetProfile`) grabs a "virtual" port, which is a unix
//! socket path it connects to whenever it opens the port (each open is a new connection).
//! The modem answers the commands of probing, initialisation and enabling, keeps two SMS
//! storages ("SM" and "ME") selected with `+CPMS`, takes SMS-SUBMITs with `+CMGS` (after the
//! `> ` prompt) and `+CMGW`/`+CMSS`, lists, reads and deletes with `+CMGL`/`+CMGR`/`+CMGD`,
//! and can be told to deliver an SMS (stored, then `+CMTI`), a status report (`+CDS`), or
//! to answer the next sends late, with a `+CMS ERROR`, or with no prompt. Unknown commands get
//! `ERROR`, as on a modem that does not have them. Everything it saw stays readable for the
//! tests. It runs on plain threads, so it keeps answering whatever the test's runtime does.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::pdu::{self, Scts, Submit};

/// A command line or a PDU longer than this is a protocol error of the test, not data.
const MAX_LINE: usize = 4096;

/// What the modem does with the next SMS-SUBMIT it is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendReply {
    /// `+CMGS: <ref>` and `OK` at once.
    Accept,
    /// The same, after this long (the network takes its time).
    AcceptAfter(Duration),
    /// `+CMS ERROR: <code>` (3GPP TS 27.005 §3.2.5).
    CmsError(u16),
    /// Never gives the `> ` prompt after `AT+CMGS=<len>`.
    NoPrompt,
}

/// An SMS storage of the modem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mem {
    Sm,
    Me,
}

impl Mem {
    fn parse(name: &str) -> Option<Mem> {
        match name.trim().trim_matches('"').to_ascii_uppercase().as_str() {
            "SM" => Some(Mem::Sm),
            "ME" | "MT" => Some(Mem::Me),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Mem::Sm => "SM",
            Mem::Me => "ME",
        }
    }
}

/// `<stat>` of 27.005 in PDU mode.
pub const REC_UNREAD: u8 = 0;
pub const REC_READ: u8 = 1;
pub const STO_UNSENT: u8 = 2;
pub const STO_SENT: u8 = 3;

const STORAGE_SIZE: usize = 30;

/// One SMS in a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub stat: u8,
    pub pdu: String,
}

impl Stored {
    /// Reads it as `+CMGR` and `+CMGL` show it (`<stat>,,<length>\r\n<pdu>`, before
    /// the marking read); an unread SMS is read from then on.
    fn read(&mut self) -> String {
        let shown = format!(
            "{},,{}\r\n{}",
            self.stat,
            pdu::tpdu_len(&self.pdu),
            self.pdu
        );
        if self.stat == REC_UNREAD {
            self.stat = REC_READ;
        }
        shown
    }
}

/// One SMS-SUBMIT the modem took, and the reference it answered (`None`: it answered an
/// error, or not yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub submit: Submit,
    pub reference: Option<u8>,
    /// Sent from storage with `+CMSS` rather than given with `+CMGS`.
    pub from_storage: bool,
}

/// The modem's identity.
#[derive(Debug, Clone)]
pub struct Identity {
    pub imei: String,
    pub imsi: String,
    /// The SIM's own number (`+CNUM`); `None`: the SIM does not carry it.
    pub own_number: Option<String>,
}

#[derive(Debug)]
struct State {
    identity: Identity,
    storages: BTreeMap<Mem, BTreeMap<u32, Stored>>,
    /// Read/list/delete, write/send, and where incoming SMS go (`+CPMS`).
    mem1: Mem,
    mem2: Mem,
    mem3: Mem,
    powered: bool,
    /// `+COPS=3,<format>`: 0 long name, 2 numeric.
    cops_format: u8,
    next_reference: u8,
    replies: VecDeque<SendReply>,
    submitted: Vec<Submitted>,
    commands: Vec<String>,
    /// What the port got that a modem would not understand.
    faults: Vec<String>,
}

struct Shared {
    state: Mutex<State>,
    /// The open connection, for answers and unsolicited messages (one write at a time).
    port: Mutex<Option<UnixStream>>,
    stop: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `text` on the open connection, if any, in one piece. A connection that
    /// cannot be written to was closed by ModemManager (or ModemManager died): what was
    /// said is lost, as on a serial line nobody listens to.
    fn write(&self, text: &str) {
        let mut port = self.port.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stream) = port.as_mut()
            && stream.write_all(text.as_bytes()).is_err()
        {
            *port = None;
        }
    }
}

/// The fake modem, listening on its socket until dropped.
pub struct FakeModem {
    shared: Arc<Shared>,
    path: PathBuf,
    acceptor: Option<JoinHandle<()>>,
}

impl FakeModem {
    /// Listens on `path` (a unix socket path for `Test.SetProfile`).
    pub fn start(path: &Path, identity: Identity) -> FakeModem {
        let listener = UnixListener::bind(path).expect("bind the fake modem's socket");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                identity,
                storages: BTreeMap::from([(Mem::Sm, BTreeMap::new()), (Mem::Me, BTreeMap::new())]),
                mem1: Mem::Sm,
                mem2: Mem::Sm,
                mem3: Mem::Sm,
                powered: false,
                cops_format: 0,
                next_reference: 0,
                replies: VecDeque::new(),
                submitted: Vec::new(),
                commands: Vec::new(),
                faults: Vec::new(),
            }),
            port: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::spawn(move || accept_loop(listener, shared))
        };
        FakeModem {
            shared,
            path: path.to_owned(),
            acceptor: Some(acceptor),
        }
    }

    /// The socket path to give to `Test.SetProfile`.
    pub fn port(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// How the next SMS-SUBMITs are answered, in order; then `Accept` again.
    pub fn queue_send_replies(&self, replies: impl IntoIterator<Item = SendReply>) {
        self.shared.state().replies.extend(replies);
    }

    /// Every SMS-SUBMIT taken so far.
    pub fn submitted(&self) -> Vec<Submitted> {
        self.shared.state().submitted.clone()
    }

    /// What a storage holds, by index.
    pub fn storage(&self, mem: Mem) -> BTreeMap<u32, Stored> {
        self.shared.state().storages[&mem].clone()
    }

    /// Every command line received, in order.
    pub fn commands(&self) -> Vec<String> {
        self.shared.state().commands.clone()
    }

    /// Malformed input seen on the port (undecodable PDUs, endless lines).
    pub fn faults(&self) -> Vec<String> {
        self.shared.state().faults.clone()
    }

    /// An SMS arrives from the network: stored where incoming SMS go (`mem3`), announced
    /// with `+CMTI`. Returns its storage and index.
    pub fn deliver(&self, sender: &str, text: &str, scts: &Scts) -> (Mem, u32) {
        let pdu = pdu::encode_deliver(sender, text, scts);
        let (mem, index) = {
            let mut state = self.shared.state();
            let mem = state.mem3;
            let index = state
                .store(
                    mem,
                    Stored {
                        stat: REC_UNREAD,
                        pdu,
                    },
                )
                .expect("room in the fake modem's storage");
            (mem, index)
        };
        self.shared
            .write(&format!("\r\n+CMTI: \"{}\",{index}\r\n", mem.name()));
        (mem, index)
    }

    /// A status report for the SMS with `reference` to `recipient`, routed straight to the
    /// host (`+CDS`), as `AT+CNMI=2,1,2,1,0` asks.
    pub fn report_status(&self, recipient: &str, reference: u8, status: u8, at: &Scts) {
        let pdu = pdu::encode_status_report(recipient, reference, status, at, at);
        self.shared
            .write(&format!("\r\n+CDS: {}\r\n{pdu}\r\n", pdu::tpdu_len(&pdu)));
    }
}

impl Drop for FakeModem {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(stream) = self
            .shared
            .port
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        // Wakes the acceptor up so that it sees `stop`.
        let _ = UnixStream::connect(&self.path);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    let mut readers = Vec::new();
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let Ok(writer) = stream.try_clone() else {
            continue;
        };
        // A new open of the port replaces the old one (ModemManager closed it, or died).
        if let Some(old) = shared
            .port
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(writer)
        {
            let _ = old.shutdown(std::net::Shutdown::Both);
        }
        let shared = shared.clone();
        readers.push(std::thread::spawn(move || serve(stream, shared)));
    }
    for reader in readers {
        let _ = reader.join();
    }
}

/// What the reader is collecting.
enum Input {
    Commands,
    /// The PDU after the prompt of `+CMGS` (`store` false) or `+CMGW` (true).
    Pdu {
        store: bool,
    },
}

fn serve(mut stream: UnixStream, shared: Arc<Shared>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut input = Input::Commands;
    let mut chunk = [0u8; 2048];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match input {
                Input::Commands => {
                    let Some(end) = buf.iter().position(|&b| b == b'\r') else {
                        break;
                    };
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    let line = String::from_utf8_lossy(&line).trim().to_owned();
                    if line.is_empty() {
                        continue;
                    }
                    input = command(&shared, &line);
                }
                Input::Pdu { store } => {
                    // Ctrl-Z ends the PDU, ESC cancels it.
                    let Some(end) = buf.iter().position(|&b| b == 0x1A || b == 0x1B) else {
                        break;
                    };
                    let raw: Vec<u8> = buf.drain(..=end).collect();
                    let cancelled = raw[end] == 0x1B;
                    let hex = String::from_utf8_lossy(&raw[..end]).trim().to_owned();
                    input = Input::Commands;
                    if cancelled {
                        shared.write("\r\nOK\r\n");
                    } else {
                        take_pdu(&shared, &hex, store);
                    }
                }
            }
        }
        if buf.len() > MAX_LINE {
            shared
                .state()
                .faults
                .push(format!("{} bytes without an end of line", buf.len()));
            buf.clear();
        }
    }
}

/// Answers one command line; says what to read next.
fn command(shared: &Shared, line: &str) -> Input {
    let upper = line.to_ascii_uppercase();
    let mut state = shared.state();
    state.commands.push(line.to_owned());
    if let Some(arg) = upper.strip_prefix("AT+CMGS=") {
        let no_prompt = state.replies.front() == Some(&SendReply::NoPrompt);
        if no_prompt {
            state.replies.pop_front();
        }
        drop(state);
        if no_prompt || arg.trim().parse::<u32>().is_err() {
            if !no_prompt {
                shared.write("\r\n+CMS ERROR: 304\r\n");
            }
            return Input::Commands;
        }
        shared.write("\r\n> ");
        return Input::Pdu { store: false };
    }
    if upper.starts_with("AT+CMGW=") {
        drop(state);
        shared.write("\r\n> ");
        return Input::Pdu { store: true };
    }
    let reply = state.answer(&upper);
    drop(state);
    shared.write(&format!("\r\n{reply}\r\n"));
    Input::Commands
}

/// An SMS-SUBMIT after the prompt: sent (`+CMGS`) or stored (`+CMGW`).
fn take_pdu(shared: &Arc<Shared>, hex: &str, store: bool) {
    let submit = match pdu::decode_submit(hex) {
        Ok(submit) => submit,
        Err(err) => {
            shared
                .state()
                .faults
                .push(format!("bad PDU {hex:?}: {err}"));
            shared.write("\r\n+CMS ERROR: 304\r\n");
            return;
        }
    };
    if store {
        let mut state = shared.state();
        let mem = state.mem2;
        let stored = state.store(
            mem,
            Stored {
                stat: STO_UNSENT,
                pdu: hex.to_owned(),
            },
        );
        drop(state);
        match stored {
            Some(index) => shared.write(&format!("\r\n+CMGW: {index}\r\n\r\nOK\r\n")),
            None => shared.write("\r\n+CMS ERROR: 322\r\n"),
        }
        return;
    }
    let reply = shared
        .state()
        .replies
        .pop_front()
        .unwrap_or(SendReply::Accept);
    let index = {
        let mut state = shared.state();
        state.submitted.push(Submitted {
            submit,
            reference: None,
            from_storage: false,
        });
        state.submitted.len() - 1
    };
    match reply {
        SendReply::Accept | SendReply::NoPrompt => accept(shared, index),
        SendReply::AcceptAfter(delay) => {
            let shared = shared.clone();
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                if !shared.stop.load(Ordering::SeqCst) {
                    accept(&shared, index);
                }
            });
        }
        SendReply::CmsError(code) => shared.write(&format!("\r\n+CMS ERROR: {code}\r\n")),
    }
}

/// Gives the SMS-SUBMIT number `index` its reference and says so.
fn accept(shared: &Shared, index: usize) {
    let reference = {
        let mut state = shared.state();
        let reference = state.take_reference();
        state.submitted[index].reference = Some(reference);
        reference
    };
    shared.write(&format!("\r\n+CMGS: {reference}\r\n\r\nOK\r\n"));
}

impl State {
    fn take_reference(&mut self) -> u8 {
        self.next_reference = self.next_reference.wrapping_add(1);
        self.next_reference
    }

    /// Puts an SMS at the lowest free index of `mem`; `None` when it is full.
    fn store(&mut self, mem: Mem, sms: Stored) -> Option<u32> {
        let storage = self.storages.get_mut(&mem)?;
        if storage.len() >= STORAGE_SIZE {
            return None;
        }
        let index = (1..).find(|i| !storage.contains_key(i))?;
        storage.insert(index, sms);
        Some(index)
    }

    fn used(&self, mem: Mem) -> usize {
        self.storages[&mem].len()
    }

    /// The answer to a command (upper-cased), without the surrounding line breaks.
    fn answer(&mut self, cmd: &str) -> String {
        const OK: &str = "OK";
        let ok = |body: String| format!("{body}\r\n\r\nOK");
        match cmd {
            "AT" | "ATZ" | "ATE0" | "ATV1" | "ATX4" | "AT&C1" | "AT+CMEE=1" => OK.into(),
            "AT+GCAP" => ok("+GCAP: +CGSM".into()),
            "AT+CGMI" => ok("Tandem".into()),
            "AT+CGMM" => ok("Fake AT modem".into()),
            "AT+CGMR" => ok("1.0".into()),
            "AT+CGSN" => ok(self.identity.imei.clone()),
            "AT+CIMI" => ok(self.identity.imsi.clone()),
            "AT+CPIN?" => ok("+CPIN: READY".into()),
            // The ICCID, read from the SIM's EF_ICCID (swapped BCD): 89014103211118510720.
            "AT+CRSM=176,12258,0,0,10" => ok("+CRSM: 144,0,\"98101430121181157002\"".into()),
            "AT+CNUM" => match &self.identity.own_number {
                Some(number) => {
                    let toa = if number.starts_with('+') { 145 } else { 129 };
                    ok(format!("+CNUM: \"\",\"{number}\",{toa}"))
                }
                None => OK.into(),
            },
            "AT+CSCS=?" => ok("+CSCS: (\"IRA\",\"GSM\",\"UCS2\")".into()),
            "AT+CSCS=\"IRA\"" | "AT+CSCS=\"GSM\"" | "AT+CSCS=\"UCS2\"" => OK.into(),
            "AT+CSCS?" => ok("+CSCS: \"GSM\"".into()),
            "AT+CFUN?" => ok(format!("+CFUN: {}", if self.powered { 1 } else { 4 })),
            "AT+CFUN=1" => {
                self.powered = true;
                OK.into()
            }
            "AT+CFUN=4" | "AT+CFUN=0" => {
                self.powered = false;
                OK.into()
            }
            "AT+CREG=2" | "AT+CGREG=2" | "AT+CEREG=2" | "AT+CREG=0" | "AT+CGREG=0" => OK.into(),
            // Registered, home network, LTE.
            "AT+CREG?" if self.powered => ok("+CREG: 2,1,\"1A2B\",\"0001C3D4\",7".into()),
            "AT+CGREG?" if self.powered => ok("+CGREG: 2,1,\"1A2B\",\"0001C3D4\",7".into()),
            "AT+CREG?" => ok("+CREG: 2,0".into()),
            "AT+CGREG?" => ok("+CGREG: 2,0".into()),
            "AT+COPS=3,0" => {
                self.cops_format = 0;
                OK.into()
            }
            "AT+COPS=3,2" => {
                self.cops_format = 2;
                OK.into()
            }
            "AT+COPS?" if self.cops_format == 2 => ok("+COPS: 0,2,\"310410\",7".into()),
            "AT+COPS?" => ok("+COPS: 0,0,\"Tandem Mobile\",7".into()),
            "AT+CSQ" => ok("+CSQ: 20,99".into()),
            "AT+CIND=?" => ok(
                "+CIND: (\"battchg\",(0-5)),(\"signal\",(0-5)),(\"service\",(0,1)),(\"roam\",(0,1))"
                    .into(),
            ),
            "AT+CIND?" => ok("+CIND: 5,4,1,0".into()),
            // SMS: PDU mode, storages, new-message indications.
            "AT+CNMI=?" => ok("+CNMI: (0-2),(0-3),(0,2),(0-2),(0,1)".into()),
            "AT+CNMI=2,1,2,1,0" => OK.into(),
            "AT+CMGF=?" => ok("+CMGF: (0,1)".into()),
            "AT+CMGF=0" => OK.into(),
            "AT+CPMS=?" => ok("+CPMS: (\"SM\",\"ME\"),(\"SM\",\"ME\"),(\"SM\",\"ME\")".into()),
            "AT+CPMS?" => ok(format!(
                "+CPMS: \"{}\",{},{STORAGE_SIZE},\"{}\",{},{STORAGE_SIZE},\"{}\",{},{STORAGE_SIZE}",
                self.mem1.name(),
                self.used(self.mem1),
                self.mem2.name(),
                self.used(self.mem2),
                self.mem3.name(),
                self.used(self.mem3),
            )),
            _ => self.answer_with_arguments(cmd),
        }
    }

    fn answer_with_arguments(&mut self, cmd: &str) -> String {
        let ok = |body: String| format!("{body}\r\n\r\nOK");
        if let Some(args) = cmd.strip_prefix("AT+CPMS=") {
            let mems: Vec<Option<Mem>> = args.split(',').map(Mem::parse).collect();
            if mems.is_empty() || mems.len() > 3 || mems.iter().any(Option::is_none) {
                return "+CMS ERROR: 302".into();
            }
            let mems: Vec<Mem> = mems.into_iter().flatten().collect();
            self.mem1 = mems[0];
            if let Some(&m) = mems.get(1) {
                self.mem2 = m;
            }
            if let Some(&m) = mems.get(2) {
                self.mem3 = m;
            }
            return ok(format!(
                "+CPMS: {},{STORAGE_SIZE},{},{STORAGE_SIZE},{},{STORAGE_SIZE}",
                self.used(self.mem1),
                self.used(self.mem2),
                self.used(self.mem3)
            ));
        }
        if let Some(arg) = cmd.strip_prefix("AT+CMGL=") {
            let Ok(wanted) = arg.trim().parse::<u8>() else {
                return "+CMS ERROR: 302".into();
            };
            let mut out = String::new();
            let mem = self.mem1;
            for (index, sms) in self.storages.get_mut(&mem).into_iter().flatten() {
                if wanted == 4 || sms.stat == wanted {
                    out.push_str(&format!("+CMGL: {index},{}\r\n", sms.read()));
                }
            }
            return if out.is_empty() {
                "OK".into()
            } else {
                format!("{out}\r\nOK")
            };
        }
        if let Some(arg) = cmd.strip_prefix("AT+CMGR=") {
            let mem = self.mem1;
            let Some(sms) = arg
                .trim()
                .parse::<u32>()
                .ok()
                .and_then(|i| self.storages.get_mut(&mem)?.get_mut(&i))
            else {
                return "+CMS ERROR: 321".into();
            };
            return ok(format!("+CMGR: {}", sms.read()));
        }
        if let Some(arg) = cmd.strip_prefix("AT+CMGD=") {
            let mem = self.mem1;
            let index = arg.split(',').next().unwrap_or("").trim().parse::<u32>();
            return match index
                .ok()
                .and_then(|i| self.storages.get_mut(&mem)?.remove(&i))
            {
                Some(_) => "OK".into(),
                None => "+CMS ERROR: 321".into(),
            };
        }
        if let Some(arg) = cmd.strip_prefix("AT+CMSS=") {
            // Sends a stored SMS; the storage marks it sent, as modems do.
            let mem = self.mem2;
            let Some(sms) = arg
                .split(',')
                .next()
                .and_then(|i| i.trim().parse::<u32>().ok())
                .and_then(|i| self.storages.get_mut(&mem)?.get_mut(&i))
            else {
                return "+CMS ERROR: 321".into();
            };
            let Ok(submit) = pdu::decode_submit(&sms.pdu) else {
                return "+CMS ERROR: 304".into();
            };
            sms.stat = STO_SENT;
            let reference = self.take_reference();
            self.submitted.push(Submitted {
                submit,
                reference: Some(reference),
                from_storage: true,
            });
            return ok(format!("+CMSS: {reference}"));
        }
        "ERROR".into()
    }
}
