//! The ModemManager 1.20 D-Bus objects: manager, modem (`Modem`, `Modem.Modem3gpp`,
//! `Modem.Messaging`), SIM and SMS, with the names, types and values of ModemManager's
//! introspection XML (`/usr/share/dbus-1/interfaces/org.freedesktop.ModemManager1*.xml`).
//!
//! Thin: each object holds a [`Modem`] handle (an SMS also its storage key), getters copy
//! from the modem's data, methods convert arguments and call one modem operation. Every
//! method takes `&self`, so no call ever waits for an interface's write lock (a blocked
//! `Delete` must not stall anything else). Nothing here decides behaviour.

use std::collections::HashMap;

use zbus::object_server::SignalEmitter;
use zbus::{ObjectPath, OwnedObjectPath, OwnedVariant, interface};

use super::mm::{self, MmError, modem_state, storage, validity_type};
use super::modem::{Modem, SmsProps};

/// `org.freedesktop.ModemManager1` at `/org/freedesktop/ModemManager1`.
pub(super) struct ManagerIface;

#[interface(name = "org.freedesktop.ModemManager1", introspection_docs = false)]
impl ManagerIface {
    async fn scan_devices(&self) {}

    async fn set_logging(&self, _level: &str) {}

    async fn report_kernel_event(&self, _properties: HashMap<String, OwnedVariant>) {}

    async fn inhibit_device(&self, _uid: &str, _inhibit: bool) {}

    #[zbus(property)]
    fn version(&self) -> String {
        mm::VERSION.to_owned()
    }
}

/// `org.freedesktop.ModemManager1.Modem`.
pub(super) struct ModemIface {
    modem: Modem,
}

impl ModemIface {
    pub(super) fn new(modem: Modem) -> Self {
        ModemIface { modem }
    }

    fn state_now(&self) -> i32 {
        self.modem.data().state()
    }

    fn registered(&self) -> bool {
        self.state_now() >= modem_state::REGISTERED
    }
}

#[interface(
    name = "org.freedesktop.ModemManager1.Modem",
    introspection_docs = false
)]
impl ModemIface {
    async fn enable(&self, enable: bool) -> Result<(), MmError> {
        self.modem.enable(enable).await
    }

    async fn list_bearers(&self) -> Vec<OwnedObjectPath> {
        Vec::new()
    }

    async fn create_bearer(
        &self,
        _properties: HashMap<String, OwnedVariant>,
    ) -> Result<OwnedObjectPath, MmError> {
        Err(MmError::unsupported("the simulator has no data bearers"))
    }

    async fn delete_bearer(&self, _bearer: ObjectPath<'_>) -> Result<(), MmError> {
        Err(MmError::not_found("no such bearer"))
    }

    async fn reset(&self) -> Result<(), MmError> {
        Err(MmError::unsupported("reset is not simulated"))
    }

    async fn factory_reset(&self, _code: &str) -> Result<(), MmError> {
        Err(MmError::unsupported("factory reset is not simulated"))
    }

    async fn set_power_state(&self, _state: u32) {}

    async fn set_current_capabilities(&self, _capabilities: u32) {}

    async fn set_current_modes(&self, _modes: (u32, u32)) {}

    async fn set_current_bands(&self, _bands: Vec<u32>) {}

    async fn set_primary_sim_slot(&self, _sim_slot: u32) -> Result<(), MmError> {
        Err(MmError::unsupported("one SIM slot only"))
    }

    async fn get_cell_info(&self) -> Vec<HashMap<String, OwnedVariant>> {
        Vec::new()
    }

    async fn command(&self, _cmd: &str, _timeout: u32) -> Result<String, MmError> {
        Err(MmError::unsupported("AT commands are not simulated"))
    }

    #[zbus(signal, name = "StateChanged")]
    pub async fn emit_state_changed(
        emitter: &SignalEmitter<'_>,
        old: i32,
        new: i32,
        reason: u32,
    ) -> zbus::Result<()>;

