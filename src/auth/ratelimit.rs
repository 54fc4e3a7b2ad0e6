//! Failed attempts per client, in fixed windows.
//!
//! - Sign-ins ([`SignInLimit`]) are counted on the store, so every instance on one Redis sees a
//!   client's failures: more instances behind a load balancer do not mean more password guesses.
//!   The limit is asked again when a check's turn comes (see [`SignInLimit::allowed`]).
//! - Invite codes ([`FailureLimiter`]) are counted in memory, per instance. A code is 256 random
//!   bits, so guessing one is hopeless however many tries there are; the limit only sheds
//!   clients that keep sending bad codes, and the accept path keeps its store round trips few.
//!
//! A client is its address, and an IPv6 client its /64 (one host usually has a whole /64 to
//! pick addresses from); an IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is that IPv4 client.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;

use crate::clock::Timestamp;
use crate::error::{Error, Result};
use crate::store::{Failures, Store};

/// The client an address belongs to: the IPv4 address, or the IPv6 /64.
pub fn client_block(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// At most `max` failed sign-ins per client in a window of `window` seconds, counted on the
/// store.
pub struct SignInLimit {
    pub max: u32,
    pub window: u64,
}

impl SignInLimit {
    /// Whether the client may have a password checked: 429 once it has used up its attempts.
    /// Asked when a sign-in arrives, and again when its check's turn comes, so that attempts
    /// sent together are not all checked: each waits for its turn behind the others, and by
    /// then their failures are counted.
    pub async fn allowed(&self, store: &dyn Store, client: IpAddr) -> Result<()> {
        let failures = store.sign_in_failures(&key(client), self.window).await?;
        match failures {
            Some(f) if f.count >= u64::from(self.max) => Err(Error::TooManyRequests {
                retry_after: f.ends_in,
            }),
            _ => Ok(()),
        }
    }

    pub async fn record_failure(&self, store: &dyn Store, client: IpAddr) -> Result<()> {
        store
            .add_sign_in_failure(&key(client), self.window)
            .await
            .map(|_| ())
    }
}

fn key(client: IpAddr) -> String {
    client_block(client).to_string()
}

/// Failed invite codes per client, in memory.
pub struct FailureLimiter {
    max: u32,
    window: u64,
    counts: Mutex<FixedWindows<IpAddr>>,
}

impl FailureLimiter {
    pub fn new(max: u32, window: u64) -> Self {
        FailureLimiter {
            max,
            window,
            counts: Mutex::new(FixedWindows::default()),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, FixedWindows<IpAddr>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Seconds the client must wait, if it has used up its attempts.
    pub fn blocked_for(&self, client: IpAddr, now: Timestamp) -> Option<u64> {
        self.counts()
            .get(&client_block(client), now)
            .filter(|f| f.count >= u64::from(self.max))
            .map(|f| f.ends_in)
    }

    pub fn record_failure(&self, client: IpAddr, now: Timestamp) {
        self.counts().add(client_block(client), now, self.window);
    }
}

/// Counters per key in fixed windows: a window opens with its key's first count and lasts its
/// `window` seconds; then the count starts again.
pub struct FixedWindows<K> {
    /// Key -> (when its window closes, its count).
    counts: HashMap<K, (Timestamp, u64)>,
    pruned_at: Timestamp,
}

impl<K> Default for FixedWindows<K> {
    fn default() -> Self {
        FixedWindows {
            counts: HashMap::new(),
            pruned_at: 0,
        }
    }
}

/// Keys kept before closed windows are dropped (at most once a second).
const PRUNE_ABOVE: usize = 100_000;

impl<K: Hash + Eq> FixedWindows<K> {
    /// Counts one for `key`; its window's count and time left.
    pub fn add(&mut self, key: K, now: Timestamp, window: u64) -> Failures {
        if self.counts.len() > PRUNE_ABOVE && now > self.pruned_at {
            self.pruned_at = now;
            self.counts.retain(|_, (ends, _)| now < *ends);
        }
        let entry = self.counts.entry(key).or_insert((now, 0));
        if now >= entry.0 {
            *entry = (now + window.max(1) as i64, 0);
        }
        entry.1 += 1;
        failures(*entry, now)
    }

    /// `key`'s open window, if it has one.
    pub fn get(&self, key: &K, now: Timestamp) -> Option<Failures> {
        self.counts
            .get(key)
            .filter(|(ends, _)| now < *ends)
            .map(|&entry| failures(entry, now))
    }
}

fn failures((ends, count): (Timestamp, u64), now: Timestamp) -> Failures {
    Failures {
        count,
        ends_in: (ends - now).max(1) as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_is_blocked_after_max_failures_until_the_window_ends() {
        let l = FailureLimiter::new(2, 60);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        l.record_failure(ip, 100);
        assert_eq!(l.blocked_for(ip, 100), None);
        l.record_failure(ip, 101);
        assert_eq!(l.blocked_for(ip, 101), Some(59));
        assert_eq!(l.blocked_for(ip, 160), None);
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(l.blocked_for(other, 101), None);
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_a_mapped_ipv4_address_is_that_address() {
        let l = FailureLimiter::new(2, 60);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        l.record_failure(a, 100);
        l.record_failure(b, 100);
        assert_eq!(l.blocked_for(a, 100), Some(60), "one /64, one client");
        assert_eq!(l.blocked_for(elsewhere, 100), None);
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        l.record_failure(v4, 100);
        l.record_failure(mapped, 100);
        assert_eq!(l.blocked_for(v4, 100), Some(60));
        assert_eq!(client_block(mapped), v4);
    }
}
