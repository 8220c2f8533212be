//! Limits on sign-up and login (docs/runtime.md, "Sign-up and login
//! limits"): a token bucket per client address and one per username
//! (GCRA, [`governor`]), checked before any password hashing, and a lockout
//! of a username after consecutive failed logins that doubles with each
//! further failure. Kept per replica, like the send limits.
//!
//! Why before hashing: argon2id runs at most two at a time per replica
//! (`store::accounts`), so an unthrottled flood of logins would queue real
//! users behind it and let passwords be guessed without bound.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    num::NonZeroU32,
    sync::Mutex,
    time::{Duration, Instant},
};

use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    state::keyed::HashMapStateStore,
};

use crate::config::AuthLimits;

type Keyed<K> = RateLimiter<K, HashMapStateStore<K>, DefaultClock>;

/// A failure streak is forgotten after this long without a failure.
pub const FORGET_FAILURES_AFTER: Duration = Duration::from_secs(3600);
/// Usernames whose failures are remembered at once, per replica.
const MAX_TRACKED: usize = 100_000;

/// Why an attempt was refused, and when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many attempts from this client address.
    Address(Duration),
    /// Too many attempts naming this username.
    Username(Duration),
    /// The username is locked out after failed logins.
    LockedOut(Duration),
}

impl Refusal {
    /// When the next attempt may succeed.
    pub fn retry_after(&self) -> Duration {
        match self {
            Refusal::Address(d) | Refusal::Username(d) | Refusal::LockedOut(d) => *d,
        }
    }