    #[zbus(property)]
    fn sim(&self) -> OwnedObjectPath {
        self.modem.cell.sim_path.clone()
    }
    #[zbus(property)]
    fn sim_slots(&self) -> Vec<OwnedObjectPath> {
        Vec::new()
    }
    #[zbus(property)]
    fn primary_sim_slot(&self) -> u32 {
        0
    }
    #[zbus(property)]
    fn bearers(&self) -> Vec<OwnedObjectPath> {
        Vec::new()
    }
    #[zbus(property)]
    fn supported_capabilities(&self) -> Vec<u32> {
        vec![mm::CAPABILITY_GSM_UMTS_LTE]
    }
    #[zbus(property)]
    fn current_capabilities(&self) -> u32 {
        mm::CAPABILITY_GSM_UMTS_LTE
    }
    #[zbus(property)]
    fn max_bearers(&self) -> u32 {
        1
    }
    #[zbus(property)]
    fn max_active_bearers(&self) -> u32 {
        1
    }
    #[zbus(property)]
    fn max_active_multiplexed_bearers(&self) -> u32 {
        0
    }
    #[zbus(property)]
    fn manufacturer(&self) -> String {
        "Tandem".to_owned()
    }
    #[zbus(property)]
    fn model(&self) -> String {
        "mmsim".to_owned()
    }
    #[zbus(property)]
    fn revision(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }
    #[zbus(property)]
    fn carrier_configuration(&self) -> String {
        String::new()
    }
    #[zbus(property)]
    fn carrier_configuration_revision(&self) -> String {
        String::new()
    }
    #[zbus(property)]
    fn hardware_revision(&self) -> String {
        "1".to_owned()
    }
    #[zbus(property)]
    fn device_identifier(&self) -> String {
        format!("mmsim-{}", self.modem.cell.imei)
    }
    #[zbus(property)]
    fn device(&self) -> String {
        format!("/sys/devices/virtual/mmsim/{}", self.modem.cell.index)
    }
    #[zbus(property)]
    fn drivers(&self) -> Vec<String> {
        vec!["mmsim".to_owned()]
    }
    #[zbus(property)]
    fn plugin(&self) -> String {
        "tandem-mmsim".to_owned()
    }
    #[zbus(property)]
    fn primary_port(&self) -> String {
        format!("mmsim{}", self.modem.cell.index)
    }
    #[zbus(property)]
    fn ports(&self) -> Vec<(String, u32)> {
        vec![(format!("mmsim{}", self.modem.cell.index), mm::PORT_TYPE_AT)]
    }
    #[zbus(property)]
    fn equipment_identifier(&self) -> String {
        self.modem.cell.imei.clone()
    }
    #[zbus(property)]
    fn unlock_required(&self) -> u32 {
        mm::LOCK_NONE
    }
    #[zbus(property)]
    fn unlock_retries(&self) -> HashMap<u32, u32> {
        HashMap::new()
    }
    #[zbus(property)]
    fn state(&self) -> i32 {
        self.state_now()
    }
    #[zbus(property)]
    fn state_failed_reason(&self) -> u32 {
        0
    }
    #[zbus(property)]
    fn access_technologies(&self) -> u32 {
        if self.registered() {
            mm::ACCESS_TECHNOLOGY_LTE
        } else {
            0
        }
    }
    #[zbus(property)]
    fn signal_quality(&self) -> (u32, bool) {
        if self.registered() {
            (75, true)
        } else {
            (0, false)
        }
    }
    #[zbus(property)]
    fn own_numbers(&self) -> Vec<String> {
        if self.modem.cell.sim_own_number {
            vec![self.modem.cell.own_number.clone()]
        } else {
            Vec::new()
        }
    }
    #[zbus(property)]
    fn power_state(&self) -> u32 {
        if self.state_now() >= modem_state::ENABLING {
            mm::POWER_STATE_ON
        } else {
            mm::POWER_STATE_LOW
        }
    }
    #[zbus(property)]
    fn supported_modes(&self) -> Vec<(u32, u32)> {
        vec![(mm::MODE_2G_3G_4G, mm::MODE_4G)]
    }
    #[zbus(property)]
    fn current_modes(&self) -> (u32, u32) {
        (mm::MODE_2G_3G_4G, mm::MODE_4G)
    }
    #[zbus(property)]
    fn supported_bands(&self) -> Vec<u32> {
        Vec::new()
    }
    #[zbus(property)]
    fn current_bands(&self) -> Vec<u32> {
        Vec::new()
    }
    #[zbus(property)]
    fn supported_ip_families(&self) -> u32 {
        mm::IP_FAMILY_ALL
    }
}

/// `org.freedesktop.ModemManager1.Modem.Modem3gpp`.
pub(super) struct Modem3gppIface {
    modem: Modem,
}

impl Modem3gppIface {
    pub(super) fn new(modem: Modem) -> Self {
        Modem3gppIface { modem }
    }

    fn registered(&self) -> bool {
        self.modem.data().state() >= modem_state::REGISTERED
    }
}

