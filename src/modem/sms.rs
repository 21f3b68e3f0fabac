//! One-shot jobs on ModemManager's SMS API, each run as a helper task of the adapter: list a
//! modem's SMS, read one, send one, delete one. They hold no state, bound every call with a
//! timeout, and report back through their return value; they must not emit events or decide
//! what the adapter tracks.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::{Instant, timeout, timeout_at};
use zbus::proxy::CacheProperties;
use zbus::{OwnedObjectPath, OwnedVariant, Variant};

use super::errors::{classify, error_name};
use super::proxies::messaging::MessagingProxy;
use super::proxies::sms::SmsProxy;
use super::timestamp::parse_mm_timestamp;
use super::{IncomingSms, SendFailure, StatusReport};

pub(crate) const MM_SERVICE: &str = "org.freedesktop.ModemManager1";
pub(crate) const MM_PATH: &str = "/org/freedesktop/ModemManager1";
pub(crate) const SMS_IFACE: &str = "org.freedesktop.ModemManager1.Sms";

/// Bound of a simple call (List, reading properties).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of a whole send (Create, Send, reading the reference).
pub(crate) const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of a Delete: ModemManager may have to talk to the SIM.
const DELETE_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts and pause of `list`: the modem may be busy right after enabling.
const LIST_ATTEMPTS: u32 = 3;
const LIST_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// `MMSmsState`
pub(crate) const SMS_STATE_RECEIVING: u32 = 2;
pub(crate) const SMS_STATE_RECEIVED: u32 = 3;
/// `MMSmsPduType` of a status report.
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

async fn sms_proxy(
    conn: &zbus::Connection,
    path: &OwnedObjectPath,
) -> zbus::Result<SmsProxy<'static>> {
    SmsProxy::builder(conn)
        .path(path.clone())
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
    /// Not something received (one of ours, or a draft): in this `MMSmsState`.
    Other(u32),
}

/// Reads every property of the SMS at `path` in one call and says what it is.
pub(crate) async fn read(
    conn: &zbus::Connection,
    path: &OwnedObjectPath,
) -> Result<SmsFound, CallError> {
    let proxy = zbus::fdo::PropertiesProxy::builder(conn)
        .destination(MM_SERVICE)
        .path(path.clone())
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let interface = zbus::names::InterfaceName::from_static_str_unchecked(SMS_IFACE);
    let props = bounded(CALL_TIMEOUT, async {
        proxy.get_all(interface).await.map_err(zbus::Error::from)
    })
    .await?;
    interpret(path, &props)
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
    let smsc_timestamp = string_of("Timestamp");
    Ok(SmsFound::Incoming(IncomingSms {
        path: path.clone(),
        number: string_of("Number"),
        text: string_of("Text"),
        timestamp_ms: parse_mm_timestamp(&smsc_timestamp),
        smsc_timestamp,
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

/// One SMS to send.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub number: String,
    pub text: String,
    pub delivery_report: bool,
}

/// How a send went, and the SMS object left behind that should be deleted.
#[derive(Debug)]
pub(crate) struct SendOutcome {
    pub result: Result<Option<u32>, SendFailure>,
    pub leftover: Option<OwnedObjectPath>,
}

/// Create, Send, read `MessageReference`, all within [`SEND_TIMEOUT`]. The SMS object is
/// returned as leftover when the send failed, or when it went out and `delete_sent` is set.
pub(crate) async fn send(
    conn: &zbus::Connection,
    modem: &OwnedObjectPath,
    out: &Outgoing,
    delete_sent: bool,
) -> SendOutcome {
    let deadline = Instant::now() + SEND_TIMEOUT;
    let timed_out = || SendFailure {
        temporary: true,
        reason: "timed out".to_owned(),
    };
    let failed = |step: &str, err: &zbus::Error| {
        let failure = classify(err);
        tracing::warn!(
            modem = %modem, step, error = %err, temporary = failure.temporary,
            "sending an SMS failed"
        );
        failure
    };

    let created = match timeout_at(deadline, create(conn, modem, out)).await {
        Err(_) => {
            tracing::warn!(modem = %modem, "creating an SMS timed out");
            return SendOutcome {
                result: Err(timed_out()),
                leftover: None,
            };
        }
        Ok(Err(err)) => {
            return SendOutcome {
                result: Err(failed("create", &err)),
                leftover: None,
            };
        }
        Ok(Ok(path)) => path,
    };

    let sent = timeout_at(deadline, async {
        let sms = sms_proxy(conn, &created)
            .await
            .map_err(|e| ("opening the SMS", e))?;
        sms.send().await.map_err(|e| ("send", e))?;
        // It went out: from here on, no error may turn it into a retry (a second SMS).
        Ok::<_, (&str, zbus::Error)>(match sms.message_reference().await {
            Ok(reference) => Some(reference),
            Err(err) => {
                tracing::warn!(modem = %modem, sms = %created, error = %err,
                    "SMS sent, but its MessageReference is unreadable: no status report will match");
                None
            }
        })
    })
    .await;
    let result = match sent {
        Ok(Ok(reference)) => {
            tracing::info!(modem = %modem, sms = %created, ?reference, "SMS sent");
            Ok(reference)
        }
        Ok(Err((step, err))) => Err(failed(step, &err)),
        Err(_) => {
            tracing::warn!(modem = %modem, sms = %created, "sending an SMS timed out");
            Err(timed_out())
        }
    };
    let leftover = (result.is_err() || delete_sent).then_some(created);
    SendOutcome { result, leftover }
}

async fn create(
    conn: &zbus::Connection,
    modem: &OwnedObjectPath,
    out: &Outgoing,
) -> zbus::Result<OwnedObjectPath> {
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
        let broken = props(&[("State", "three".into())]);
        assert!(matches!(
            interpret(&path(), &broken),
            Err(CallError::BadProperty("State"))
        ));
    }
}
