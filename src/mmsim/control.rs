//! `org.tandem.MMSim1` at `/org/tandem/MMSim1`: how tests and developers drive the
//! simulator (add and remove modems, change their state, inject SMS from the outside world,
//! read what was sent, make the next send fail, hold deletes).
//!
//! Thin like the ModemManager objects: it finds the modem, converts arguments and calls a
//! modem operation or hands a delivery to the carrier. A modem is named by its own number
//! or its object path; an unknown one is `org.tandem.MMSim1.Error.NotFound`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use zbus::names::OwnedErrorName;
use zbus::object_server::SignalEmitter;
use zbus::{ObjectPath, OwnedObjectPath, OwnedVariant, Variant, interface};

use super::carrier::{CarrierCmd, Delivery};
use super::mm::{self, MmError, modem_state};
use super::modem::{Modem, SmsProps};
use super::{Context, ModemSpec, SimError, text};

/// The control interface's errors: `org.tandem.MMSim1.Error.*`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.tandem.MMSim1.Error")]
pub(super) enum ControlError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// No such modem or SMS.
    NotFound(String),
    /// A bad argument or option.
    InvalidArgument(String),
    /// The modem cannot do that in its state.
    WrongState(String),
}

impl From<SimError> for ControlError {
    fn from(error: SimError) -> Self {
        match error {
            SimError::Bus(e) => ControlError::ZBus(e),
            SimError::NotFound(_) => ControlError::NotFound(error.to_string()),
            SimError::Duplicate(_) | SimError::InvalidModem(_) => {
                ControlError::InvalidArgument(error.to_string())
            }
        }
    }
}

impl From<MmError> for ControlError {
    fn from(error: MmError) -> Self {
        ControlError::WrongState(error.to_string())
    }
}

type Options = HashMap<String, OwnedVariant>;
type Dict = HashMap<String, OwnedVariant>;

/// Takes the options a method knows; any other key is an error.
struct OptionReader {
    options: Options,
}

impl OptionReader {
    fn new(options: Options) -> Self {
        OptionReader { options }
    }

    fn take<T>(&mut self, key: &str) -> Result<Option<T>, ControlError>
    where
        T: TryFrom<OwnedVariant, Error = zbus::Error>,
    {
        self.options
            .remove(key)
            .map(|v| {
                T::try_from(v)
                    .map_err(|e| ControlError::InvalidArgument(format!("option {key:?}: {e}")))
            })
            .transpose()
    }

    fn finish(self) -> Result<(), ControlError> {
        match self.options.keys().next() {
            Some(key) => Err(ControlError::InvalidArgument(format!(
                "unknown option {key:?}"
            ))),
            None => Ok(()),
        }
    }
}

fn value<'a>(v: impl Into<Variant<'a>>) -> Result<OwnedVariant, ControlError> {
    let v: Variant<'a> = v.into();
    Ok(v.try_into_owned()?)
}

/// The user data of one SMS PDU.
const MAX_DATA_BYTES: usize = 140;

fn root_path() -> OwnedObjectPath {
    OwnedObjectPath::from(ObjectPath::from_static_str_unchecked("/"))
}

/// The control object.
pub(super) struct ControlIface {
    ctx: Arc<Context>,
}

impl ControlIface {
    pub(super) fn new(ctx: Arc<Context>) -> Self {
        ControlIface { ctx }
    }

    fn modem(&self, name: &str) -> Result<Modem, ControlError> {
        self.ctx
            .modem(name)
            .ok_or_else(|| ControlError::NotFound(format!("no modem {name:?}")))
    }

    /// Hands `item` to the carrier for `modem`; the path of the SMS object once its first
    /// part is there, or `/` when the modem is not registered and the carrier keeps it.
    async fn deliver(&self, modem: &Modem, item: Delivery) -> OwnedObjectPath {
        let (tx, rx) = oneshot::channel();
        self.ctx.carrier(CarrierCmd::Deliver {
            to: modem.own_number().to_owned(),
            item,
            first: Some(tx),
        });
        rx.await.unwrap_or_else(|_| root_path())
    }
}

#[interface(name = "org.tandem.MMSim1")]
impl ControlIface {
    /// Hosts a modem. Options: `sim-own-number` (b, default true: the SIM carries
    /// `OwnNumbers`), `state` (i, default 8 registered).
    async fn add_modem(
        &self,
        own_number: String,
        options: Options,
    ) -> Result<OwnedObjectPath, ControlError> {
        let mut spec = ModemSpec::new(own_number);
        let mut options = OptionReader::new(options);
        if let Some(sim) = options.take("sim-own-number")? {
            spec.sim_own_number = sim;
        }
        if let Some(state) = options.take("state")? {
            spec.state = state;
        }
        options.finish()?;
        Ok(self.ctx.add_modem(spec).await?.cell.path.clone())
    }