#[interface(
    name = "org.freedesktop.ModemManager1.Modem.Modem3gpp",
    introspection_docs = false
)]
impl Modem3gppIface {
    async fn register(&self, _operator_id: &str) {}

    async fn scan(&self) -> Vec<HashMap<String, OwnedVariant>> {
        Vec::new()
    }

    async fn set_eps_ue_mode_operation(&self, _mode: u32) -> Result<(), MmError> {
        Err(MmError::unsupported("not simulated"))
    }

    async fn set_initial_eps_bearer_settings(
        &self,
        _settings: HashMap<String, OwnedVariant>,
    ) -> Result<(), MmError> {
        Err(MmError::unsupported("not simulated"))
    }

    async fn set_nr5g_registration_settings(
        &self,
        _properties: HashMap<String, OwnedVariant>,
    ) -> Result<(), MmError> {
        Err(MmError::unsupported("not simulated"))
    }

    async fn disable_facility_lock(&self, _properties: (u32, String)) -> Result<(), MmError> {
        Err(MmError::unsupported("not simulated"))
    }

    async fn set_packet_service_state(&self, _state: u32) -> Result<(), MmError> {
        Err(MmError::unsupported("not simulated"))
    }

    #[zbus(property)]
    fn imei(&self) -> String {
        self.modem.cell.imei.clone()
    }
    #[zbus(property)]
    fn registration_state(&self) -> u32 {
        match self.modem.data().state() {
            s if s >= modem_state::REGISTERED => mm::REGISTRATION_HOME,
            modem_state::SEARCHING => mm::REGISTRATION_SEARCHING,
            _ => mm::REGISTRATION_IDLE,
        }
    }
    #[zbus(property)]
    fn operator_code(&self) -> String {
        if self.registered() {
            mm::OPERATOR_CODE.to_owned()
        } else {
            String::new()
        }
    }
    #[zbus(property)]
    fn operator_name(&self) -> String {
        if self.registered() {
            mm::OPERATOR_NAME.to_owned()
        } else {
            String::new()
        }
    }
    #[zbus(property)]
    fn enabled_facility_locks(&self) -> u32 {
        0
    }
    #[zbus(property)]
    fn subscription_state(&self) -> u32 {
        mm::SUBSCRIPTION_PROVISIONED
    }
    #[zbus(property)]
    fn eps_ue_mode_operation(&self) -> u32 {
        0
    }
    #[zbus(property)]
    fn pco(&self) -> Vec<(u32, bool, Vec<u8>)> {
        Vec::new()
    }
    #[zbus(property)]
    fn initial_eps_bearer(&self) -> OwnedObjectPath {
        OwnedObjectPath::from(ObjectPath::from_static_str_unchecked("/"))
    }
    #[zbus(property)]
    fn initial_eps_bearer_settings(&self) -> HashMap<String, OwnedVariant> {
        HashMap::new()
    }
    #[zbus(property)]
    fn packet_service_state(&self) -> u32 {
        if self.registered() {
            mm::PACKET_SERVICE_ATTACHED
        } else {
            mm::PACKET_SERVICE_DETACHED
        }
    }
    #[zbus(property)]
    fn nr5g_registration_settings(&self) -> HashMap<String, OwnedVariant> {
        HashMap::new()
    }
}

/// `org.freedesktop.ModemManager1.Modem.Messaging`.
pub(super) struct MessagingIface {
    modem: Modem,
}

impl MessagingIface {
    pub(super) fn new(modem: Modem) -> Self {
        MessagingIface { modem }
    }
}

#[interface(
    name = "org.freedesktop.ModemManager1.Modem.Messaging",
    introspection_docs = false
)]
impl MessagingIface {
    async fn list(&self) -> Vec<OwnedObjectPath> {
        self.modem.data().messages()
    }

    async fn delete(&self, path: OwnedObjectPath) -> Result<(), MmError> {
        self.modem.delete(path).await
    }

    async fn create(
        &self,
        properties: HashMap<String, OwnedVariant>,
    ) -> Result<OwnedObjectPath, MmError> {
        let props = parse_create(properties)?;
        self.modem.create(props).await
    }

