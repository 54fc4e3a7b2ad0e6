//! Local passwords, hashed with argon2id.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::phc::{Output, PasswordHash, Salt};
use argon2::{Argon2, PasswordHasher};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Hashes a password into a PHC string (argon2id, random salt).
pub fn hash(password: &str) -> Result<String, String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `phc` is an argon2 hash that [`verify`] can check: parameters it understands, and
/// at most [`MAX_MEMORY_KIB`] of memory per check (every sign-in against it maps that much).
pub fn is_valid_hash(phc: &str) -> bool {
    parse(phc).is_some_and(|stored| {
        let p = &stored.params;
        p.m_cost() <= MAX_MEMORY_KIB && p.t_cost() <= MAX_PASSES && p.p_cost() <= MAX_LANES
    })
}

/// The most a password hash may ask of each check: memory in KiB (256 MiB; the default is 19),
/// passes (the default is 2) and lanes (the default is 1). Every sign-in against the hash pays
/// it, holding a turn and a blocking thread meanwhile.
pub const MAX_MEMORY_KIB: u32 = 256 * 1024;
pub const MAX_PASSES: u32 = 16;
pub const MAX_LANES: u32 = 16;

/// Verifies a password; CPU-heavy, so call it from a blocking task.
///
/// The same check as argon2's `verify_password`, with the working memory (19 MiB with the
/// default parameters) mapped for this check alone and unmapped at its end: from the allocator,
/// it stayed in the checking thread's heap until that thread exited, seconds later.
pub fn verify(password: &str, phc: &str) -> bool {
    let Some(stored) = parse(phc) else {
        return false;
    };
    let Some(mut blocks) = Blocks::map(stored.params.block_count()) else {
        return false;
    };
    let mut out = vec![0u8; stored.expected.len()];
    Argon2::new(stored.algorithm, stored.version, stored.params)
        .hash_password_into_with_memory(password.as_bytes(), &stored.salt, &mut out, blocks.as_mut())
        .is_ok()
        // Output's equality is constant-time.
        && Output::new(&out).is_ok_and(|computed| computed == stored.expected)
}

/// A stored password hash, taken apart.
struct Stored {
    algorithm: argon2::Algorithm,
    version: argon2::Version,
    params: argon2::Params,
    salt: Salt,
    expected: Output,
}

/// Takes a PHC string apart the way argon2's own `verify_password` does; `None` for anything
/// it would refuse.
fn parse(phc: &str) -> Option<Stored> {
    let parsed = PasswordHash::new(phc).ok()?;
    Some(Stored {
        algorithm: argon2::Algorithm::try_from(parsed.algorithm.as_str()).ok()?,
        version: match parsed.version {
            Some(v) => argon2::Version::try_from(v).ok()?,
            None => argon2::Version::default(),
        },
        params: argon2::Params::try_from(&parsed).ok()?,
        salt: parsed.salt?,
        expected: parsed.hash?,
    })
}

/// Linux populates a mapping at once when asked: argon2 writes every block anyway, and one call
/// is cheaper than a page fault per page (default parameters, release build: 21 ms a check
/// instead of 24; argon2's own check, reusing its heap, 17.5).
#[cfg(any(target_os = "linux", target_os = "android"))]
const POPULATE: libc::c_int = libc::MAP_POPULATE;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const POPULATE: libc::c_int = 0;

/// argon2's working memory for one check: an anonymous private mapping (populated when made,
/// where the system can) unmapped when dropped.
struct Blocks {
    start: std::ptr::NonNull<argon2::Block>,
    len: usize,
}

impl Blocks {
    fn map(len: usize) -> Option<Blocks> {
        let bytes = len.checked_mul(size_of::<argon2::Block>())?.max(1);
        // SAFETY: a new anonymous mapping that nothing else refers to; failure is checked.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | POPULATE,
                -1,
                0,
            )
        };
        if start == libc::MAP_FAILED {
            return None;
        }
        Some(Blocks {
            start: std::ptr::NonNull::new(start.cast())?,
            len,
        })
    }
}

impl AsMut<[argon2::Block]> for Blocks {
    fn as_mut(&mut self) -> &mut [argon2::Block] {
        // SAFETY: the mapping holds `len` blocks, is page-aligned (more than a block's 64-byte
        // alignment), zero-filled (all-zero is a valid block: it is plain integers) and owned
        // by `self`, which this borrow borrows.
        unsafe { std::slice::from_raw_parts_mut(self.start.as_ptr(), self.len) }
    }
}

