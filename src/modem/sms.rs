//! One-shot jobs on ModemManager's SMS API, each run as a helper task of the adapter: list a
//! modem's SMS, read one, send one, delete one. They hold no state, bound every call with a
//! timeout, and report back through their return value; they must not emit events or decide
//! what the adapter tracks.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::{Instant, timeout};
use zbus::proxy::CacheProperties;
use zbus::{OwnedObjectPath, OwnedVariant, Variant};

use super::errors::{SendVerdict, classify, classify_send, error_name};
use super::proxies::messaging::MessagingProxy;
use super::proxies::sms::SmsProxy;
use super::timestamp::parse_mm_timestamp;
use super::{IncomingSms, SendFailure, SendOutcome, SmsObject, StatusReport};

pub(crate) const MM_SERVICE: &str = "org.freedesktop.ModemManager1";
pub(crate) const MM_PATH: &str = "/org/freedesktop/ModemManager1";
pub(crate) const SMS_IFACE: &str = "org.freedesktop.ModemManager1.Sms";

/// Bound of a simple call (List, reading properties).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of a Delete: ModemManager may have to talk to the SIM.
const DELETE_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts and pause of `list`: the modem may be busy right after enabling.
const LIST_ATTEMPTS: u32 = 3;
const LIST_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// `MMSmsState`
const SMS_STATE_UNKNOWN: u32 = 0;
const SMS_STATE_STORED: u32 = 1;
pub(crate) const SMS_STATE_RECEIVING: u32 = 2;
pub(crate) const SMS_STATE_RECEIVED: u32 = 3;
const SMS_STATE_SENT: u32 = 5;
/// `MMSmsPduType` of an outgoing SMS and of a status report.
const PDU_TYPE_SUBMIT: u32 = 2;
const PDU_TYPE_STATUS_REPORT: u32 = 3;