    #[zbus(signal)]
    pub async fn added(
        emitter: &SignalEmitter<'_>,
        path: ObjectPath<'_>,
        received: bool,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn deleted(emitter: &SignalEmitter<'_>, path: ObjectPath<'_>) -> zbus::Result<()>;

    #[zbus(property)]
    fn messages(&self) -> Vec<OwnedObjectPath> {
        self.modem.data().messages()
    }
    #[zbus(property)]
    fn supported_storages(&self) -> Vec<u32> {
        vec![storage::SM, storage::ME]
    }
    #[zbus(property)]
    fn default_storage(&self) -> u32 {
        storage::ME
    }
}

/// `Messaging.Create`'s dictionary: the keys `mmcli --messaging-create-sms` and
/// libmm-glib send. Unknown keys and wrong types are refused, as ModemManager does.
fn parse_create(properties: HashMap<String, OwnedVariant>) -> Result<SmsProps, MmError> {
    fn get<T>(key: &str, value: OwnedVariant) -> Result<T, MmError>
    where
        T: TryFrom<OwnedVariant, Error = zbus::Error>,
    {
        T::try_from(value).map_err(|e| MmError::invalid_args(format!("Invalid '{key}': {e}")))
    }
    let mut props = SmsProps::submit(String::new(), String::new());
    let mut have_text = false;
    for (key, value) in properties {
        match key.as_str() {
            "number" => props.number = get(&key, value)?,
            "text" => {
                props.text = get(&key, value)?;
                have_text = true;
            }
            "data" => {
                props.data = get(&key, value)?;
                have_text = true;
            }
            "smsc" => props.smsc = get(&key, value)?,
            "validity" => props.validity = Some(get(&key, value)?),
            "class" => props.class = get(&key, value)?,
            "delivery-report-request" => props.delivery_report_request = get(&key, value)?,
            "storage" => props.storage = get(&key, value)?,
            "teleservice-id" | "service-category" => {
                let _: u32 = get(&key, value)?;
            }
            other => {
                return Err(MmError::invalid_args(format!(
                    "Invalid properties dictionary, unexpected key '{other}'"
                )));
            }
        }
    }
    if props.number.is_empty() {
        return Err(MmError::invalid_args("Cannot create SMS: missing 'number'"));
    }
    if !have_text {
        return Err(MmError::invalid_args(
            "Cannot create SMS: missing 'text' or 'data'",
        ));
    }
    if !props.text.is_empty() && !props.data.is_empty() {
        return Err(MmError::invalid_args(
            "Cannot create SMS: both 'text' and 'data' given",
        ));
    }
    Ok(props)
}

/// `org.freedesktop.ModemManager1.Sim`.
pub(super) struct SimIface {
    modem: Modem,
}

impl SimIface {
    pub(super) fn new(modem: Modem) -> Self {
        SimIface { modem }
    }
}

#[interface(name = "org.freedesktop.ModemManager1.Sim", introspection_docs = false)]
impl SimIface {
    async fn send_pin(&self, _pin: &str) {}

    async fn send_puk(&self, _puk: &str, _pin: &str) {}

    async fn enable_pin(&self, _pin: &str, _enabled: bool) {}

    async fn change_pin(&self, _old_pin: &str, _new_pin: &str) {}

    async fn set_preferred_networks(&self, _preferred_networks: Vec<(String, u32)>) {}

    #[zbus(property)]
    fn active(&self) -> bool {
        true
    }
    #[zbus(property)]
    fn sim_identifier(&self) -> String {
        self.modem.cell.iccid.clone()
    }
    #[zbus(property)]
    fn imsi(&self) -> String {
        self.modem.cell.imsi.clone()
    }
    #[zbus(property)]
    fn eid(&self) -> String {
        String::new()
    }
    #[zbus(property)]
    fn operator_identifier(&self) -> String {
        mm::OPERATOR_CODE.to_owned()
    }
    #[zbus(property)]
    fn operator_name(&self) -> String {
        mm::OPERATOR_NAME.to_owned()
    }
    #[zbus(property)]
    fn emergency_numbers(&self) -> Vec<String> {
        vec!["112".to_owned(), "911".to_owned()]
    }
    #[zbus(property)]
    fn preferred_networks(&self) -> Vec<(String, u32)> {
        Vec::new()
    }
    #[zbus(property)]
    fn gid1(&self) -> Vec<u8> {
        Vec::new()
    }
    #[zbus(property)]
    fn gid2(&self) -> Vec<u8> {
        Vec::new()
    }
    #[zbus(property)]
    fn sim_type(&self) -> u32 {
        mm::SIM_TYPE_PHYSICAL
    }
    #[zbus(property)]
    fn esim_status(&self) -> u32 {
        0
    }
    #[zbus(property)]
    fn removability(&self) -> u32 {
        mm::SIM_REMOVABLE
    }
}

/// `org.freedesktop.ModemManager1.Sms`: one SMS in a modem's storage.
pub(super) struct SmsIface {
    modem: Modem,
    /// The SMS's storage key in its modem (stable; the path is not).
    key: u64,
}

impl SmsIface {
    pub(super) fn new(modem: Modem, key: u64) -> Self {
        SmsIface { modem, key }
    }

