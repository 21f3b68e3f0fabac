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

    const MM: &str = "org.freedesktop.ModemManager1.Error.";
    const DBUS: &str = "org.freedesktop.DBus.Error.";

    /// (prefix, name, temporary, reason) for every error name the modem's calls meet.
    const NAMES: [(&str, &str, bool, &str); 24] = [
        (MM, "Core.InvalidArgs", false, "invalid number or text"),
        (MM, "Core.Unsupported", false, "not supported by the modem"),
        (MM, "Core.Retry", true, "modem busy"),
        (MM, "Core.WrongState", true, "modem not ready"),
        (MM, "Core.Failed", true, "modem error"),
        (MM, "Core.SomethingNew", true, "modem error"),
        (
            MM,
            "Message.InvalidPduParameter",
            false,
            "invalid number or text",
        ),
        (MM, "Message.NotAllowed", false, "refused by the network"),
        (MM, "Message.NoNetwork", true, "no network"),
        (MM, "Message.NetworkTimeout", true, "network timeout"),
        (MM, "Message.Unknown", true, "modem error"),
        (
            MM,
            "MessageError.InvalidTextParameter",
            false,
            "invalid number or text",
        ),
        (MM, "Cms.NotSupported", false, "not supported by the modem"),
        (
            MM,
            "MobileEquipment.DialStringInvalid",
            false,
            "invalid number or text",
        ),
        (MM, "MobileEquipment.SimBusy", true, "SIM not ready"),
        (MM, "Serial.ResponseTimeout", true, "modem not responding"),
        (MM, "Whatever", true, "modem error"),
        (DBUS, "NoReply", true, "timed out"),
        (DBUS, "ServiceUnknown", true, "ModemManager not running"),
        (
            DBUS,
            "Disconnected",
            true,
            "connection to ModemManager lost",
        ),
        (DBUS, "UnknownObject", true, "modem went away"),
        (DBUS, "InvalidArgs", false, "invalid number or text"),
        (DBUS, "Failed", true, "modem error"),
        ("", "com.example.Odd", true, "modem error"),
    ];

    #[test]
    fn error_names_classify() {
        for (prefix, name, temporary, reason) in NAMES {
            let name = format!("{prefix}{name}");
            let got = classify_name(&name);
            assert_eq!(
                (got.temporary, got.reason.as_str()),
                (temporary, reason),
                "{name}"
            );
        }
    }

    /// (prefix, name, detail, whether the SMS may have gone) for a failed `Send`.
    const SEND_NAMES: [(&str, &str, &str, bool); 14] = [
        // Asked, and no answer: it may have gone.
        (DBUS, "NoReply", "", true),
        (DBUS, "Timeout", "", true),
        (DBUS, "Disconnected", "", true),
        (MM, "Serial.ResponseTimeout", "", true),
        (MM, "Serial.ParseFailed", "", true),
        (MM, "Core.Aborted", "", true),
        (
            MM,
            "Core.Failed",
            "Couldn't read message reference: 0 fields parsed from response 'OK'",
            true,
        ),
        // Answered: it did not go (the call never reached ModemManager, or it said why).
        (DBUS, "ServiceUnknown", "Cannot send SMS", false),
        (DBUS, "UnknownObject", "Cannot send SMS", false),
        (DBUS, "InvalidArgs", "Cannot send SMS", false),
        (MM, "Core.WrongState", "Cannot send SMS", false),
        (MM, "Core.Failed", "Cannot send SMS", false),
        (MM, "Message.NetworkTimeout", "Cannot send SMS", false),
        (MM, "Serial.SendFailed", "Cannot send SMS", false),
    ];

    #[test]
    fn send_errors_that_leave_the_outcome_unknown() {
        for (prefix, name, detail, may_have_gone) in SEND_NAMES {
            let name = format!("{prefix}{name}");
            let verdict = classify_send_name(&name, detail);
            assert_eq!(
                matches!(verdict, SendVerdict::Unknown(_)),
                may_have_gone,
                "{name}: {verdict:?}"
            );
        }
        assert_eq!(
            classify_send_name(&format!("{MM}Message.NotAllowed"), ""),
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
