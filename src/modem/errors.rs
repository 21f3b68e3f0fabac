//! What a failed ModemManager call means for a send: worth retrying later (temporary) or not
//! (final), with a short human reason. Pure, apart from picking the error name out of a
//! `zbus::Error`. Knows ModemManager's error names (`ModemManager-errors.h`, 1.20) and the
//! standard D-Bus ones; must not log or decide about retries itself.

use zbus::DBusError as _;

use super::SendFailure;

const MM_ERROR: &str = "org.freedesktop.ModemManager1.Error.";
const DBUS_ERROR: &str = "org.freedesktop.DBus.Error.";

/// The D-Bus error name and its message, when `err` is an error reply at all (rather than a
/// local or transport failure).
pub(crate) fn error_name(err: &zbus::Error) -> Option<(String, String)> {
    match err {
        zbus::Error::MethodError(name, detail, _) => {
            Some((name.to_string(), detail.clone().unwrap_or_default()))
        }
        zbus::Error::FDO(fdo) => match &**fdo {
            zbus::fdo::Error::ZBus(inner) => error_name(inner),
            other => Some((
                other.name().to_string(),
                other.description().unwrap_or_default().to_owned(),
            )),
        },
        _ => None,
    }
}

/// Classifies a failed call of the send sequence (Create, Send, reading the reference).
pub(crate) fn classify(err: &zbus::Error) -> SendFailure {
    match error_name(err) {
        Some((name, _)) => classify_name(&name),
        // No reply at all: the bus connection broke, or the reply made no sense.
        None => SendFailure {
            temporary: true,
            reason: "connection to ModemManager lost".to_owned(),
        },
    }
}

/// What a failed `Sms.Send` says about the SMS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SendVerdict {
    /// ModemManager answered that it did not send it.
    NotSent(SendFailure),
    /// The call ended without ModemManager saying whether the modem sent it: it died or
    /// stopped answering, the modem did not answer ModemManager, or ModemManager could not
    /// read the modem's answer. The SMS may have gone out.
    Unknown(String),
}

/// Classifies a failed `Sms.Send`. Only an answer from ModemManager that names a reason
/// the SMS did not go counts as "not sent"; every way of getting no such answer is unknown.
pub(crate) fn classify_send(err: &zbus::Error) -> SendVerdict {
    match error_name(err) {
        Some((name, detail)) => classify_send_name(&name, &detail),
        None => SendVerdict::Unknown("the connection to ModemManager broke while sending".into()),
    }
}

/// [`classify_send`] of an error name and its message.
pub(crate) fn classify_send_name(name: &str, detail: &str) -> SendVerdict {
    let unknown = |why: &str| SendVerdict::Unknown(why.to_owned());
    if let Some(code) = name.strip_prefix(DBUS_ERROR) {
        match code {
            "NoReply" | "Timeout" | "TimedOut" => {
                return unknown("ModemManager gave no answer while sending");
            }
            "Disconnected" | "IOError" | "NoServer" | "NoNetwork" => {
                return unknown("the connection to ModemManager broke while sending");
            }
            _ => {}
        }
    } else if let Some(rest) = name.strip_prefix(MM_ERROR) {
        match rest {
            // The modem did not answer (in time, or readably) after taking the SMS.
            "Serial.ResponseTimeout" | "Serial.ParseFailed" | "Serial.FrameNotFound" => {
                return unknown("the modem stopped answering while sending");
            }
            "Core.Cancelled" | "Core.Aborted" => {
                return unknown("ModemManager abandoned the send");
            }
            // ModemManager 1.20 fails a send whose `+CMGS` answer it cannot parse, after
            // the modem sent it.
            "Core.Failed" if detail.contains("message reference") => {
                return unknown("the modem's answer to the send was unreadable");
            }
            _ => {}
        }
    }
    SendVerdict::NotSent(classify_name(name))
}

