//! How domain values are written in SQL columns: the integer codes of the enums (the
//! same table as the comment in `data/migrations/0001_init.sql`) and the digests stored
//! for idempotency keys. Pure functions, no I/O, no SQL.

use crate::domain::{Channel, ChannelRequest, Status};

pub(super) const fn status_code(s: Status) -> i64 {
    match s {
        Status::Queued => 0,
        Status::Sending => 1,
        Status::Sent => 2,
        Status::Delivered => 3,
        Status::Failed => 4,
        Status::Received => 5,
    }
}

pub(super) const fn status_from_code(code: i64) -> Option<Status> {
    Some(match code {
        0 => Status::Queued,
        1 => Status::Sending,
        2 => Status::Sent,
        3 => Status::Delivered,
        4 => Status::Failed,
        5 => Status::Received,
        _ => return None,
    })
}

pub(super) const fn channel_code(c: Channel) -> i64 {
    match c {
        Channel::Sms => 0,
        Channel::Ip => 1,
    }
}

pub(super) const fn channel_from_code(code: i64) -> Option<Channel> {
    match code {
        0 => Some(Channel::Sms),
        1 => Some(Channel::Ip),
        _ => None,
    }
}

pub(super) const fn request_code(r: ChannelRequest) -> i64 {
    match r {
        ChannelRequest::Auto => 0,
        ChannelRequest::Sms => 1,
        ChannelRequest::Ip => 2,
    }
}

pub(super) const fn request_from_code(code: i64) -> Option<ChannelRequest> {
    match code {
        0 => Some(ChannelRequest::Auto),
        1 => Some(ChannelRequest::Sms),
        2 => Some(ChannelRequest::Ip),
        _ => None,
    }
}

/// 128-bit FNV-1a of an idempotency key (dedupe key or client token), stored instead of
/// the key itself: 16 bytes in the row and in the unique index instead of ~50 twice.
/// The algorithm is fixed forever (these digests are on disk); it is not meant to resist
/// crafted collisions, which would need to predict another sender's key exactly.
pub(super) fn key_digest(key: &str) -> [u8; 16] {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let mut h = OFFSET;
    for &b in key.as_bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(PRIME);
    }
    h.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for s in [
            Status::Queued,
            Status::Sending,
            Status::Sent,
            Status::Delivered,
            Status::Failed,
            Status::Received,
        ] {
            assert_eq!(status_from_code(status_code(s)), Some(s));
        }
        for c in [Channel::Sms, Channel::Ip] {
            assert_eq!(channel_from_code(channel_code(c)), Some(c));
        }
        for r in [
            ChannelRequest::Auto,
            ChannelRequest::Sms,
            ChannelRequest::Ip,
        ] {
            assert_eq!(request_from_code(request_code(r)), Some(r));
        }
        assert_eq!(status_from_code(6), None);
        assert_eq!(channel_from_code(-1), None);
        assert_eq!(request_from_code(3), None);
    }

    #[test]
    fn key_digest_is_the_published_fnv1a_128() {
        // Reference values of FNV-1a 128 (the empty string is the offset basis).
        assert_eq!(
            u128::from_be_bytes(key_digest("")),
            0x6c62_272e_07bb_0142_62b8_2175_6295_c58d
        );
        assert_eq!(
            u128::from_be_bytes(key_digest("a")),
            0xd228_cb69_6f1a_8caf_7891_2b70_4e4a_8964
        );
        assert_ne!(key_digest("sms:+1:1:a"), key_digest("sms:+1:1:b"));
    }
}