    /// Takes a modem off the bus (`InterfacesRemoved`). SMS to its number wait at the
    /// carrier until a modem with that number is added again.
    async fn remove_modem(&self, modem: String) -> Result<(), ControlError> {
        let modem = self.modem(&modem)?;
        self.ctx.remove_modem(&modem).await;
        Ok(())
    }

    /// Sets the modem's `MMModemState` (`StateChanged` + `PropertiesChanged`).
    async fn set_modem_state(&self, modem: String, state: i32) -> Result<(), ControlError> {
        let modem = self.modem(&modem)?;
        if !(modem_state::FAILED..=modem_state::CONNECTED).contains(&state) {
            return Err(ControlError::InvalidArgument(format!(
                "no modem state {state}"
            )));
        }
        modem.set_state(state, mm::change_reason::UNKNOWN).await;
        Ok(())
    }

    /// An SMS from the outside world. Options: `timestamp` (s), `smsc` (s), `parts` (u),
    /// `part-interval-ms` (u, default 50), `data` (ay, at most 140 bytes: a data SMS such
    /// as an MMS notification, whose `text` must then be ""). Returns the SMS object, or
    /// `/` when the modem is not registered (the carrier delivers it later).
    async fn inject_sms(
        &self,
        modem: String,
        from: String,
        text: String,
        options: Options,
    ) -> Result<OwnedObjectPath, ControlError> {
        let modem = self.modem(&modem)?;
        let settings = &self.ctx.settings;
        let mut options = OptionReader::new(options);
        let timestamp = options
            .take::<String>("timestamp")?
            .unwrap_or_else(|| text::mm_timestamp(text::now_unix(), settings.utc_offset_minutes));
        let smsc = options
            .take::<String>("smsc")?
            .unwrap_or_else(|| settings.smsc.clone());
        let parts = match options.take::<u32>("parts")? {
            Some(0) => {
                return Err(ControlError::InvalidArgument(
                    "parts must be at least 1".to_owned(),
                ));
            }
            Some(n) => text::split_even(&text, n as usize),
            None => text::split_parts(&text),
        };
        let interval = options.take::<u32>("part-interval-ms")?.unwrap_or(50);
        let data = options.take::<Vec<u8>>("data")?.unwrap_or_default();
        options.finish()?;
        if !data.is_empty() && (!text.is_empty() || data.len() > MAX_DATA_BYTES) {
            return Err(ControlError::InvalidArgument(format!(
                "a data SMS has an empty text and 1 to {MAX_DATA_BYTES} bytes of data"
            )));
        }
        let item = Delivery::Sms {
            from,
            parts,
            data,
            timestamp,
            smsc,
            interval: Duration::from_millis(u64::from(interval)),
            report: None,
        };
        Ok(self.deliver(&modem, item).await)
    }

    /// Announces a multipart SMS of `total_parts` parts (`Added`, state receiving); the
    /// parts come with `AddPart`. The modem must be registered.
    async fn begin_multipart(
        &self,
        modem: String,
        from: String,
        total_parts: u32,
    ) -> Result<OwnedObjectPath, ControlError> {
        let modem = self.modem(&modem)?;
        if total_parts == 0 {
            return Err(ControlError::InvalidArgument(
                "total_parts must be at least 1".to_owned(),
            ));
        }
        let settings = &self.ctx.settings;
        let props = SmsProps::deliver(
            from,
            text::mm_timestamp(text::now_unix(), settings.utc_offset_minutes),
            settings.smsc.clone(),
        );
        let (_, path) = modem
            .receive(props, total_parts, None)
            .await
            .map_err(|e| ControlError::WrongState(e.to_string()))?;
        Ok(path)
    }

    /// The next part of an SMS begun with `BeginMultipart`; the last one completes it.
    async fn add_part(&self, sms: OwnedObjectPath, text: String) -> Result<(), ControlError> {
        for cell in self.ctx.registry.all() {
            let key = cell.data().key_of(&sms);
            if let Some(key) = key {
                self.ctx.handle(cell).add_part(key, text).await?;
                return Ok(());
            }
        }
        Err(ControlError::NotFound(format!("no SMS {sms}")))
    }