/// Classifies a D-Bus error name. Unknown names are temporary: a message is only failed for
/// good when the modem or network said that this message cannot go.
pub(crate) fn classify_name(name: &str) -> SendFailure {
    use Kind::*;
    let kind = if let Some(rest) = name.strip_prefix(MM_ERROR) {
        let (domain, code) = rest.split_once('.').unwrap_or((rest, ""));
        match domain {
            "Core" => core(code),
            // "MessageError" and "Cms" are not ModemManager's spellings (it uses "Message"
            // for CMS errors) but are accepted as the same domain.
            "Message" | "MessageError" | "Cms" => message(code),
            "MobileEquipment" => mobile_equipment(code),
            "Serial" => Temporary("modem not responding"),
            "Connection" => Temporary("modem not responding"),
            _ => Temporary("modem error"),
        }
    } else if let Some(code) = name.strip_prefix(DBUS_ERROR) {
        match code {
            "ServiceUnknown" | "NameHasNoOwner" => Temporary("ModemManager not running"),
            "NoReply" | "Timeout" | "TimedOut" => Temporary("timed out"),
            "Disconnected" | "IOError" | "NoServer" | "NoNetwork" => {
                Temporary("connection to ModemManager lost")
            }
            "UnknownObject" | "UnknownMethod" | "UnknownInterface" | "UnknownProperty" => {
                Temporary("modem went away")
            }
            "InvalidArgs" => Final("invalid number or text"),
            "AccessDenied" | "AuthFailed" => Final("not authorized"),
            "LimitsExceeded" | "NoMemory" => Temporary("modem busy"),
            _ => Temporary("modem error"),
        }
    } else {
        Temporary("modem error")
    };
    kind.into()
}

