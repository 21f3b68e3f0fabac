//! The simulator: `tandem-mmsim` on a private "system" bus, and its control interface.

use std::path::PathBuf;

use zbus::OwnedObjectPath;

use super::Bus;
use super::opts::{Dict, no_opts};
use super::proc::{Proc, program};

/// A running `tandem-mmsim`, killed on drop; its log (`-v`) is printed when a test fails.
pub struct Sim {
    proc: Option<Proc>,
    bus_address: String,
    args: Vec<String>,
    log: PathBuf,
    _logs: tempfile::TempDir,
}

impl Sim {
    /// Starts the simulator hosting one modem per number and waits until it is ready.
    pub fn start(bus: &Bus, modems: &[&str]) -> Sim {
        Self::with_report_delay(bus, modems, 50)
    }

    /// [`Sim::start`], and its control interface.
    pub async fn with_ctl(bus: &Bus, modems: &[&str]) -> (Sim, SimCtl) {
        let sim = Sim::start(bus, modems);
        (sim, SimCtl::new(&bus.connect().await).await)
    }

    /// Same, with the carrier's status reports coming `report_delay_ms` after delivery.
    pub fn with_report_delay(bus: &Bus, modems: &[&str], report_delay_ms: u32) -> Sim {
        let delay = report_delay_ms.to_string();
        let mut args = vec!["--report-delay-ms", delay.as_str()];
        args.extend(modems.iter().flat_map(|m| ["--modem", m]));
        Self::with_args(&bus.address, &args)
    }

    /// The simulator on the bus at `bus_address` with these arguments (`--modem`...).
    pub fn with_args(bus_address: &str, args: &[&str]) -> Sim {
        let logs = tempfile::Builder::new()
            .prefix("tandem-mmsim-")
            .tempdir()
            .expect("temp dir");
        let mut sim = Sim {
            proc: None,
            bus_address: bus_address.to_owned(),
            args: args.iter().map(|a| a.to_string()).collect(),
            log: logs.path().join("mmsim.log"),
            _logs: logs,
        };
        sim.start_again();
        sim
    }

    /// Starts it (again) with the same modems, if it is not running.
    pub fn start_again(&mut self) {
        if self.proc.is_some() {
            return;
        }
        let mut cmd = program("tandem-mmsim");
        cmd.arg("--bus")
            .arg(&self.bus_address)
            .args(&self.args)
            .arg("-v");
        let (proc, line) = Proc::start("tandem-mmsim", cmd, &self.log);
        assert_eq!(
            line,
            "ready",
            "tandem-mmsim did not get ready: {}",
            proc.log_text()
        );
        self.proc = Some(proc);
    }

    /// Kills the simulator (like ModemManager crashing or being stopped).
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// Starts it again with the same modems.
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().expect("the simulator runs").pid()
    }
}

/// The simulator's control interface, `org.tandem.MMSim1`; every call must succeed
/// (the raw [`SimCtl::proxy`] is there for the calls that must fail).
pub struct SimCtl {
    proxy: zbus::Proxy<'static>,
}

impl SimCtl {
    pub async fn new(system: &zbus::Connection) -> SimCtl {
        let proxy = zbus::proxy::Builder::<zbus::Proxy<'static>>::new(system)
            .destination("org.freedesktop.ModemManager1")
            .path("/org/tandem/MMSim1")
            .interface("org.tandem.MMSim1")
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .expect("simulator control proxy");
        SimCtl { proxy }
    }

    pub fn proxy(&self) -> &zbus::Proxy<'static> {
        &self.proxy
    }

    async fn call<B, R>(&self, method: &str, body: &B) -> R
    where
        B: serde::Serialize + zbus::DynamicType,
        R: for<'d> zbus::wire::DynamicDeserialize<'d>,
    {
        self.proxy
            .call(method, body)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    pub async fn inject_sms(&self, modem: &str, from: &str, text: &str) -> OwnedObjectPath {
        self.inject_sms_with(modem, from, text, no_opts()).await
    }

    pub async fn inject_sms_with(
        &self,
        modem: &str,
        from: &str,
        text: &str,
        options: Dict,
    ) -> OwnedObjectPath {
        self.call("InjectSms", &(modem, from, text, options)).await
    }

    pub async fn inject_status_report(
        &self,
        modem: &str,
        number: &str,
        reference: u32,
        delivery_state: u32,
    ) -> OwnedObjectPath {
        let body = (modem, number, reference, delivery_state);
        self.call("InjectStatusReport", &body).await
    }

    pub async fn begin_multipart(&self, modem: &str, from: &str, parts: u32) -> OwnedObjectPath {
        self.call("BeginMultipart", &(modem, from, parts)).await
    }

    pub async fn add_part(&self, sms: &OwnedObjectPath, text: &str) {
        self.call::<_, ()>("AddPart", &(sms, text)).await
    }

    pub async fn get_sent(&self, modem: &str) -> Vec<Dict> {
        self.call("GetSent", &(modem,)).await
    }

    pub async fn list_sms(&self, modem: &str) -> Vec<Dict> {
        self.call("ListSms", &(modem,)).await
    }

    /// Waits until no SMS is left on `modem` (sent, received or reports).
    pub async fn until_empty(&self, modem: &str) {
        let what = format!("no SMS left on {modem}");
        super::eventually(&what, || async { self.list_sms(modem).await.is_empty() }).await
    }

    pub async fn fail_next_send(&self, modem: &str, error: &str, message: &str) {
        self.call::<_, ()>("FailNextSend", &(modem, error, message))
            .await
    }

    pub async fn set_send_delay(&self, modem: &str, ms: u32) {
        self.call::<_, ()>("SetSendDelay", &(modem, ms)).await
    }

    pub async fn set_delete_blocked(&self, modem: &str, blocked: bool) {
        self.call::<_, ()>("SetDeleteBlocked", &(modem, blocked))
            .await
    }

    pub async fn blocked_deletes(&self, modem: &str) -> u32 {
        self.call("BlockedDeletes", &(modem,)).await
    }

    pub async fn add_modem(&self, number: &str) -> OwnedObjectPath {
        self.add_modem_with(number, no_opts()).await
    }

    pub async fn add_modem_with(&self, number: &str, options: Dict) -> OwnedObjectPath {
        self.call("AddModem", &(number, options)).await
    }

    pub async fn remove_modem(&self, modem: &str) {
        self.call::<_, ()>("RemoveModem", &(modem,)).await
    }

    pub async fn set_modem_state(&self, modem: &str, state: i32) {
        self.call::<_, ()>("SetModemState", &(modem, state)).await
    }
}