    /// The message for the client.
    pub fn message(&self) -> String {
        let ms = self.retry_after().as_millis();
        match self {
            Refusal::Address(_) => {
                format!("too many sign-ups and logins from your address; retry in {ms} ms")
            }
            Refusal::Username(_) => {
                format!("too many attempts for this username; retry in {ms} ms")
            }
            Refusal::LockedOut(_) => {
                format!("this username is locked after repeated failed logins; retry in {ms} ms")
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Streak {
    failures: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// The limits of one replica.
pub struct AuthLimiter {
    limits: AuthLimits,
    by_ip: Keyed<IpAddr>,
    by_username: Keyed<String>,
    streaks: Mutex<HashMap<String, Streak>>,
    clock: DefaultClock,
}

fn quota(burst: u32, per_minute: u32) -> Quota {
    let one = NonZeroU32::MIN;
    Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(one))
        .allow_burst(NonZeroU32::new(burst).unwrap_or(one))
}

impl AuthLimiter {
    /// Limiter with these limits.
    pub fn new(limits: &AuthLimits) -> Self {
        Self {
            by_ip: RateLimiter::hashmap(quota(limits.ip_burst, limits.ip_per_minute)),
            by_username: RateLimiter::hashmap(quota(
                limits.username_burst,
                limits.username_per_minute,
            )),
            limits: limits.clone(),
            streaks: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
        }
    }

    fn take(&self, ip: Option<IpAddr>, username: &str) -> Result<(), Refusal> {
        // Without a peer address (only in tests) every caller shares one bucket.
        let ip = ip.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        self.by_ip
            .check_key(&ip)
            .map_err(|n| Refusal::Address(n.wait_time_from(self.clock.now())))?;
        self.by_username
            .check_key(&username.to_string())
            .map_err(|n| Refusal::Username(n.wait_time_from(self.clock.now())))?;
        Ok(())
    }

    /// Admits a sign-up from `ip` for `username`.
    pub fn admit_signup(&self, ip: Option<IpAddr>, username: &str) -> Result<(), Refusal> {
        self.take(ip, username)
    }

    /// Admits a login from `ip` for `username`: the buckets, then the
    /// username's lockout (a locked username spends no hashing).
    pub fn admit_login(
        &self,
        ip: Option<IpAddr>,
        username: &str,
        now: Instant,
    ) -> Result<(), Refusal> {
        if let Some(left) = self.locked_for(username, now) {
            return Err(Refusal::LockedOut(left));
        }
        self.take(ip, username)
    }

    /// How long `username` stays locked, if it is.
    pub fn locked_for(&self, username: &str, now: Instant) -> Option<Duration> {
        let streaks = self.streaks.lock().unwrap_or_else(|p| p.into_inner());
        streaks
            .get(username)
            .and_then(|s| s.locked_until)
            .map(|until| until.saturating_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    /// The lockout after `failures` consecutive failures: none below the
    /// threshold, then the first lockout doubled per failure past it, up to
    /// the longest.
    pub fn lockout_after(&self, failures: u32) -> Option<Duration> {
        let l = &self.limits;
        if l.lockout_after == 0 || failures < l.lockout_after {
            return None;
        }
        let doublings = (failures - l.lockout_after).min(20);
        Some(
            l.lockout
                .saturating_mul(1u32 << doublings)
                .min(l.lockout_max),
        )
    }

    /// Records a failed login of `username`; returns the lockout it starts.
    pub fn failed(&self, username: &str, now: Instant) -> Option<Duration> {
        let mut streaks = self.streaks.lock().unwrap_or_else(|p| p.into_inner());
        if streaks.len() >= MAX_TRACKED && !streaks.contains_key(username) {
            prune_streaks(&mut streaks, now);
            if streaks.len() >= MAX_TRACKED {
                // Under a spray of usernames keep the locked ones only.
                streaks.retain(|_, s| s.locked_until.is_some_and(|u| u > now));
            }
        }
        let streak = streaks.entry(username.to_string()).or_insert(Streak {
            failures: 0,
            last: now,
            locked_until: None,
        });
        if now.saturating_duration_since(streak.last) > FORGET_FAILURES_AFTER {
            streak.failures = 0;
        }
        streak.failures = streak.failures.saturating_add(1);
        streak.last = now;
        let lock = self.lockout_after(streak.failures);
        if let Some(d) = lock {
            streak.locked_until = Some(now + d);
        }
        lock
    }

    /// A successful login ends the username's failure streak.
    pub fn succeeded(&self, username: &str) {
        let mut streaks = self.streaks.lock().unwrap_or_else(|p| p.into_inner());
        streaks.remove(username);
    }

    /// Forgets what no longer limits anyone (run every minute).
    pub fn prune(&self, now: Instant) {
        self.by_ip.retain_recent();
        self.by_username.retain_recent();
        let mut streaks = self.streaks.lock().unwrap_or_else(|p| p.into_inner());
        prune_streaks(&mut streaks, now);
    }
}

fn prune_streaks(streaks: &mut HashMap<String, Streak>, now: Instant) {
    streaks.retain(|_, s| {
        s.locked_until.is_some_and(|u| u > now)
            || now.saturating_duration_since(s.last) <= FORGET_FAILURES_AFTER
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AuthLimits {
        AuthLimits {
            ip_burst: 3,
            ip_per_minute: 1,
            username_burst: 2,
            username_per_minute: 1,
            lockout_after: 3,
            lockout: Duration::from_secs(10),
            lockout_max: Duration::from_secs(60),
        }
    }

    #[test]
    fn the_lockout_starts_at_the_threshold_and_doubles_up_to_the_cap() {
        let l = AuthLimiter::new(&limits());
        let secs = |n| l.lockout_after(n).map(|d| d.as_secs());
        assert_eq!(
            [
                secs(1),
                secs(2),
                secs(3),
                secs(4),
                secs(5),
                secs(6),
                secs(99)
            ],
            [None, None, Some(10), Some(20), Some(40), Some(60), Some(60)]
        );
        let never = AuthLimiter::new(&AuthLimits {
            lockout_after: 0,
            ..limits()
        });
        assert_eq!(never.lockout_after(1000), None);
    }

    #[test]
    fn failures_lock_a_username_and_success_or_quiet_unlocks_it() {
        let l = AuthLimiter::new(&limits());
        let t0 = Instant::now();
        assert_eq!(l.failed("alice", t0), None);
        assert_eq!(l.failed("alice", t0), None);
        assert_eq!(l.failed("alice", t0), Some(Duration::from_secs(10)));
        assert_eq!(
            l.admit_login(None, "alice", t0 + Duration::from_secs(4)),
            Err(Refusal::LockedOut(Duration::from_secs(6)))
        );
        assert_eq!(l.locked_for("bob", t0), None, "per username");
        assert_eq!(l.locked_for("alice", t0 + Duration::from_secs(10)), None);
        // The next failure doubles the lockout.
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(l.failed("alice", t1), Some(Duration::from_secs(20)));
        l.succeeded("alice");
        assert_eq!(l.locked_for("alice", t1), None);
        assert_eq!(l.failed("alice", t1), None, "the streak starts over");
        // A streak is forgotten after an hour without failures.
        let l = AuthLimiter::new(&limits());
        l.failed("carol", t0);
        l.failed("carol", t0);
        let later = t0 + FORGET_FAILURES_AFTER + Duration::from_secs(1);
        assert_eq!(l.failed("carol", later), None);
        l.prune(later + FORGET_FAILURES_AFTER + Duration::from_secs(1));
        assert!(l.streaks.lock().unwrap().is_empty());
    }

    #[test]
    fn buckets_refuse_with_a_retry_time_per_address_and_per_username() {
        let l = AuthLimiter::new(&limits());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(l.admit_signup(Some(a), "u1").is_ok());
        assert!(l.admit_signup(Some(a), "u2").is_ok());
        assert!(l.admit_signup(Some(a), "u3").is_ok());
        let e = l.admit_signup(Some(a), "u4").unwrap_err();
        assert!(matches!(e, Refusal::Address(_)), "{e:?}");
        // One token comes back per minute.
        assert!(
            e.retry_after() > Duration::from_secs(50) && e.retry_after() <= Duration::from_secs(60)
        );
        assert!(e.message().contains("retry in"), "{}", e.message());
        // Another address is not limited by the first; a username is
        // limited across addresses.
        let now = Instant::now();
        assert!(l.admit_login(Some(b), "dave", now).is_ok());
        assert!(l.admit_login(Some(b), "dave", now).is_ok());
        assert!(matches!(
            l.admit_login(Some(b), "dave", now),
            Err(Refusal::Username(_))
        ));
    }
}