/// A classification before it becomes a [`SendFailure`].
enum Kind {
    Temporary(&'static str),
    Final(&'static str),
}

impl From<Kind> for SendFailure {
    fn from(kind: Kind) -> Self {
        let (temporary, reason) = match kind {
            Kind::Temporary(reason) => (true, reason),
            Kind::Final(reason) => (false, reason),
        };
        SendFailure {
            temporary,
            reason: reason.to_owned(),
        }
    }
}

/// `org.freedesktop.ModemManager1.Error.Core.*`
fn core(code: &str) -> Kind {
    use Kind::*;
    match code {
        "InvalidArgs" => Final("invalid number or text"),
        "Unsupported" => Final("not supported by the modem"),
        "Unauthorized" => Final("not authorized"),
        "Retry" | "InProgress" | "Connected" => Temporary("modem busy"),
        "WrongState" | "NoPlugins" | "NotFound" => Temporary("modem not ready"),
        "WrongSimState" => Temporary("SIM not ready"),
        "TooMany" => Temporary("modem storage full"),
        "Cancelled" | "Aborted" => Temporary("cancelled"),
        _ => Temporary("modem error"),
    }
}

/// `org.freedesktop.ModemManager1.Error.Message.*`: the CMS errors of 3GPP TS 27.005.
fn message(code: &str) -> Kind {
    use Kind::*;
    match code {
        "InvalidPduParameter" | "InvalidTextParameter" => Final("invalid number or text"),
        "NotSupported" => Final("not supported by the modem"),
        "NotAllowed" | "SmsServiceReserved" => Final("refused by the network"),
        "SmscAddressUnknown" => Final("no SMS centre number"),
        "NoNetwork" => Temporary("no network"),
        "NetworkTimeout" => Temporary("network timeout"),
        "SimNotInserted" => Temporary("no SIM"),
        "SimPin" | "PhSimPin" | "SimPuk" | "SimPin2" | "SimPuk2" => Temporary("SIM locked"),
        "SimFailure" | "SimBusy" | "SimWrong" => Temporary("SIM not ready"),
        "MemoryFull" => Temporary("modem storage full"),
        _ => Temporary("modem error"),
    }
}

/// `org.freedesktop.ModemManager1.Error.MobileEquipment.*`: the CME errors of 3GPP TS 27.007.
fn mobile_equipment(code: &str) -> Kind {
    use Kind::*;
    match code {
        "TextTooLong"
        | "InvalidChars"
        | "DialStringTooLong"
        | "DialStringInvalid"
        | "IncorrectParameters" => Final("invalid number or text"),
        "NotSupported" | "FeatureNotSupported" => Final("not supported by the modem"),
        "NotAllowed"
        | "CallBarred"
        | "OperatorDeterminedBarring"
        | "FixedDialNumberOnly"
        | "NetworkNotAllowed" => Final("refused by the network"),
        "NoNetwork" | "NoConnection" | "TemporarilyOutOfService" => Temporary("no network"),
        "NetworkTimeout" => Temporary("network timeout"),
        "SimNotInserted" => Temporary("no SIM"),
        "SimPin" | "SimPuk" | "SimPin2" | "SimPuk2" | "PhSimPin" => Temporary("SIM locked"),
        "SimFailure" | "SimBusy" | "SimWrong" => Temporary("SIM not ready"),
        "MemoryFull" => Temporary("modem storage full"),
        _ => Temporary("modem error"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mm(name: &str) -> String {
        format!("org.freedesktop.ModemManager1.Error.{name}")
    }

    fn dbus(name: &str) -> String {
        format!("org.freedesktop.DBus.Error.{name}")
    }

    #[test]
    fn error_names_classify() {
        // (temporary, reason, the names that get it)
        let verdicts = [
            (
                false,
                "invalid number or text",
                vec![
                    mm("Core.InvalidArgs"),
                    mm("Message.InvalidPduParameter"),
                    mm("MessageError.InvalidTextParameter"),
                    mm("MobileEquipment.DialStringInvalid"),
                    dbus("InvalidArgs"),
                ],
            ),
            (
                false,
                "not supported by the modem",
                vec![mm("Core.Unsupported"), mm("Cms.NotSupported")],
            ),
            (
                false,
                "refused by the network",
                vec![mm("Message.NotAllowed")],
            ),
            (true, "modem busy", vec![mm("Core.Retry")]),
            (true, "modem not ready", vec![mm("Core.WrongState")]),
            (true, "no network", vec![mm("Message.NoNetwork")]),
            (true, "network timeout", vec![mm("Message.NetworkTimeout")]),
            (true, "SIM not ready", vec![mm("MobileEquipment.SimBusy")]),
            (
                true,
                "modem not responding",
                vec![mm("Serial.ResponseTimeout")],
            ),
            (true, "timed out", vec![dbus("NoReply")]),
            (
                true,
                "ModemManager not running",
                vec![dbus("ServiceUnknown")],
            ),
            (
                true,
                "connection to ModemManager lost",
                vec![dbus("Disconnected")],
            ),
            (true, "modem went away", vec![dbus("UnknownObject")]),
            (
                true,
                "modem error",
                vec![
                    mm("Core.Failed"),
                    mm("Core.SomethingNew"),
                    mm("Message.Unknown"),
                    mm("Whatever"),
                    dbus("Failed"),
                    "com.example.Odd".to_owned(),
                ],
            ),
        ];
        for (temporary, reason, names) in verdicts {
            for name in names {
                let got = classify_name(&name);
                assert_eq!(
                    (got.temporary, got.reason.as_str()),
                    (temporary, reason),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn send_errors_that_leave_the_outcome_unknown() {
        // (whether the SMS may have gone, the error's detail, names)
        let cases = [
            // Asked, and no answer: it may have gone.
            (
                true,
                "",
                vec![
                    dbus("NoReply"),
                    dbus("Timeout"),
                    dbus("Disconnected"),
                    mm("Serial.ResponseTimeout"),
                    mm("Serial.ParseFailed"),
                    mm("Core.Aborted"),
                ],
            ),
            (
                true,
                "Couldn't read message reference: 0 fields parsed from response 'OK'",
                vec![mm("Core.Failed")],
            ),
            // Answered: it did not go (the call never reached ModemManager, or it said why).
            (
                false,
                "Cannot send SMS",
                vec![
                    dbus("ServiceUnknown"),
                    dbus("UnknownObject"),
                    dbus("InvalidArgs"),
                    mm("Core.WrongState"),
                    mm("Core.Failed"),
                    mm("Message.NetworkTimeout"),
                    mm("Serial.SendFailed"),
                ],
            ),
        ];
        for (may_have_gone, detail, names) in cases {
            for name in names {
                let verdict = classify_send_name(&name, detail);
                assert_eq!(
                    matches!(verdict, SendVerdict::Unknown(_)),
                    may_have_gone,
                    "{name}: {verdict:?}"
                );
            }
        }
        assert_eq!(
            classify_send_name(&mm("Message.NotAllowed"), ""),
            SendVerdict::NotSent(SendFailure {
                temporary: false,
                reason: "refused by the network".into()
            })
        );
        let io = zbus::Error::InputOutput(std::sync::Arc::new(std::io::Error::other("gone")));
        assert!(matches!(classify_send(&io), SendVerdict::Unknown(_)));
    }

    #[test]
    fn zbus_errors() {
        let io = zbus::Error::InputOutput(std::sync::Arc::new(std::io::Error::other("gone")));
        assert_eq!(error_name(&io), None);
        assert!(classify(&io).temporary);

        let fdo = zbus::Error::FDO(Box::new(zbus::fdo::Error::NoReply("late".into())));
        assert_eq!(
            error_name(&fdo),
            Some(("org.freedesktop.DBus.Error.NoReply".into(), "late".into()))
        );
        assert_eq!(classify(&fdo).reason, "timed out");
    }
}
