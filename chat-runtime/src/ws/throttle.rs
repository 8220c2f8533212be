//! Per-socket throttling of ephemeral frames: each `typing` a client sends
//! costs a broadcast to every replica, so a socket forwards at most one per
//! room every [`TYPING_EVERY`]; the rest are dropped silently (typing is a
//! hint that lasts seconds anyway). Pure: time is passed in.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::store::RoomId;

/// Least time between two forwarded `typing` frames of a socket, per room.
pub const TYPING_EVERY: Duration = Duration::from_secs(2);

/// Rooms remembered before stale entries are pruned (a socket types only in
/// rooms it is subscribed to, at most 500).
const PRUNE_AT: usize = 64;

/// One socket's throttle state.
#[derive(Debug, Default)]
pub struct Throttle {
    typing: HashMap<RoomId, Instant>,
}

impl Throttle {
    /// Whether a `typing` frame for `room` at `now` is forwarded (and, if
    /// so, records it).
    pub fn typing(&mut self, room: RoomId, now: Instant) -> bool {
        if self
            .typing
            .get(&room)
            .is_some_and(|last| now.saturating_duration_since(*last) < TYPING_EVERY)
        {
            return false;
        }
        if self.typing.len() >= PRUNE_AT {
            self.typing
                .retain(|_, last| now.saturating_duration_since(*last) < TYPING_EVERY);
        }
        self.typing.insert(room, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_is_forwarded_at_most_every_two_seconds_per_room() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        assert!(t.typing(1, t0));
        assert!(!t.typing(1, t0 + Duration::from_millis(500)));
        assert!(t.typing(2, t0 + Duration::from_millis(500)), "per room");
        assert!(!t.typing(1, t0 + Duration::from_millis(1999)));
        assert!(t.typing(1, t0 + TYPING_EVERY));
        for room in 10..200 {
            t.typing(room, t0 + Duration::from_secs(10));
        }
        t.typing(1, t0 + Duration::from_secs(20));
        assert_eq!(t.typing.len(), 1, "stale rooms are pruned");
    }
}
