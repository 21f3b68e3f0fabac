//! Local wall-clock times for people: the C library's `localtime_r`, which follows `TZ`
//! and `/etc/localtime` like every other program on the phone. Formatting only; the
//! timestamps themselves stay UTC milliseconds everywhere else.

/// A broken-down local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LocalTime {
    pub year: i32,
    /// 1 to 12.
    pub month: u32,
    /// 1 to 31.
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl LocalTime {
    /// The local time of `ms` milliseconds since the Unix epoch, or `None` when the C
    /// library cannot represent it.
    pub(super) fn from_unix_ms(ms: i64) -> Option<LocalTime> {
        let secs = libc::time_t::try_from(ms.div_euclid(1000)).ok()?;
        // SAFETY: `tm` is plain old data for which all-zero bytes are a valid value, and
        // `localtime_r` only writes into the buffer we own and hand it (it is the
        // thread-safe variant; we never change the environment it reads TZ from).
        let tm = unsafe {
            let mut tm: libc::tm = std::mem::zeroed();
            if libc::localtime_r(&secs, &mut tm).is_null() {
                return None;
            }
            tm
        };
        Some(LocalTime {
            year: tm.tm_year.checked_add(1900)?,
            month: u32::try_from(tm.tm_mon + 1).ok()?,
            day: u32::try_from(tm.tm_mday).ok()?,
            hour: u32::try_from(tm.tm_hour).ok()?,
            minute: u32::try_from(tm.tm_min).ok()?,
            second: u32::try_from(tm.tm_sec).ok()?,
        })
    }

    /// `2024-05-01 14:03`.
    pub(super) fn date_minutes(&self) -> String {
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute
        )
    }

    /// `14:03:22`.
    pub(super) fn clock(&self) -> String {
        format!("{:02}:{:02}:{:02}", self.hour, self.minute, self.second)
    }
}

/// `2024-05-01 14:03` in local time, or the raw milliseconds if they cannot be converted.
pub(super) fn date_minutes(ms: i64) -> String {
    LocalTime::from_unix_ms(ms).map_or_else(|| format!("@{ms}"), |t| t.date_minutes())
}

/// `14:03:22` in local time, or the raw milliseconds if they cannot be converted.
pub(super) fn clock(ms: i64) -> String {
    LocalTime::from_unix_ms(ms).map_or_else(|| format!("@{ms}"), |t| t.clock())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let t = LocalTime {
            year: 2024,
            month: 5,
            day: 1,
            hour: 4,
            minute: 3,
            second: 9,
        };
        assert_eq!(t.date_minutes(), "2024-05-01 04:03");
        assert_eq!(t.clock(), "04:03:09");
    }

    #[test]
    fn converts_within_a_day_of_utc() {
        // Whatever the test machine's zone, local time is within 14 hours of UTC
        // (2024-05-01 12:00:00 UTC is 1714564800 s).
        let t = LocalTime::from_unix_ms(1_714_564_800_000).expect("representable");
        assert!(
            [(4, 30), (5, 1), (5, 2)].contains(&(t.month, t.day)) && t.year == 2024,
            "{t:?}"
        );
        assert_eq!(t.second, 0);
        let s = date_minutes(1_714_564_800_000);
        assert_eq!(s.len(), "2024-05-01 12:00".len(), "{s}");
    }
}