impl Drop for Blocks {
    fn drop(&mut self) {
        let bytes = (self.len * size_of::<argon2::Block>()).max(1);
        // SAFETY: the mapping made in `map`, with its length; nothing borrows it any more.
        unsafe {
            libc::munmap(self.start.as_ptr().cast(), bytes);
        }
    }
}

/// The password checks of sign-ins, a few at a time. Each argon2id check takes about 19 MiB and
/// a core for some 20 ms; unbounded, a burst of sign-in posts (before any of them has failed and
/// the per-client limit counts it) would start one blocking thread and 19 MiB for each, and take
/// every core from the proxied traffic. Here at most one check per core runs at once, the others
/// wait for their turn, and one that waited too long is answered "busy" instead. One client has
/// one check in that queue at a time (its others wait behind it), so that it cannot fill the
/// queue and keep everybody else's sign-ins waiting; and since a check holds its client's turn
/// until its failure is counted (see [`Checked`]), the sign-in limit is exact on one instance.
pub struct Checks {
    turns: Arc<Semaphore>,
    wait: Duration,
    /// Per client (its address; an IPv6 client its /64): its own turns, and how many of its
    /// checks hold or wait for one.
    per_client: PerClient,
}

/// Checks of one client in the queue at once: one, so that each check's gate sees the failures
/// of the client's checks before it.
const PER_CLIENT: usize = 1;

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
    /// turn (first among `client`'s checks, then among all) and `gate` (run at that moment)
    /// lets it; `None` when no turn came within the wait. The turns go with the hash to the
    /// blocking pool, so a client that goes away does not free them while its hash still runs,
    /// and come back in the [`Checked`], so the caller can count a failure before the next
    /// check's gate asks.
    pub async fn verify(
        &self,
        client: IpAddr,
        password: String,
        phc: String,
        gate: impl Future<Output = crate::error::Result<()>>,
    ) -> crate::error::Result<Option<Checked>> {
        let deadline = tokio::time::Instant::now() + self.wait;
        let client = super::ratelimit::client_block(client);
        let (member, own) = Member::join(&self.per_client, client);
        let turns = async {
            let own_turn = tokio::time::timeout_at(deadline, own.acquire_owned())
                .await
                .ok()?
                .ok()?;
            let turn = tokio::time::timeout_at(deadline, self.turns.clone().acquire_owned())
                .await
                .ok()?
                .ok()?;
            Some((own_turn, turn, member))
        };
        let Some(turns) = turns.await else {
            return Ok(None);
        };
        gate.await?;
        let checked = tokio::task::spawn_blocking(move || Checked {
            matches: verify(&password, &phc),
            _turns: Some(turns),
        })
        .await;
        Ok(Some(checked.unwrap_or_else(|_| Checked {
            matches: false,
            _turns: Default::default(),
        })))
    }

    /// Seconds a client is told to wait before trying again after a `None` from [`verify`].
    pub fn retry_after(&self) -> u64 {
        self.wait.as_secs().max(1)
    }
}

