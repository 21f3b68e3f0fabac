//! The router: the founding method's channel rule and the outbox policy, as pure logic.
//!
//! Everything here is a function from plain data to a decision: no I/O, no async, no
//! locks, no errors. The engine gathers the facts (relay and modem state, the peer's
//! presence, the text's SMS length), asks the router, and carries the decision out.
//! Architecture invariant: nothing in this module may fail or touch the outside world.

use std::time::Duration;

use crate::domain::{ChannelRequest, ModemState, Presence, RelayState};

/// The facts the channel rule looks at for one outgoing message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Facts {
    /// The channel the sender asked for.
    pub requested: ChannelRequest,
    /// Our own connection to the relay.
    pub relay: RelayState,
    /// The recipient's presence as cached (offline when unknown or unregistered).
    pub presence: Presence,
    /// Whether the relay knows the recipient (`None`: not known yet).
    pub peer_registered: Option<bool>,
    /// Whether the modem can send SMS now.
    pub modem: ModemState,
    /// How many SMS parts the text needs.
    pub sms_parts: u32,
    /// The configured limit of SMS parts (`sms.max_parts`).
    pub max_parts: u32,
}

/// Why a message stays in the outbox for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waiting {
    /// For the modem to be registered on a network.
    Modem,
    /// For our relay connection to come (back) online.
    Relay,
}

/// What to do with one outgoing message now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// Hand it to the SMS channel.
    Sms,
    /// Hand it to the relay (which stores and forwards if the recipient is offline).
    Ip,
    /// Keep it queued until the situation changes.
    Wait(Waiting),
    /// It cannot be delivered: fail it with this reason.
    Fail(String),
}

/// The channel rule (ARCHITECTURE.md, "Bird's eye view"): over IP when we and the recipient are both
/// online on the relay, else as SMS; a forced channel waits for that channel; a text too
/// long for SMS never gets cut, it goes over IP or fails saying why.
pub(crate) fn route(f: &Facts) -> Route {
    let ip_open = f.relay == RelayState::Online;
    let peer_online = matches!(f.presence, Presence::Online | Presence::Typing);
    let too_long = f.sms_parts > f.max_parts;
    match f.requested {
        ChannelRequest::Ip => match f.relay {
            RelayState::Online => Route::Ip,
            RelayState::Disabled => {
                Route::Fail("the IP channel is disabled (no relay configured)".into())
            }
            RelayState::Offline | RelayState::Connecting => Route::Wait(Waiting::Relay),
        },
        ChannelRequest::Sms if too_long => Route::Fail(too_long_reason(f)),
        ChannelRequest::Sms => sms_or_wait(f.modem),
        ChannelRequest::Auto if ip_open && peer_online => Route::Ip,
        ChannelRequest::Auto if too_long => {
            if ip_open && f.peer_registered != Some(false) {
                // The relay keeps it until the recipient logs in.
                Route::Ip
            } else if f.relay == RelayState::Disabled || f.peer_registered == Some(false) {
                Route::Fail(format!(
                    "{} and the recipient cannot be reached over IP",
                    too_long_reason(f)
                ))
            } else {
                Route::Wait(Waiting::Relay)
            }
        }
        ChannelRequest::Auto => sms_or_wait(f.modem),
    }
}

fn sms_or_wait(modem: ModemState) -> Route {
    if modem == ModemState::Registered {
        Route::Sms
    } else {
        Route::Wait(Waiting::Modem)
    }
}

fn too_long_reason(f: &Facts) -> String {
    format!(
        "the text needs {} SMS parts, more than the limit of {} (sms.max_parts)",
        f.sms_parts, f.max_parts
    )
}

/// Whether `SendMessage` must refuse a message outright, before storing it: the checks
/// that cannot change while it waits in the outbox. Returns the reason.
pub(crate) fn refuse_at_once(f: &Facts) -> Option<Refusal> {
    if f.requested == ChannelRequest::Ip && f.relay == RelayState::Disabled {
        return Some(Refusal::Unavailable(
            "the IP channel is disabled: no relay is configured".into(),
        ));
    }
    match route(f) {
        Route::Fail(reason)
            if f.relay == RelayState::Disabled || f.requested == ChannelRequest::Sms =>
        {
            Some(Refusal::InvalidArgument(reason))
        }
        _ => None,
    }
}