    /// A status report about the SMS with `reference` sent to `number`. Returns its object,
    /// or `/` when the modem is not registered (the carrier delivers it later).
    async fn inject_status_report(
        &self,
        modem: String,
        number: String,
        reference: u32,
        delivery_state: u32,
    ) -> Result<OwnedObjectPath, ControlError> {
        let modem = self.modem(&modem)?;
        let now = text::mm_timestamp(text::now_unix(), self.ctx.settings.utc_offset_minutes);
        let item = Delivery::Report {
            recipient: number,
            reference,
            delivery_state,
            timestamp: now.clone(),
            discharge_timestamp: now,
        };
        Ok(self.deliver(&modem, item).await)
    }

    /// Every SMS the modem sent, oldest first: `number`, `text`, `delivery-report`,
    /// `reference`, `timestamp`, `path`.
    async fn get_sent(&self, modem: String) -> Result<Vec<Dict>, ControlError> {
        let sent = self.modem(&modem)?.data().sent().to_vec();
        sent.into_iter()
            .map(|s| {
                Ok(Dict::from([
                    ("number".to_owned(), value(s.number)?),
                    ("text".to_owned(), value(s.text)?),
                    ("delivery-report".to_owned(), value(s.delivery_report)?),
                    ("reference".to_owned(), value(s.reference)?),
                    ("timestamp".to_owned(), value(s.timestamp)?),
                    ("path".to_owned(), value(s.path.into_inner())?),
                ]))
            })
            .collect()
    }

    /// The SMS in the modem's storage: `path` (`/` while the modem is disabled), `state`,
    /// `pdu-type`, `number`, `text`, `reference`, `delivery-state`, `timestamp`.
    async fn list_sms(&self, modem: String) -> Result<Vec<Dict>, ControlError> {
        let stored = self.modem(&modem)?.data().stored();
        stored
            .into_iter()
            .map(|s| {
                let path = s.path.unwrap_or_else(root_path);
                Ok(Dict::from([
                    ("path".to_owned(), value(path.into_inner())?),
                    ("state".to_owned(), value(s.props.state)?),
                    ("pdu-type".to_owned(), value(s.props.pdu_type)?),
                    ("number".to_owned(), value(s.props.number)?),
                    ("text".to_owned(), value(s.props.text)?),
                    ("reference".to_owned(), value(s.props.message_reference)?),
                    ("delivery-state".to_owned(), value(s.props.delivery_state)?),
                    ("timestamp".to_owned(), value(s.props.timestamp)?),
                ]))
            })
            .collect()
    }

    /// The next `Sms.Send` on the modem fails with this D-Bus error.
    async fn fail_next_send(
        &self,
        modem: String,
        error_name: String,
        message: String,
    ) -> Result<(), ControlError> {
        let modem = self.modem(&modem)?;
        let name = OwnedErrorName::try_from(error_name.clone()).map_err(|e| {
            ControlError::InvalidArgument(format!("error name {error_name:?}: {e}"))
        })?;
        modem.data().set_fail_next(MmError::new(name, message));
        Ok(())
    }

    /// While blocked, `Messaging.Delete` calls on the modem do not answer; they complete
    /// when unblocked.
    async fn set_delete_blocked(&self, modem: String, blocked: bool) -> Result<(), ControlError> {
        self.modem(&modem)?.cell.set_delete_blocked(blocked);
        Ok(())
    }

    /// How many `Messaging.Delete` calls on the modem are waiting while deletes are
    /// blocked: a test sees that a client has come as far as deleting.
    async fn blocked_deletes(&self, modem: String) -> Result<u32, ControlError> {
        let waiting = self.modem(&modem)?.cell.blocked_deletes();
        Ok(u32::try_from(waiting).unwrap_or(u32::MAX))
    }

    /// From now on every `Sms.Send` on the modem takes this long before the SMS leaves
    /// (0: at once), holding the modem's other operations meanwhile, as a real modem busy
    /// with `AT+CMGS` does.
    async fn set_send_delay(&self, modem: String, ms: u32) -> Result<(), ControlError> {
        self.modem(&modem)?.cell.set_send_delay(ms);
        Ok(())
    }

    /// A modem (by its own number) sent an SMS.
    #[zbus(signal)]
    pub async fn sent(
        emitter: &SignalEmitter<'_>,
        modem: &str,
        to: &str,
        text: &str,
    ) -> zbus::Result<()>;
}