/// Why a call on ModemManager did not give an answer we can use.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    #[error(transparent)]
    DBus(#[from] zbus::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the SMS has no usable {0} property")]
    BadProperty(&'static str),
}

impl CallError {
    /// The object, or the ModemManager instance that had it, is not there (any more).
    pub(crate) fn is_gone(&self) -> bool {
        let CallError::DBus(err) = self else {
            return false;
        };
        self.is_unknown_object()
            || matches!(
                error_name(err).as_ref().map(|(name, _)| name.as_str()),
                Some(
                    "org.freedesktop.DBus.Error.ServiceUnknown"
                        | "org.freedesktop.DBus.Error.NameHasNoOwner"
                )
            )
    }

    /// The object (or the SMS a Delete named) is not there (any more).
    pub(crate) fn is_unknown_object(&self) -> bool {
        let CallError::DBus(err) = self else {
            return false;
        };
        matches!(
            error_name(err).as_ref().map(|(name, _)| name.as_str()),
            Some(
                "org.freedesktop.DBus.Error.UnknownObject"
                    | "org.freedesktop.DBus.Error.UnknownMethod"
                    | "org.freedesktop.DBus.Error.UnknownInterface"
                    | "org.freedesktop.ModemManager1.Error.Core.NotFound"
            )
        )
    }
}

async fn bounded<T>(
    limit: Duration,
    call: impl Future<Output = zbus::Result<T>>,
) -> Result<T, CallError> {
    match timeout(limit, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(CallError::Timeout(limit)),
    }
}

async fn messaging(
    conn: &zbus::Connection,
    modem: &OwnedObjectPath,
) -> zbus::Result<MessagingProxy<'static>> {
    MessagingProxy::builder(conn)
        .path(modem.clone())
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

/// `Messaging.List` of `modem`, retried a few times.
pub(crate) async fn list(
    conn: &zbus::Connection,
    modem: &OwnedObjectPath,
) -> Result<Vec<OwnedObjectPath>, CallError> {
    let proxy = messaging(conn, modem).await?;
    let mut attempt = 1;
    loop {
        match bounded(CALL_TIMEOUT, proxy.list()).await {
            Ok(paths) => return Ok(paths),
            Err(err) if attempt < LIST_ATTEMPTS => {
                tracing::debug!(modem = %modem, attempt, error = %err, "listing SMS failed, retrying");
                attempt += 1;
                tokio::time::sleep(LIST_RETRY_PAUSE).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// What an SMS object turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SmsFound {
    Incoming(IncomingSms),
    StatusReport(StatusReport),
    /// A multipart SMS still waiting for parts: read it again when its State changes.
    Receiving,
    /// An outgoing SMS never sent (`unknown` or `stored`): a draft, perhaps ours.
    Draft {
        number: String,
        text: String,
    },
    /// Not something received (one of ours, or a draft): in this `MMSmsState`.
    Other(u32),
    /// A received SMS of data, not text (an MMS notification for mmsd-tng, a WAP push, a
    /// SIM toolkit message): not a message for the inbox, and not ours to delete.
    Binary {
        /// Its size in bytes.
        bytes: usize,
    },
}

/// Reads every property of the SMS at `path` in one call and says what it is.
pub(crate) async fn read(
    conn: &zbus::Connection,
    path: &OwnedObjectPath,
) -> Result<SmsFound, CallError> {
    let props = read_props(conn, MM_SERVICE, path).await?;
    interpret(path, &props)
}

/// `GetAll` of the Sms interface of `path` at `destination` (a well-known or unique name).
async fn read_props(
    conn: &zbus::Connection,
    destination: &str,
    path: &OwnedObjectPath,
) -> Result<HashMap<String, OwnedVariant>, CallError> {
    let proxy = zbus::fdo::PropertiesProxy::builder(conn)
        .destination(destination.to_owned())
        .path(path.clone())
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let interface = zbus::names::InterfaceName::from_static_str_unchecked(SMS_IFACE);
    bounded(CALL_TIMEOUT, async {
        proxy.get_all(interface).await.map_err(zbus::Error::from)
    })
    .await
}

/// Says what an SMS is from its properties (the answer of `GetAll`).
pub(crate) fn interpret(
    path: &OwnedObjectPath,
    props: &HashMap<String, OwnedVariant>,
) -> Result<SmsFound, CallError> {
    let u32_of = |name| props.get(name).and_then(|v| u32::try_from(v).ok());
    let string_of = |name| {
        props
            .get(name)
            .and_then(|v| v.downcast_ref::<&str>().ok())
            .unwrap_or_default()
            .to_owned()
    };

    let state = u32_of("State").ok_or(CallError::BadProperty("State"))?;
    match state {
        SMS_STATE_RECEIVED => {}
        SMS_STATE_RECEIVING => return Ok(SmsFound::Receiving),
        SMS_STATE_UNKNOWN | SMS_STATE_STORED
            if u32_of("PduType").is_none_or(|t| t == PDU_TYPE_SUBMIT) =>
        {
            return Ok(SmsFound::Draft {
                number: string_of("Number"),
                text: string_of("Text"),
            });
        }
        other => return Ok(SmsFound::Other(other)),
    }
    if u32_of("PduType") == Some(PDU_TYPE_STATUS_REPORT) {
        return Ok(SmsFound::StatusReport(StatusReport {
            path: path.clone(),
            number: string_of("Number"),
            reference: u32_of("MessageReference")
                .ok_or(CallError::BadProperty("MessageReference"))?,
            delivery_state: u32_of("DeliveryState")
                .ok_or(CallError::BadProperty("DeliveryState"))?,
        }));
    }
    let text = string_of("Text");
    if text.is_empty() {
        let bytes = props
            .get("Data")
            .and_then(|v| v.downcast_ref::<zbus::Array>().ok())
            .map_or(0, |data| data.len());
        if bytes > 0 {
            return Ok(SmsFound::Binary { bytes });
        }
    }
    let smsc_timestamp = string_of("Timestamp");
    Ok(SmsFound::Incoming(IncomingSms {
        path: path.clone(),
        number: string_of("Number"),
        text,
        timestamp_ms: parse_mm_timestamp(&smsc_timestamp),
        smsc_timestamp,
        listed: false,
    }))
}

/// `Messaging.Delete(path)` on `modem`.
pub(crate) async fn delete(
    conn: &zbus::Connection,
    modem: &OwnedObjectPath,
    path: &OwnedObjectPath,
) -> Result<(), CallError> {
    let proxy = messaging(conn, modem).await?;
    bounded(DELETE_TIMEOUT, proxy.delete(path)).await
}

/// One SMS to create.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub number: String,
    pub text: String,
    pub delivery_report: bool,
}

/// `Messaging.Create` on `modem`: the object for one outgoing SMS, not sent. Nothing can
/// leave the phone here, so every failure is a plain "not sent".
pub(crate) async fn create(
    conn: &zbus::Connection,
    modem: &OwnedObjectPath,
    out: &Outgoing,
) -> Result<OwnedObjectPath, SendFailure> {
    let created = timeout(CALL_TIMEOUT, async {
        let proxy = messaging(conn, modem).await?;
        let number = Variant::from(out.number.as_str());
        let text = Variant::from(out.text.as_str());
        let report = Variant::from(out.delivery_report);
        let props = HashMap::from([
            ("number", &number),
            ("text", &text),
            ("delivery-report-request", &report),
        ]);
        proxy.create(props).await
    })
    .await;
    match created {
        Ok(Ok(path)) => Ok(path),
        Ok(Err(err)) => {
            let failure = classify(&err);
            tracing::warn!(modem = %modem, error = %err, temporary = failure.temporary,
                "creating an SMS failed");
            Err(failure)
        }
        Err(_) => {
            tracing::warn!(modem = %modem, "creating an SMS timed out");
            Err(SendFailure {
                temporary: true,
                reason: "timed out".to_owned(),
            })
        }
    }
}

/// A proxy for `object`, addressed to the ModemManager instance that made it.
async fn object_proxy(
    conn: &zbus::Connection,
    object: &SmsObject,
) -> zbus::Result<SmsProxy<'static>> {
    SmsProxy::builder(conn)
        .destination(object.owner.clone())
        .path(object.path.clone())
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

/// `Sms.Send` of `object`, given `budget` to answer, and how it ended. Only the send call
/// is bounded by the budget; once it has returned, nothing turns the SMS into a retry
/// (an unreadable reference is `Sent { reference: None }`). A send that ended without
/// ModemManager saying why is looked up on the object: `sent` means sent; an object still
/// unsent after the budget, or gone, leaves the outcome unknown.
pub(crate) async fn send(
    conn: &zbus::Connection,
    object: &SmsObject,
    budget: Duration,
) -> SendOutcome {
    let proxy = match object_proxy(conn, object).await {
        Ok(proxy) => proxy,
        Err(err) => return SendOutcome::NotSent(classify(&err)),
    };
    let unknown = |reason: String, resolved: Resolved| match resolved {
        Resolved::Sent(reference) => {
            tracing::info!(sms = %object.path, ?reference, "SMS found sent after all");
            SendOutcome::Sent { reference }
        }
        Resolved::Unsent | Resolved::Gone | Resolved::Unreadable => {
            tracing::warn!(sms = %object.path, %reason, "whether the SMS went out is unknown");
            SendOutcome::Unknown { reason }
        }
    };
    match timeout(budget, proxy.send()).await {
        Ok(Ok(())) => {
            let reference = match timeout(CALL_TIMEOUT, proxy.message_reference()).await {
                Ok(Ok(reference)) => Some(reference),
                Ok(Err(err)) => {
                    tracing::warn!(sms = %object.path, error = %err,
                        "SMS sent, but its MessageReference is unreadable: no status report will match");
                    None
                }
                Err(_) => {
                    tracing::warn!(sms = %object.path,
                        "SMS sent, but its MessageReference did not come: no status report will match");
                    None
                }
            };
            tracing::info!(sms = %object.path, ?reference, "SMS sent");
            SendOutcome::Sent { reference }
        }
        Ok(Err(err)) => match classify_send(&err) {
            SendVerdict::NotSent(failure) => {
                tracing::warn!(sms = %object.path, error = %err, temporary = failure.temporary,
                    "sending an SMS failed");
                SendOutcome::NotSent(failure)
            }
            SendVerdict::Unknown(reason) => {
                tracing::warn!(sms = %object.path, error = %err, "a send ended without an answer");
                // ModemManager has finished with it (or died): one look decides.
                unknown(reason, resolve(conn, object, Instant::now()).await)
            }
        },
        Err(_) => {
            tracing::warn!(sms = %object.path, ?budget,
                "no answer to Sms.Send in time: waiting as long again for the SMS to be sent");
            let resolved = resolve(conn, object, Instant::now() + budget).await;
            unknown(
                "ModemManager did not finish sending it in time".to_owned(),
                resolved,
            )
        }
    }
}

/// What an SMS object of ours says about its send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// `sent`, with its reference when readable.
    Sent(Option<u32>),
    /// Still not sent at the deadline.
    Unsent,
    /// The object, or the ModemManager instance that made it, is gone.
    Gone,
    /// It could not be read until the deadline.
    Unreadable,
}

/// How often [`resolve`] looks at an object it waits for. Only an interrupted send waits
/// (rare), so a plain poll is simpler than following its signals.
const RESOLVE_POLL: Duration = Duration::from_millis(500);

/// Reads `object` until it is `sent` or `until` has passed. A send that ModemManager is
/// still carrying out (it keeps `stored` or `unknown`, or shows `sending`, until the modem
/// answers) turns `sent` within the wait; an object still unsent then was not sent.
pub(crate) async fn resolve(
    conn: &zbus::Connection,
    object: &SmsObject,
    until: Instant,
) -> Resolved {
    loop {
        let result = read_props(conn, &object.owner, &object.path).await;
        let now = Instant::now();
        match result {
            Ok(props) => {
                let u32_of = |name| props.get(name).and_then(|v| u32::try_from(v).ok());
                if u32_of("State") == Some(SMS_STATE_SENT) {
                    return Resolved::Sent(u32_of("MessageReference"));
                }
                if now >= until {
                    return Resolved::Unsent;
                }
            }
            Err(err) if err.is_gone() => return Resolved::Gone,
            Err(err) => {
                tracing::debug!(sms = %object.path, error = %err, "cannot read our SMS yet");
                if now >= until {
                    return Resolved::Unreadable;
                }
            }
        }
        tokio::time::sleep(RESOLVE_POLL.min(until - now)).await;
    }
}

/// `Messaging.Delete` of one of our objects, at the instance that made it: `true` when it
/// is off the modem (an object, or instance, already gone counts as deleted).
pub(crate) async fn discard(conn: &zbus::Connection, object: &SmsObject) -> bool {
    let deleted = timeout(DELETE_TIMEOUT, async {
        let proxy = MessagingProxy::builder(conn)
            .destination(object.owner.clone())
            .path(object.modem.clone())
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        proxy.delete(&object.path).await
    })
    .await;
    match deleted {
        Ok(Ok(())) => {
            tracing::debug!(sms = %object.path, "our SMS object deleted");
            true
        }
        Ok(Err(err)) if CallError::DBus(err.clone()).is_gone() => {
            tracing::debug!(sms = %object.path, "our SMS object was already gone");
            true
        }
        Ok(Err(err)) => {
            tracing::warn!(sms = %object.path, error = %err, "cannot delete our SMS object");
            false
        }
        Err(_) => {
            tracing::warn!(sms = %object.path, "deleting our SMS object timed out");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> OwnedObjectPath {
        OwnedObjectPath::try_from("/org/freedesktop/ModemManager1/SMS/7").unwrap()
    }

    fn props(entries: &[(&str, Variant<'static>)]) -> HashMap<String, OwnedVariant> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), OwnedVariant::try_from(v).unwrap()))
            .collect()
    }

    #[test]
    fn data_sms_is_not_a_text_message() {
        let wap_push = props(&[
            ("State", 3u32.into()),
            ("PduType", 1u32.into()),
            ("Number", "+15550002222".into()),
            ("Text", "".into()),
            (
                "Data",
                Variant::from(vec![0x01u8, 0x06, 0x04, 0xbe, 0xaf, 0x84]),
            ),
        ]);
        assert_eq!(
            interpret(&path(), &wap_push).unwrap(),
            SmsFound::Binary { bytes: 6 }
        );
        // Text wins when a modem fills both; an empty SMS is still a text message.
        for (text, data) in [("hi", vec![1u8]), ("", vec![])] {
            let p = props(&[
                ("State", 3u32.into()),
                ("PduType", 1u32.into()),
                ("Number", "+15550002222".into()),
                ("Text", text.into()),
                ("Data", Variant::from(data)),
            ]);
            assert!(
                matches!(interpret(&path(), &p).unwrap(), SmsFound::Incoming(ref m) if m.text == text),
                "{text:?}"
            );
        }
    }

    #[test]
    fn received_deliver() {
        let p = props(&[
            ("State", 3u32.into()),
            ("PduType", 1u32.into()),
            ("Number", "+15550002222".into()),
            ("Text", "hello".into()),
            ("Timestamp", "2024-05-01T12:34:56+02".into()),
        ]);
        assert_eq!(
            interpret(&path(), &p).unwrap(),
            SmsFound::Incoming(IncomingSms {
                path: path(),
                number: "+15550002222".into(),
                text: "hello".into(),
                smsc_timestamp: "2024-05-01T12:34:56+02".into(),
                timestamp_ms: Some(1_714_559_696_000),
                listed: false,
            })
        );
    }

    #[test]
    fn old_modem_without_pdu_type_or_timestamp() {
        let p = props(&[
            ("State", 3u32.into()),
            ("Number", "12345".into()),
            ("Text", "hi".into()),
        ]);
        let SmsFound::Incoming(sms) = interpret(&path(), &p).unwrap() else {
            panic!("not incoming");
        };
        assert_eq!(sms.smsc_timestamp, "");
        assert_eq!(sms.timestamp_ms, None);
    }

    #[test]
    fn status_report() {
        let p = props(&[
            ("State", 3u32.into()),
            ("PduType", 3u32.into()),
            ("Number", "+15550002222".into()),
            ("MessageReference", 42u32.into()),
            ("DeliveryState", 0u32.into()),
        ]);
        assert_eq!(
            interpret(&path(), &p).unwrap(),
            SmsFound::StatusReport(StatusReport {
                path: path(),
                number: "+15550002222".into(),
                reference: 42,
                delivery_state: 0,
            })
        );
    }

    #[test]
    fn not_complete_or_not_received() {
        let receiving = props(&[("State", 2u32.into()), ("Text", "".into())]);
        assert_eq!(interpret(&path(), &receiving).unwrap(), SmsFound::Receiving);
        let sent = props(&[("State", 5u32.into())]);
        assert_eq!(interpret(&path(), &sent).unwrap(), SmsFound::Other(5));
        let draft = props(&[
            ("State", 1u32.into()),
            ("PduType", 2u32.into()),
            ("Number", "+15550002222".into()),
            ("Text", "hi".into()),
        ]);
        assert_eq!(
            interpret(&path(), &draft).unwrap(),
            SmsFound::Draft {
                number: "+15550002222".into(),
                text: "hi".into()
            }
        );
        let broken = props(&[("State", "three".into())]);
        assert!(matches!(
            interpret(&path(), &broken),
            Err(CallError::BadProperty("State"))
        ));
    }
}