/// Why `SendMessage` refuses a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The asked-for channel does not exist here.
    Unavailable(String),
    /// The message itself can never be sent as asked.
    InvalidArgument(String),
}

/// How a failed send attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Try again after this long.
    After(Duration),
    /// Stop: the message fails.
    GiveUp,
}

/// First retry delay; doubles with each attempt.
pub(crate) const RETRY_BASE: Duration = Duration::from_secs(5);
/// No retry waits longer than this.
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(300);

/// The outbox's retry policy after attempt number `attempts` (1 = the first try) failed:
/// a temporary failure is retried with exponential backoff until `max_attempts`; a final
/// one is not retried.
pub(crate) fn retry(attempts: u32, max_attempts: u32, temporary: bool) -> Retry {
    if !temporary || attempts >= max_attempts {
        return Retry::GiveUp;
    }
    let factor = 1u32 << attempts.saturating_sub(1).min(16);
    Retry::After(RETRY_BASE.saturating_mul(factor).min(RETRY_MAX))
}

/// A status report's `MMSmsDeliveryState` (3GPP TS 23.040 TP-Status) as an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    Delivered,
    /// The SMS centre is still trying: no change yet.
    Pending,
    Failed,
}

/// Classifies a status report's delivery state.
pub(crate) fn delivery(state: u32) -> Delivery {
    match state {
        0x00..=0x1f => Delivery::Delivered,
        // Still trying; and 0x100, ModemManager's "unknown", tells nothing either.
        0x20..=0x3f | 0x100 => Delivery::Pending,
        // 0x40.. permanent errors, 0x60.. temporary errors the SMSC gave up on,
        // 0x101.. CDMA network errors: not delivered.
        _ => Delivery::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ChannelRequest as Req;
    use ModemState as M;
    use Presence as P;
    use RelayState as R;

    fn facts(requested: Req, relay: R, presence: P, modem: M, sms_parts: u32) -> Facts {
        Facts {
            requested,
            relay,
            presence,
            peer_registered: None,
            modem,
            sms_parts,
            max_parts: 10,
        }
    }

    fn check(f: Facts, expected: &str) {
        let got = match route(&f) {
            Route::Sms => "sms".to_string(),
            Route::Ip => "ip".to_string(),
            Route::Wait(Waiting::Modem) => "wait-modem".to_string(),
            Route::Wait(Waiting::Relay) => "wait-relay".to_string(),
            Route::Fail(reason) => format!("fail: {reason}"),
        };
        assert!(
            got.starts_with(expected),
            "{f:?}: expected {expected}, got {got}"
        );
    }

    #[test]
    fn channel_rule() {
        let rows = [
            // auto: both online → IP, else SMS
            (
                facts(Req::Auto, R::Online, P::Online, M::Registered, 1),
                "ip",
            ),
            (
                facts(Req::Auto, R::Online, P::Typing, M::Registered, 1),
                "ip",
            ),
            (facts(Req::Auto, R::Online, P::Online, M::Absent, 1), "ip"),
            (
                facts(Req::Auto, R::Online, P::Offline, M::Registered, 1),
                "sms",
            ),
            (
                facts(Req::Auto, R::Connecting, P::Online, M::Registered, 1),
                "sms",
            ),
            (
                facts(Req::Auto, R::Offline, P::Online, M::Registered, 1),
                "sms",
            ),
            (
                facts(Req::Auto, R::Disabled, P::Offline, M::Registered, 1),
                "sms",
            ),
            // auto, SMS needed but no network: wait for the modem
            (
                facts(Req::Auto, R::Disabled, P::Offline, M::Absent, 1),
                "wait-modem",
            ),
            (
                facts(Req::Auto, R::Disabled, P::Offline, M::Locked, 1),
                "wait-modem",
            ),
            (
                facts(Req::Auto, R::Online, P::Offline, M::Searching, 1),
                "wait-modem",
            ),
            // forced SMS ignores presence
            (
                facts(Req::Sms, R::Online, P::Online, M::Registered, 1),
                "sms",
            ),
            (
                facts(Req::Sms, R::Online, P::Online, M::Disabled, 1),
                "wait-modem",
            ),
            // forced IP waits for the relay, fails without one
            (
                facts(Req::Ip, R::Online, P::Offline, M::Registered, 1),
                "ip",
            ),
            (
                facts(Req::Ip, R::Offline, P::Online, M::Registered, 1),
                "wait-relay",
            ),
            (
                facts(Req::Ip, R::Connecting, P::Online, M::Registered, 1),
                "wait-relay",
            ),
            (
                facts(Req::Ip, R::Disabled, P::Offline, M::Registered, 1),
                "fail: the IP channel is disabled",
            ),
            // too long for SMS: never cut
            (
                facts(Req::Auto, R::Online, P::Online, M::Registered, 11),
                "ip",
            ),
            (
                facts(Req::Auto, R::Online, P::Offline, M::Registered, 11),
                "ip",
            ),
            (
                facts(Req::Auto, R::Offline, P::Offline, M::Registered, 11),
                "wait-relay",
            ),
            (
                facts(Req::Auto, R::Disabled, P::Offline, M::Registered, 11),
                "fail: the text needs 11 SMS parts",
            ),
            (
                facts(Req::Sms, R::Online, P::Online, M::Registered, 11),
                "fail: the text needs 11 SMS parts",
            ),
            // exactly at the limit is fine
            (
                facts(Req::Auto, R::Disabled, P::Offline, M::Registered, 10),
                "sms",
            ),
        ];
        for (f, expected) in rows {
            check(f, expected);
        }
    }

    #[test]
    fn too_long_for_an_unregistered_peer_fails_even_with_the_relay_up() {
        let mut f = facts(Req::Auto, R::Online, P::Offline, M::Registered, 12);
        f.peer_registered = Some(false);
        check(f, "fail: the text needs 12 SMS parts");
        f.peer_registered = Some(true);
        check(f, "ip");
    }

    #[test]
    fn refusals_at_send_time() {
        let ip_without_relay = facts(Req::Ip, R::Disabled, P::Offline, M::Registered, 1);
        assert!(matches!(
            refuse_at_once(&ip_without_relay),
            Some(Refusal::Unavailable(_))
        ));
        let too_long_no_relay = facts(Req::Auto, R::Disabled, P::Offline, M::Registered, 11);
        assert!(matches!(
            refuse_at_once(&too_long_no_relay),
            Some(Refusal::InvalidArgument(_))
        ));
        let too_long_forced_sms = facts(Req::Sms, R::Online, P::Online, M::Registered, 11);
        assert!(matches!(
            refuse_at_once(&too_long_forced_sms),
            Some(Refusal::InvalidArgument(_))
        ));
        // Waiting is no refusal: the modem or relay may come.
        let no_modem = facts(Req::Auto, R::Disabled, P::Offline, M::Absent, 1);
        assert_eq!(refuse_at_once(&no_modem), None);
        let relay_down_ip = facts(Req::Ip, R::Offline, P::Offline, M::Absent, 1);
        assert_eq!(refuse_at_once(&relay_down_ip), None);
    }

    #[test]
    fn retry_backs_off_and_gives_up() {
        let rows = [
            (1, 5, true, Retry::After(Duration::from_secs(5))),
            (2, 5, true, Retry::After(Duration::from_secs(10))),
            (3, 5, true, Retry::After(Duration::from_secs(20))),
            (4, 5, true, Retry::After(Duration::from_secs(40))),
            (5, 5, true, Retry::GiveUp),
            (1, 5, false, Retry::GiveUp),
            (9, 50, true, Retry::After(RETRY_MAX)),
            (40, 50, true, Retry::After(RETRY_MAX)),
        ];
        for (attempts, max, temporary, expected) in rows {
            assert_eq!(
                retry(attempts, max, temporary),
                expected,
                "attempt {attempts}"
            );
        }
    }

    #[test]
    fn delivery_states() {
        let rows = [
            (0x00, Delivery::Delivered),
            (0x02, Delivery::Delivered),
            (0x20, Delivery::Pending),
            (0x3f, Delivery::Pending),
            (0x40, Delivery::Failed),
            (0x65, Delivery::Failed),
            (0x100, Delivery::Pending),
            (0x101, Delivery::Failed),
        ];
        for (state, expected) in rows {
            assert_eq!(delivery(state), expected, "state {state:#x}");
        }
    }
}
