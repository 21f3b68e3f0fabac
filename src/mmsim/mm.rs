//! ModemManager 1.20's wire vocabulary as the simulator needs it: bus name, object paths,
//! enum values (from `ModemManager-enums.h`) and the `org.freedesktop.ModemManager1.Error.*`
//! errors. Constants and one error type; no behaviour.

use zbus::message::{Header, Message};
use zbus::names::{ErrorName, OwnedErrorName};

pub const BUS_NAME: &str = "org.freedesktop.ModemManager1";
pub const MANAGER_PATH: &str = "/org/freedesktop/ModemManager1";
pub const VERSION: &str = "1.20.4";

pub fn modem_path(index: u32) -> String {
    format!("{MANAGER_PATH}/Modem/{index}")
}
pub fn sim_path(index: u32) -> String {
    format!("{MANAGER_PATH}/SIM/{index}")
}
pub fn sms_path(index: u32) -> String {
    format!("{MANAGER_PATH}/SMS/{index}")
}

/// `MMModemState`.
pub mod modem_state {
    pub const FAILED: i32 = -1;
    pub const DISABLED: i32 = 3;
    pub const DISABLING: i32 = 4;
    pub const ENABLING: i32 = 5;
    pub const ENABLED: i32 = 6;
    pub const SEARCHING: i32 = 7;
    pub const REGISTERED: i32 = 8;
    pub const CONNECTED: i32 = 11;
}

/// `MMModemStateChangeReason`.
pub mod change_reason {
    pub const UNKNOWN: u32 = 0;
    pub const USER_REQUESTED: u32 = 1;
}

/// `MMSmsState`.
pub mod sms_state {
    pub const UNKNOWN: u32 = 0;
    pub const STORED: u32 = 1;
    pub const RECEIVING: u32 = 2;
    pub const RECEIVED: u32 = 3;
    pub const SENT: u32 = 5;
}

/// `MMSmsPduType`.
pub mod pdu_type {
    pub const DELIVER: u32 = 1;
    pub const SUBMIT: u32 = 2;
    pub const STATUS_REPORT: u32 = 3;
}

/// `MMSmsStorage`.
pub mod storage {
    pub const UNKNOWN: u32 = 0;
    pub const SM: u32 = 1;
    pub const ME: u32 = 2;
}

/// `MMSmsDeliveryState`.
pub mod delivery_state {
    pub const COMPLETED_RECEIVED: u32 = 0x00;
    pub const UNKNOWN: u32 = 0x100;
}

/// `MMSmsValidityType`.
pub mod validity_type {
    pub const UNKNOWN: u32 = 0;
    pub const RELATIVE: u32 = 1;
}

/// Other enum values the modem's properties show.
pub const LOCK_NONE: u32 = 1;
pub const POWER_STATE_LOW: u32 = 2;
pub const POWER_STATE_ON: u32 = 3;
pub const ACCESS_TECHNOLOGY_LTE: u32 = 1 << 14;
pub const CAPABILITY_GSM_UMTS_LTE: u32 = (1 << 2) | (1 << 3);
pub const MODE_2G_3G_4G: u32 = (1 << 1) | (1 << 2) | (1 << 3);
pub const MODE_4G: u32 = 1 << 3;
pub const IP_FAMILY_ALL: u32 = 1 | 2 | 4;
pub const PORT_TYPE_AT: u32 = 3;
pub const REGISTRATION_IDLE: u32 = 0;
pub const REGISTRATION_HOME: u32 = 1;
pub const REGISTRATION_SEARCHING: u32 = 2;
pub const SIM_TYPE_PHYSICAL: u32 = 1;
pub const SIM_REMOVABLE: u32 = 1;
pub const SUBSCRIPTION_PROVISIONED: u32 = 2;
pub const PACKET_SERVICE_ATTACHED: u32 = 2;
pub const PACKET_SERVICE_DETACHED: u32 = 1;

/// The simulated network's identity.
pub const OPERATOR_CODE: &str = "00101";
pub const OPERATOR_NAME: &str = "Tandem Mobile";

/// A ModemManager error as it goes on the wire: `org.freedesktop.ModemManager1.Error.*`
/// (or any name a test asked for with `FailNextSend`) and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {message}")]
pub struct MmError {
    name: OwnedErrorName,
    message: String,
}

impl MmError {
    /// An error with any valid D-Bus error name.
    pub fn new(name: OwnedErrorName, message: impl Into<String>) -> Self {
        MmError {
            name,
            message: message.into(),
        }
    }

    /// `org.freedesktop.ModemManager1.Error.Core.<nick>`.
    fn core(nick: &'static str, message: impl Into<String>) -> Self {
        // The nick is one of the fixed names below, so the name is always valid.
        let name = ErrorName::from_string_unchecked(format!("{BUS_NAME}.Error.Core.{nick}"));
        MmError::new(name.into(), message)
    }

    pub fn failed(message: impl Into<String>) -> Self {
        MmError::core("Failed", message)
    }
    pub fn unsupported(message: impl Into<String>) -> Self {
        MmError::core("Unsupported", message)
    }
    pub fn invalid_args(message: impl Into<String>) -> Self {
        MmError::core("InvalidArgs", message)
    }
    pub fn wrong_state(message: impl Into<String>) -> Self {
        MmError::core("WrongState", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        MmError::core("NotFound", message)
    }

    pub fn error_name(&self) -> &str {
        self.name.as_str()
    }
}

impl zbus::DBusError for MmError {
    fn create_reply(&self, call: &Header<'_>) -> zbus::Result<Message> {
        Message::error(call, self.name.as_ref()).build(&(self.message.as_str(),))
    }

    fn name(&self) -> ErrorName<'_> {
        self.name.as_ref()
    }

    fn description(&self) -> Option<&str> {
        Some(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_errors_have_modemmanager_names() {
        for (err, name) in [
            (MmError::failed("x"), "Failed"),
            (MmError::wrong_state("x"), "WrongState"),
            (MmError::not_found("x"), "NotFound"),
            (MmError::invalid_args("x"), "InvalidArgs"),
            (MmError::unsupported("x"), "Unsupported"),
        ] {
            assert_eq!(
                err.error_name(),
                format!("org.freedesktop.ModemManager1.Error.Core.{name}")
            );
        }
    }
}
