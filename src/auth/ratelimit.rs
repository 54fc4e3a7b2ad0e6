//! Failed attempts per client, in fixed windows.
//!
//! - Sign-ins ([`SignInLimit`]) are counted on the store, so every instance on one Redis sees a
//!   client's failures: more instances behind a load balancer do not mean more password guesses.
//! - Invite codes ([`FailureLimiter`]) are counted in memory, per instance. A code is 256 random
//!   bits, so guessing one is hopeless however many tries there are; the limit only sheds
//!   clients that keep sending bad codes, and the accept path keeps its store round trips few.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::clock::Timestamp;
use crate::error::Result;
use crate::store::Store;

/// At most `max` failed sign-ins per client address in a window of `window` seconds, counted on
/// the store.
pub struct SignInLimit {
    pub max: u32,
    pub window: u64,
}

impl SignInLimit {
    /// Seconds the client must wait before it may try again, if it has used up its attempts.
    pub async fn blocked_for(&self, store: &dyn Store, client: IpAddr) -> Result<Option<u64>> {
        let failures = store.sign_in_failures(&client.to_string()).await?;
        Ok(failures
            .filter(|f| f.count >= u64::from(self.max))
            .map(|f| f.ends_in))
    }

    pub async fn record_failure(&self, store: &dyn Store, client: IpAddr) -> Result<()> {
        store
            .add_sign_in_failure(&client.to_string(), self.window)
            .await
            .map(|_| ())
    }
}

/// Failed invite codes per client address, in memory.
pub struct FailureLimiter {
    max: u32,
    window: u64,
    counts: Mutex<HashMap<IpAddr, (Timestamp, u32)>>,
}

impl FailureLimiter {
    pub fn new(max: u32, window: u64) -> Self {
        FailureLimiter {
            max,
            window,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds the client must wait, if it has used up its attempts.
    pub fn blocked_for(&self, client: IpAddr, now: Timestamp) -> Option<u64> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (start, n) = counts.get(&client)?;
        let ends = start + self.window as i64;
        (*n >= self.max && now < ends).then(|| (ends - now) as u64)
    }

    pub fn record_failure(&self, client: IpAddr, now: Timestamp) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.len() > 100_000 {
            let window = self.window as i64;
            counts.retain(|_, (start, _)| now < *start + window);
        }
        let entry = counts.entry(client).or_insert((now, 0));
        if now >= entry.0 + self.window as i64 {
            *entry = (now, 0);
        }
        entry.1 += 1;
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
}