/// A finished check. It holds the check's turns until dropped: a failure counted before then
/// is seen by the gate of the next check of the same client.
pub struct Checked {
    pub matches: bool,
    _turns: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit, Member)>,
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
        // One that would map 4 GiB at every sign-in is refused when the config is read.
        let huge = "$argon2id$v=19$m=4194304,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let fine = "$argon2id$v=19$m=19456,t=1,p=1$c29tZXNhbHRzb21lc2FsdA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(is_valid_hash(fine));
        assert!(!is_valid_hash(huge));
        // A version verify does not know, or passes without end, are refused too.
        assert!(!is_valid_hash(&fine.replace("v=19", "v=20")));
        assert!(!is_valid_hash(&fine.replace("t=1", "t=4294967295")));
        assert!(!is_valid_hash(&fine.replace("p=1", "p=64")));
    }

    #[test]
    fn verify_agrees_with_argon2s_own_check_for_every_variant() {
        use argon2::{Algorithm, Params, PasswordVerifier, Version};
        let small = |m, t, p| Params::new(m, t, p, None).unwrap();
        for (algorithm, version, params) in [
            (Algorithm::Argon2id, Version::V0x13, small(64, 1, 1)),
            (Algorithm::Argon2id, Version::V0x13, small(256, 2, 2)),
            (Algorithm::Argon2i, Version::V0x13, small(64, 3, 1)),
            (Algorithm::Argon2d, Version::V0x10, small(128, 1, 4)),
            (
                Algorithm::Argon2id,
                Version::V0x13,
                Params::new(64, 1, 1, Some(64)).unwrap(),
            ),
        ] {
            let phc = Argon2::new(algorithm, version, params)
                .hash_password(b"correct horse")
                .unwrap()
                .to_string();
            for (password, right) in [("correct horse", true), ("correct horsf", false)] {
                let theirs = Argon2::default()
                    .verify_password(password.as_bytes(), phc.as_str())
                    .is_ok();
                assert_eq!(theirs, right, "{phc}");
                assert_eq!(verify(password, &phc), right, "{phc} with {password:?}");
            }
        }
        // Broken hashes verify nothing.
        let good = hash("correct horse").unwrap();
        let (head, _) = good.rsplit_once('$').unwrap();
        for broken in [
            "",
            "$argon2id$v=19$m=19456,t=2,p=1",
            head,
            "$argon2id$v=99$m=64,t=1,p=1$c29tZXNhbHQ$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "$scrypt$ln=16,r=8,p=1$aM15713r3Xsvxbi31lqr1Q$nFNh2CVHVjNldFVKDHDlm4CbdRSCdEBsjjJxD+iCs5E",
        ] {
            assert!(!verify("correct horse", broken), "{broken:?}");
        }
    }

    const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    /// A gate that lets every check through.
    async fn open() -> crate::error::Result<()> {
        Ok(())
    }

    #[tokio::test]
    async fn one_client_has_a_few_checks_in_the_queue_at_most() {
        let phc = hash("correct horse").unwrap();
        let checks = Arc::new(Checks::new(1, Duration::from_secs(30)));
        let done = Arc::new(Mutex::new(vec![]));
        let check = |client: IpAddr, name: &'static str| {
            let (checks, phc, done) = (checks.clone(), phc.clone(), done.clone());
            tokio::spawn(async move {
                let verified = checks
                    .verify(client, "correct horse".into(), phc, open())
                    .await
                    .unwrap()
                    .map(|c| c.matches);
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
    async fn a_clients_next_check_waits_until_the_last_one_is_done_with() {
        // The first check's failure is counted after its hash, while it still holds its turn
        // (as sign-in does); the second check's gate, asked at its turn, must see it.
        let phc = hash("correct horse").unwrap();
        let checks = Arc::new(Checks::new(4, Duration::from_secs(30)));
        let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let first = {
            let (checks, phc, failures) = (checks.clone(), phc.clone(), failures.clone());
            tokio::spawn(async move {
                let checked = checks
                    .verify(HOME, "wrong".into(), phc, open())
                    .await
                    .unwrap()
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                failures.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(checked);
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
        let gate = {
            let (failures, seen) = (failures.clone(), seen.clone());
            async move {
                seen.store(
                    failures.load(std::sync::atomic::Ordering::SeqCst),
                    std::sync::atomic::Ordering::SeqCst,
                );
                Ok(())
            }
        };
        checks
            .verify(HOME, "wrong".into(), phc, gate)
            .await
            .unwrap()
            .unwrap();
        first.await.unwrap();
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
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
                .verify(HOME, "correct horse".into(), phc.clone(), open())
                .await
                .unwrap()
                .map(|c| c.matches),
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
            async move {
                checks
                    .verify(HOME, "correct horse".into(), phc, open())
                    .await
                    .unwrap()
                    .map(|c| c.matches)
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        drop(held);
        assert_eq!(waiting.await.unwrap(), Some(true));
        assert_eq!(
            checks
                .verify(HOME, "wrong".into(), phc, open())
                .await
                .unwrap()
                .map(|c| c.matches),
            Some(false)
        );
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
                tokio::spawn(async move {
                    checks
                        .verify(client, "correct horse".into(), phc, open())
                        .await
                        .unwrap()
                        .map(|c| c.matches)
                })
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
