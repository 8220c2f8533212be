//! Presence across replicas: each replica announces the status of its own
//! connected users (on change, and as a heartbeat every 30 s); entries expire
//! after 90 s without a heartbeat, so a crashed replica's users go offline
//! instead of staying "online" forever. Pure: time is passed in.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

pub use crate::protocol::Status;
use crate::store::UserId;

/// How long an announcement stays valid without a heartbeat.
pub const TTL: Duration = Duration::from_secs(90);
/// How often replicas re-announce their users.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

/// Every replica's view of every user.
#[derive(Debug, Default)]
pub struct PresenceBook {
    entries: HashMap<UserId, HashMap<String, (Status, Instant)>>,
}

impl PresenceBook {
    /// The user's status across replicas.
    pub fn effective(&self, user: UserId) -> Status {
        self.entries
            .get(&user)
            .and_then(|by_origin| by_origin.values().map(|(s, _)| *s).max())
            .unwrap_or(Status::Offline)
    }

    /// Records what `origin` says about `user`. Returns the new effective
    /// status when it changed.
    pub fn apply(
        &mut self,
        user: UserId,
        origin: &str,
        status: Status,
        now: Instant,
    ) -> Option<Status> {
        let before = self.effective(user);
        let by_origin = self.entries.entry(user).or_default();
        if status == Status::Offline {
            by_origin.remove(origin);
        } else {
            by_origin.insert(origin.to_string(), (status, now + TTL));
        }
        if by_origin.is_empty() {
            self.entries.remove(&user);
        }
        let after = self.effective(user);
        (after != before).then_some(after)
    }

    /// Drops announcements not refreshed in time; returns users whose
    /// effective status changed.
    pub fn expire(&mut self, now: Instant) -> Vec<(UserId, Status)> {
        let mut changed = Vec::new();
        let users: Vec<UserId> = self.entries.keys().copied().collect();
        for user in users {
            let before = self.effective(user);
            if let Some(by_origin) = self.entries.get_mut(&user) {
                by_origin.retain(|_, (_, until)| *until > now);
                if by_origin.is_empty() {
                    self.entries.remove(&user);
                }
            }
            let after = self.effective(user);
            if after != before {
                changed.push((user, after));
            }
        }
        changed
    }

    /// Counts of online and away users among `users`.
    pub fn counts(&self, users: &[UserId]) -> (usize, usize) {
        users
            .iter()
            .fold((0, 0), |(on, away), u| match self.effective(*u) {
                Status::Online => (on + 1, away),
                Status::Away => (on, away + 1),
                Status::Offline => (on, away),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_present_replica_wins_and_offline_removes() {
        let mut b = PresenceBook::default();
        let t = Instant::now();
        assert_eq!(b.apply(1, "a", Status::Away, t), Some(Status::Away));
        assert_eq!(b.apply(1, "b", Status::Online, t), Some(Status::Online));
        assert_eq!(b.apply(1, "b", Status::Offline, t), Some(Status::Away));
        assert_eq!(
            b.apply(1, "a", Status::Away, t),
            None,
            "no change, no event"
        );
        assert_eq!(b.apply(1, "a", Status::Offline, t), Some(Status::Offline));
        assert_eq!(b.effective(1), Status::Offline);
    }

    #[test]
    fn a_silent_replica_expires() {
        let mut b = PresenceBook::default();
        let t = Instant::now();
        b.apply(1, "crashed", Status::Online, t);
        b.apply(2, "alive", Status::Online, t);
        assert!(b.expire(t + Duration::from_secs(10)).is_empty());
        b.apply(2, "alive", Status::Online, t + Duration::from_secs(60));
        let changed = b.expire(t + TTL + Duration::from_secs(1));
        assert_eq!(changed, vec![(1, Status::Offline)]);
        assert_eq!(b.effective(2), Status::Online);
        assert_eq!(b.counts(&[1, 2, 3]), (1, 0));
    }
}