    /// One property of this SMS, or its default when it was deleted a moment ago.
    fn with<T: Default>(&self, f: impl FnOnce(&SmsProps) -> T) -> T {
        self.modem.data().sms(self.key).map(f).unwrap_or_default()
    }
}

#[interface(name = "org.freedesktop.ModemManager1.Sms", introspection_docs = false)]
impl SmsIface {
    async fn send(&self) -> Result<(), MmError> {
        self.modem.send(self.key).await
    }

    async fn store(&self, storage: u32) -> Result<(), MmError> {
        self.modem.store(self.key, storage).await
    }

    #[zbus(property)]
    fn state(&self) -> u32 {
        self.with(|s| s.state)
    }
    #[zbus(property)]
    fn pdu_type(&self) -> u32 {
        self.with(|s| s.pdu_type)
    }
    #[zbus(property)]
    fn number(&self) -> String {
        self.with(|s| s.number.clone())
    }
    #[zbus(property)]
    fn text(&self) -> String {
        self.with(|s| s.text.clone())
    }
    #[zbus(property)]
    fn data(&self) -> Vec<u8> {
        self.with(|s| s.data.clone())
    }
    #[zbus(property, name = "SMSC")]
    fn smsc(&self) -> String {
        self.with(|s| s.smsc.clone())
    }
    #[zbus(property)]
    fn validity(&self) -> (u32, OwnedVariant) {
        match self.with(|s| s.validity) {
            Some(minutes) => (validity_type::RELATIVE, OwnedVariant::from(minutes)),
            None => (validity_type::UNKNOWN, OwnedVariant::from(false)),
        }
    }
    #[zbus(property)]
    fn class(&self) -> i32 {
        self.modem.data().sms(self.key).map_or(-1, |s| s.class)
    }
    #[zbus(property)]
    fn teleservice_id(&self) -> u32 {
        0
    }
    #[zbus(property)]
    fn service_category(&self) -> u32 {
        0
    }
    #[zbus(property)]
    fn delivery_report_request(&self) -> bool {
        self.with(|s| s.delivery_report_request)
    }
    #[zbus(property)]
    fn message_reference(&self) -> u32 {
        self.with(|s| s.message_reference)
    }
    #[zbus(property)]
    fn timestamp(&self) -> String {
        self.with(|s| s.timestamp.clone())
    }
    #[zbus(property)]
    fn discharge_timestamp(&self) -> String {
        self.with(|s| s.discharge_timestamp.clone())
    }
    #[zbus(property)]
    fn delivery_state(&self) -> u32 {
        self.modem
            .data()
            .sms(self.key)
            .map_or(mm::delivery_state::UNKNOWN, |s| s.delivery_state)
    }
    #[zbus(property)]
    fn storage(&self) -> u32 {
        self.with(|s| s.storage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::Variant;

    fn dict(entries: Vec<(&str, OwnedVariant)>) -> HashMap<String, OwnedVariant> {
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }

    fn s(text: &str) -> OwnedVariant {
        OwnedVariant::try_from(Variant::from(text)).unwrap()
    }

    #[test]
    fn create_dictionary_is_checked() {
        let ok = parse_create(dict(vec![
            ("number", s("+15550002222")),
            ("text", s("hello")),
            ("delivery-report-request", OwnedVariant::from(true)),
            ("validity", OwnedVariant::from(1440u32)),
        ]))
        .unwrap();
        assert_eq!(ok.number, "+15550002222");
        assert_eq!(ok.text, "hello");
        assert!(ok.delivery_report_request);
        assert_eq!(ok.validity, Some(1440));

        for (entries, why) in [
            (vec![("text", s("x"))], "missing 'number'"),
            (vec![("number", s("+1"))], "missing 'text'"),
            (
                vec![("number", s("+1")), ("text", s("x")), ("colour", s("red"))],
                "unexpected key",
            ),
            (
                vec![("number", OwnedVariant::from(5u32)), ("text", s("x"))],
                "Invalid 'number'",
            ),
        ] {
            let err = parse_create(dict(entries)).unwrap_err();
            assert_eq!(
                err.error_name(),
                "org.freedesktop.ModemManager1.Error.Core.InvalidArgs"
            );
            assert!(err.to_string().contains(why), "{err} should say {why}");
        }
    }
}
