//! What the adapter knows of each modem ModemManager exports, which one it uses, and how
//! ModemManager's modem states map to [`ModemState`]. Pure: fed from ObjectManager and
//! PropertiesChanged data by the adapter task, no D-Bus calls here.

use std::collections::HashMap;

use zbus::{OwnedObjectPath, Variant};

use crate::domain::ModemState;

pub(crate) const MODEM_IFACE: &str = "org.freedesktop.ModemManager1.Modem";
pub(crate) const MESSAGING_IFACE: &str = "org.freedesktop.ModemManager1.Modem.Messaging";

/// `MM_MODEM_STATE_ENABLED`: from here on the modem's SMS list is loaded.
pub(crate) const MM_STATE_ENABLED: i32 = 6;

/// Maps ModemManager's `MMModemState` to what the daemon shows.
pub(crate) fn map_modem_state(state: i32) -> ModemState {
    match state {
        -1 => ModemState::Failed,
        2 => ModemState::Locked,
        6 | 7 => ModemState::Searching,
        8..=11 => ModemState::Registered,
        // unknown(0), initializing(1), disabled(3), disabling(4), enabling(5), and values a
        // newer ModemManager might add.
        _ => ModemState::Disabled,
    }
}

/// Whether ModemManager's state means the modem is enabled (its SMS list is loaded).
pub(crate) fn is_enabled(state: i32) -> bool {
    state >= MM_STATE_ENABLED
}

/// The first non-empty entry of `OwnNumbers`.
pub(crate) fn first_number(numbers: &[String]) -> Option<String> {
    numbers
        .iter()
        .map(|n| n.trim())
        .find(|n| !n.is_empty())
        .map(str::to_owned)
}

/// One object ModemManager exports with the Modem interface.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ModemInfo {
    /// It has the Modem interface (it may briefly have Messaging only while signals arrive).
    pub has_modem: bool,
    /// Only a modem with Messaging can be used.
    pub has_messaging: bool,
    /// `MMModemState`, 0 (unknown) until known.
    pub state: i32,
    /// `OwnNumbers`, to report it and to match `config.modem`.
    pub own_numbers: Vec<String>,
    /// `EquipmentIdentifier` (IMEI), to match `config.modem`.
    pub equipment_identifier: String,
}

impl ModemInfo {
    /// Notes interfaces that appeared, with their properties (InterfacesAdded or one entry of
    /// GetManagedObjects).
    pub(super) fn add_interface(
        &mut self,
        interface: &str,
        properties: &HashMap<&str, &Variant<'_>>,
    ) {
        match interface {
            MODEM_IFACE => {
                self.has_modem = true;
                self.update(properties);
            }
            MESSAGING_IFACE => self.has_messaging = true,
            _ => {}
        }
    }

    /// Notes interfaces that went away (InterfacesRemoved).
    pub(super) fn remove_interface(&mut self, interface: &str) {
        match interface {
            MODEM_IFACE => self.has_modem = false,
            MESSAGING_IFACE => self.has_messaging = false,
            _ => {}
        }
    }

    /// Applies changed Modem-interface properties; ignores the ones we do not use and values of
    /// an unexpected type.
    pub(super) fn update(&mut self, properties: &HashMap<&str, &Variant<'_>>) {
        if let Some(state) = properties
            .get("State")
            .and_then(|v| v.downcast_ref::<i32>().ok())
        {
            self.state = state;
        }
        if let Some(Variant::Array(numbers)) = properties.get("OwnNumbers").map(|v| unwrap(v)) {
            self.own_numbers = numbers
                .iter()
                .filter_map(|n| n.downcast_ref::<&str>().ok())
                .map(str::to_owned)
                .collect();
        }
        if let Some(id) = properties
            .get("EquipmentIdentifier")
            .and_then(|v| v.downcast_ref::<&str>().ok())
        {
            self.equipment_identifier = id.to_owned();
        }
    }

    /// Whether the adapter can use it at all.
    pub(super) fn usable(&self) -> bool {
        self.has_modem && self.has_messaging
    }

    /// Whether `wanted` (from `config.modem`) names this modem: its object path, its
    /// `EquipmentIdentifier`, or one of its `OwnNumbers` (ignoring spaces and punctuation).
    pub(super) fn matches(&self, path: &str, wanted: &str) -> bool {
        let wanted = wanted.trim();
        if wanted.is_empty() {
            return false;
        }
        if path == wanted || self.equipment_identifier == wanted {
            return true;
        }
        let wanted_number = dial_string(wanted);
        !wanted_number.is_empty()
            && self
                .own_numbers
                .iter()
                .any(|n| dial_string(n) == wanted_number)
    }
}

/// A value that may be wrapped in one more variant level.
fn unwrap<'a>(v: &'a Variant<'a>) -> &'a Variant<'a> {
    match v {
        Variant::Variant(inner) => inner,
        other => other,
    }
}

/// A phone number reduced to its digits and a leading `+`, for comparisons.
fn dial_string(number: &str) -> String {
    let number = number.trim();
    let plus = number.starts_with('+');
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty() {
        String::new()
    } else if plus {
        format!("+{digits}")
    } else {
        digits
    }
}

