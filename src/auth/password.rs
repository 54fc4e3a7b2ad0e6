//! Local passwords, hashed with argon2id.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use tokio::sync::Semaphore;

/// Hashes a password into a PHC string (argon2id, random salt).
pub fn hash(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

pub fn is_valid_hash(phc: &str) -> bool {
    phc.starts_with("$argon2") && argon2::password_hash::phc::PasswordHash::new(phc).is_ok()
}

/// Verifies a password; CPU-heavy, so call it from a blocking task.
pub fn verify(password: &str, phc: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), phc)
        .is_ok()
}

/// The password checks of sign-ins, a few at a time. Each argon2id check takes about 19 MiB and
/// a core for some 20 ms; unbounded, a burst of sign-in posts (before any of them has failed and
/// the per-client limit counts it) would start one blocking thread and 19 MiB for each, and take
/// every core from the proxied traffic. Here at most one check per core runs at once, the others
/// wait for their turn, and one that waited too long is answered "busy" instead. One client
/// address has at most a few checks in that queue (its others wait behind them), so that it
/// cannot fill the queue and keep everybody else's sign-ins waiting.
pub struct Checks {
    turns: Arc<Semaphore>,
    wait: Duration,
    /// Per client address: its own turns, and how many of its checks hold or wait for one.
    per_client: PerClient,
}

/// Checks of one client address in the queue at most.
const PER_CLIENT: usize = 4;

impl Checks {
    /// At most `at_once` checks at a time (at least one); a check waits at most `wait` for its turn.
    pub fn new(at_once: usize, wait: Duration) -> Checks {
        Checks {
            turns: Arc::new(Semaphore::new(at_once.max(1))),
            wait,
            per_client: Arc::default(),
        }
    }

    /// One check per available core; a turn waited for at most 10 s.
    pub fn per_core() -> Checks {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Checks::new(cores, Duration::from_secs(10))
    }

    /// Whether `password` matches `phc`, checked on the blocking pool once it is this check's
    /// turn (first among `client`'s checks, then among all); `None` when no turn came within
    /// the wait. The turns are held by the check itself, so a client that goes away does not
    /// free them while its hash still runs.
    pub async fn verify(&self, client: IpAddr, password: String, phc: String) -> Option<bool> {
        let deadline = tokio::time::Instant::now() + self.wait;
        let (member, own) = Member::join(&self.per_client, client);
        let own_turn = tokio::time::timeout_at(deadline, own.acquire_owned())
            .await
            .ok()?
            .ok()?;
        let turn = tokio::time::timeout_at(deadline, self.turns.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        let verified = tokio::task::spawn_blocking(move || {
            let verified = verify(&password, &phc);
            drop((turn, own_turn, member));
            verified
        })
        .await
        .unwrap_or(false);
        Some(verified)
    }

    /// Seconds a client is told to wait before trying again after a `None` from [`verify`].
    pub fn retry_after(&self) -> u64 {
        self.wait.as_secs().max(1)
    }
}

type PerClient = Arc<Mutex<HashMap<IpAddr, (Arc<Semaphore>, usize)>>>;

/// One of a client address's checks, counted until dropped; the address's entry goes when its
/// last check does.
struct Member {
    per_client: PerClient,
    client: IpAddr,
}

impl Member {
    fn join(per_client: &PerClient, client: IpAddr) -> (Member, Arc<Semaphore>) {
        let mut map = per_client.lock().unwrap_or_else(|e| e.into_inner());
        let (own, members) = map
            .entry(client)
            .or_insert_with(|| (Arc::new(Semaphore::new(PER_CLIENT)), 0));
        *members += 1;
        let member = Member {
            per_client: per_client.clone(),
            client,
        };
        (member, own.clone())
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut map = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, members)) = map.get_mut(&self.client) {
            *members -= 1;
            if *members == 0 {
                map.remove(&self.client);
            }
        }
    }
}

/// A hash of a random password, verified against when the user does not exist, so that the
/// response time does not tell which user names exist.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash(crate::secret::Secret::generate().expose()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let h = hash("correct horse").unwrap();
        assert!(is_valid_hash(&h));
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("correct horse", &h));
        assert!(!verify("battery staple", &h));
        assert!(!is_valid_hash("plain"));
    }

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[tokio::test]
    async fn one_client_has_a_few_checks_in_the_queue_at_most() {
        let phc = hash("correct horse").unwrap();
        let checks = Arc::new(Checks::new(1, Duration::from_secs(30)));
        let done = Arc::new(Mutex::new(vec![]));
        let check = |client: IpAddr, name: &'static str| {
            let (checks, phc, done) = (checks.clone(), phc.clone(), done.clone());
            tokio::spawn(async move {
                let verified = checks.verify(client, "correct horse".into(), phc).await;
                done.lock().unwrap().push(name);
                verified
            })
        };
        // The only turn taken: this address fills its share of the queue, and one more of its
        // checks waits behind its own; then another address's check arrives.
        let held = checks.turns.clone().acquire_owned().await.unwrap();
        let mut home: Vec<_> = (0..PER_CLIENT).map(|_| check(HOME, "home")).collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        home.push(check(HOME, "home, one too many"));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let other = check(IpAddr::from([198, 51, 100, 7]), "other");
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        for h in home {
            assert_eq!(h.await.unwrap(), Some(true));
        }
        assert_eq!(other.await.unwrap(), Some(true));
        // The other address did not wait for all of this one's checks.
        let order = done.lock().unwrap().clone();
        assert_eq!(order[PER_CLIENT], "other", "{order:?}");
        assert_eq!(order[PER_CLIENT + 1], "home, one too many");
        // Every count is given back.
        assert!(checks.per_client.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn checks_wait_for_a_turn_and_give_up_after_the_wait() {
        let phc = hash("correct horse").unwrap();
        let checks = Checks::new(1, Duration::from_millis(50));
        // Every turn taken (as by a check still running): the next one gives up.
        let held = checks.turns.clone().acquire_owned().await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(
            checks
                .verify(HOME, "correct horse".into(), phc.clone())
                .await,
            None
        );
        assert!(started.elapsed() >= Duration::from_millis(50));
        // Freed while a check waits: that check gets the turn.
        let waiting = tokio::spawn({
            let checks = Checks {
                turns: checks.turns.clone(),
                wait: Duration::from_secs(30),
                per_client: checks.per_client.clone(),
            };
            let phc = phc.clone();
            async move { checks.verify(HOME, "correct horse".into(), phc).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(held);
        assert_eq!(waiting.await.unwrap(), Some(true));
        assert_eq!(checks.verify(HOME, "wrong".into(), phc).await, Some(false));
        // Every turn is back once the checks are done.
        assert_eq!(checks.turns.available_permits(), 1);
    }

    #[tokio::test]
    async fn checks_take_turns_and_give_them_back() {
        let phc = hash("correct horse").unwrap();
        let checks = Arc::new(Checks::new(2, Duration::from_secs(60)));
        let tasks: Vec<_> = (0..6u8)
            .map(|i| {
                let (checks, phc) = (checks.clone(), phc.clone());
                let client = IpAddr::from([10, 0, 0, i]);
                tokio::spawn(
                    async move { checks.verify(client, "correct horse".into(), phc).await },
                )
            })
            .collect();
        let mut least = 2;
        while tasks.iter().any(|t| !t.is_finished()) {
            least = least.min(checks.turns.available_permits());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Some(true));
        }
        // Both turns were in use at some point (the checks took them), and all came back.
        assert_eq!(least, 0);
        assert_eq!(checks.turns.available_permits(), 2);
    }
}
