//! Running a tunnel until access ends, without asking the cancellation token on every wake-up.
//!
//! `select!` over a tunnel and `token.cancelled()` polls both at every wake-up of the task, and
//! polling `cancelled()` locks the token and its waiter list: two locks per WebSocket message.
//! Here the token is polled once, with a waker that raises a flag before it wakes the task; after
//! that, a wake-up costs one atomic load to tell whether the token may have fired.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use tokio_util::sync::CancellationToken;

/// The task's waker, and whether the token has used it.
struct Flagged {
    fired: AtomicBool,
    task: Waker,
}

impl Wake for Flagged {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

/// Runs `work` to its end, unless `cancel` fires first: then `work` is dropped and the answer
/// is `None`.
pub async fn until_cancelled<F: Future>(work: F, cancel: &CancellationToken) -> Option<F::Output> {
    let mut work = pin!(work);
    let mut cancelled = pin!(cancel.cancelled());
    let mut armed: Option<Arc<Flagged>> = None;
    poll_fn(|cx| {
        // Access ending comes first: a busy tunnel must not keep a revoked user in.
        let check = armed
            .as_ref()
            .is_none_or(|f| f.fired.load(Ordering::Acquire) || !f.task.will_wake(cx.waker()));
        if check {
            let flagged = Arc::new(Flagged {
                fired: AtomicBool::new(false),
                task: cx.waker().clone(),
            });
            let waker = Waker::from(flagged.clone());
            if cancelled
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
            {
                return Poll::Ready(None);
            }
            armed = Some(flagged);
        }
        work.as_mut().poll(cx).map(Some)
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn work_that_ends_gives_its_answer() {
        let token = CancellationToken::new();
        let answer = until_cancelled(
            async {
                tokio::task::yield_now().await;
                7
            },
            &token,
        )
        .await;
        assert_eq!(answer, Some(7));
    }

    #[tokio::test]
    async fn a_token_fired_before_or_during_the_work_ends_it() {
        let token = CancellationToken::new();
        token.cancel();
        assert_eq!(
            until_cancelled(std::future::pending::<()>(), &token).await,
            None
        );

        // Fired while the work keeps waking the task: still seen.
        let token = CancellationToken::new();
        let busy = async {
            loop {
                tokio::task::yield_now().await;
            }
        };
        let firing = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            firing.cancel();
        });
        let ended = tokio::time::timeout(Duration::from_secs(5), until_cancelled(busy, &token));
        assert_eq!(ended.await.expect("cancellation is seen"), None::<()>);

        // Fired while the work waits on nothing.
        let token = CancellationToken::new();
        let firing = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            firing.cancel();
        });
        let ended = tokio::time::timeout(
            Duration::from_secs(5),
            until_cancelled(std::future::pending::<()>(), &token),
        );
        assert_eq!(ended.await.expect("cancellation is seen"), None);
    }
}