/// Picks the modem to use: the first usable one in path order (`/Modem/2` before `/Modem/10`),
/// or, when `wanted` is set, the first usable one it names.
pub(crate) fn choose(
    modems: &HashMap<OwnedObjectPath, ModemInfo>,
    wanted: Option<&str>,
) -> Option<OwnedObjectPath> {
    let mut usable: Vec<(&OwnedObjectPath, &ModemInfo)> =
        modems.iter().filter(|(_, info)| info.usable()).collect();
    usable.sort_by_key(|(path, _)| path_order(path.as_str()));
    usable
        .into_iter()
        .find(|(path, info)| wanted.is_none_or(|w| info.matches(path.as_str(), w)))
        .map(|(path, _)| path.clone())
}

/// Orders paths by their trailing number first, so `/Modem/2` comes before `/Modem/10`.
fn path_order(path: &str) -> (String, u64, String) {
    let (prefix, last) = path.rsplit_once('/').unwrap_or(("", path));
    match last.parse::<u64>() {
        Ok(n) => (prefix.to_owned(), n, String::new()),
        Err(_) => (prefix.to_owned(), u64::MAX, last.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_mapping() {
        let table = [
            (-1, ModemState::Failed),
            (0, ModemState::Disabled),
            (1, ModemState::Disabled),
            (2, ModemState::Locked),
            (3, ModemState::Disabled),
            (4, ModemState::Disabled),
            (5, ModemState::Disabled),
            (6, ModemState::Searching),
            (7, ModemState::Searching),
            (8, ModemState::Registered),
            (9, ModemState::Registered),
            (10, ModemState::Registered),
            (11, ModemState::Registered),
            (42, ModemState::Disabled),
        ];
        for (raw, expected) in table {
            assert_eq!(map_modem_state(raw), expected, "state {raw}");
        }
        assert!(!is_enabled(5));
        assert!(is_enabled(6));
        assert!(is_enabled(11));
        assert!(!is_enabled(-1));
    }

    #[test]
    fn own_number() {
        assert_eq!(first_number(&[]), None);
        assert_eq!(first_number(&["".into(), " ".into()]), None);
        assert_eq!(
            first_number(&["".into(), "+15550001111".into(), "+2".into()]),
            Some("+15550001111".into())
        );
    }

    fn modem(messaging: bool, imei: &str, numbers: &[&str]) -> ModemInfo {
        ModemInfo {
            has_modem: true,
            has_messaging: messaging,
            state: 8,
            own_numbers: numbers.iter().map(|n| n.to_string()).collect(),
            equipment_identifier: imei.into(),
        }
    }

    fn path(s: &str) -> OwnedObjectPath {
        OwnedObjectPath::try_from(s).unwrap()
    }

    #[test]
    fn matching() {
        let m = modem(true, "490154203237518", &["+1 555-000-1111", ""]);
        let p = "/org/freedesktop/ModemManager1/Modem/3";
        for (wanted, expected) in [
            (p, true),
            ("/org/freedesktop/ModemManager1/Modem/4", false),
            ("490154203237518", true),
            ("49015420323751", false),
            ("+15550001111", true),
            ("+1 (555) 000 1111", true),
            ("15550001111", false),
            ("", false),
            ("  ", false),
            ("+", false),
        ] {
            assert_eq!(m.matches(p, wanted), expected, "wanted {wanted:?}");
        }
    }

    #[test]
    fn choosing() {
        let mut modems = HashMap::new();
        modems.insert(path("/mm/Modem/10"), modem(true, "ten", &["+10"]));
        modems.insert(path("/mm/Modem/2"), modem(true, "two", &["+2"]));
        modems.insert(path("/mm/Modem/1"), modem(false, "one", &["+1"]));

        assert_eq!(choose(&modems, None), Some(path("/mm/Modem/2")));
        assert_eq!(choose(&modems, Some("ten")), Some(path("/mm/Modem/10")));
        assert_eq!(choose(&modems, Some("+10")), Some(path("/mm/Modem/10")));
        assert_eq!(
            choose(&modems, Some("/mm/Modem/10")),
            Some(path("/mm/Modem/10"))
        );
        // Named, but without Messaging.
        assert_eq!(choose(&modems, Some("one")), None);
        assert_eq!(choose(&modems, Some("nobody")), None);
        assert_eq!(choose(&HashMap::new(), None), None);
    }

    #[test]
    fn properties_update() {
        let state = Variant::from(8i32);
        let numbers = Variant::from(vec!["+15550001111".to_owned()]);
        let imei = Variant::from("12345");
        let wrong = Variant::from("not a state");
        let mut info = ModemInfo::default();
        info.add_interface(
            MODEM_IFACE,
            &HashMap::from([
                ("State", &state),
                ("OwnNumbers", &numbers),
                ("EquipmentIdentifier", &imei),
            ]),
        );
        info.add_interface(MESSAGING_IFACE, &HashMap::new());
        assert!(info.usable());
        assert_eq!(info.state, 8);
        assert_eq!(info.own_numbers, ["+15550001111"]);
        assert_eq!(info.equipment_identifier, "12345");

        info.update(&HashMap::from([("State", &wrong)]));
        assert_eq!(info.state, 8, "a value of the wrong type is ignored");

        info.remove_interface(MESSAGING_IFACE);
        assert!(!info.usable());
    }
}
