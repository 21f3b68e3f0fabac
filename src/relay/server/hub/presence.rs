//! hub::presence: subscriptions (`subscribe` and its snapshot), presence pushed to the
//! subscribers of a number that logs in or out, and typing with its deadline.

use std::collections::HashSet;

use super::core::{ConnId, Core, Link, Res, err, not_e164};
use crate::relay::protocol::{ErrorCode, PresenceEntry, PresenceState, ServerFrame, is_e164};
use crate::relay::server::storage::Storage;

impl<S: Storage, L: Link> Core<S, L> {
    /// `number`'s state as `viewer` sees it.
    fn presence_of(&self, number: &str, viewer: Option<&str>) -> PresenceState {
        let Some(conn) = self.online.get(number).and_then(|id| self.conns.get(id)) else {
            return PresenceState::Offline;
        };
        match (&conn.typing, viewer) {
            (Some((to, _)), Some(viewer)) if to == viewer => PresenceState::Typing,
            _ => PresenceState::Online,
        }
    }

    /// Pushes `number`'s state to every connection subscribed to it.
    pub(super) fn broadcast(&mut self, number: &str) {
        let Some(watchers) = self.watchers.get(number) else {
            return;
        };
        let watchers: Vec<ConnId> = watchers.iter().copied().collect();
        for watcher in watchers {
            self.push_presence(watcher, number);
        }
    }

    /// Pushes `number`'s state to `viewer`'s connection if it follows `number`.
    pub(super) fn push_to_number(&mut self, viewer: &str, number: &str) {
        if let Some(&conn) = self.online.get(viewer)
            && self
                .watchers
                .get(number)
                .is_some_and(|set| set.contains(&conn))
        {
            self.push_presence(conn, number);
        }
    }

    fn push_presence(&mut self, watcher: ConnId, number: &str) {
        let viewer = self.number_of(watcher);
        let state = self.presence_of(number, viewer.as_deref());
        let frame = ServerFrame::Presence(PresenceEntry {
            number: number.to_owned(),
            // Only logged-in numbers change state, and only registered ones log in.
            registered: true,
            state,
        });
        self.send(watcher, frame);
    }

    /// `conn` no longer follows `number`.
    pub(super) fn unwatch(&mut self, number: &str, conn: ConnId) {
        if let Some(set) = self.watchers.get_mut(number) {
            set.remove(&conn);
            if set.is_empty() {
                self.watchers.remove(number);
            }
        }
    }

    /// Ends `conn`'s typing state (if any) and tells its target.
    pub(super) fn stop_typing(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some((to, deadline)) = c.typing.take() else {
            return;
        };
        let me = c.number.clone().unwrap_or_default();
        self.typing.remove(&(deadline, conn));
        self.push_to_number(&to, &me);
    }

    /// Ends the typing states whose deadline has passed.
    pub(super) fn end_typing(&mut self) {
        let now = self.now.at;
        while let Some(&(deadline, conn)) = self.typing.first() {
            if deadline > now {
                break;
            }
            self.typing.pop_first();
            if let Some(c) = self.conns.get(&conn)
                && c.typing.as_ref().is_some_and(|(_, d)| *d == deadline)
            {
                self.stop_typing(conn);
            }
        }
    }

    pub(super) fn subscribe(&mut self, conn: ConnId, numbers: Vec<String>) -> Res {
        let max = self.config.max_subscriptions;
        if numbers.len() > max {
            let message = format!("{} numbers, more than this relay's {max}", numbers.len());
            let error = err(ErrorCode::TooManySubscriptions, message, "subscribe");
            self.fail(conn, error);
            return Ok(());
        }
        if let Some(bad) = numbers.iter().find(|n| !is_e164(n)) {
            let message = not_e164(bad);
            self.fail(conn, err(ErrorCode::InvalidNumber, message, "subscribe"));
            return Ok(());
        }
        let mut seen = HashSet::with_capacity(numbers.len());
        let numbers: Vec<String> = numbers
            .into_iter()
            .filter(|n| seen.insert(n.clone()))
            .collect();
        let me = self.number_of(conn);
        let mut entries = Vec::with_capacity(numbers.len());
        for number in &numbers {
            let registered =
                self.online.contains_key(number) || self.store.is_registered(number)?;
            entries.push(PresenceEntry {
                number: number.clone(),
                registered,
                state: self.presence_of(number, me.as_deref()),
            });
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let old = std::mem::replace(&mut c.subs, numbers);
        for number in &old {
            self.unwatch(number, conn);
        }
        if let Some(c) = self.conns.get(&conn) {
            for number in &c.subs {
                self.watchers
                    .entry(number.clone())
                    .or_default()
                    .insert(conn);
            }
        }
        self.send(conn, ServerFrame::Snapshot { entries });
        Ok(())
    }

    pub(super) fn typing(&mut self, conn: ConnId, to: String, active: bool) -> Res {
        if !is_e164(&to) {
            let message = not_e164(&to);
            self.fail(conn, err(ErrorCode::InvalidNumber, message, "typing"));
            return Ok(());
        }
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let current = c.typing.as_ref().map(|(target, _)| target.clone());
        if !active {
            if current.as_deref() == Some(to.as_str()) {
                self.stop_typing(conn);
            }
            return Ok(());
        }
        if current.is_some() && current.as_deref() != Some(to.as_str()) {
            self.stop_typing(conn);
        }
        let deadline = self.now.at + self.config.typing_ttl;
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let started = c.typing.is_none();
        if let Some((_, old)) = c.typing.replace((to.clone(), deadline)) {
            self.typing.remove(&(old, conn));
        }
        self.typing.insert((deadline, conn));
        if started {
            let me = self.number_of(conn).unwrap_or_default();
            self.push_to_number(&to, &me);
        }
        Ok(())
    }
}
