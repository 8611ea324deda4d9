//! openraft's async runtime for drover: tokio, with a random source that can be seeded.
//!
//! openraft draws its randomized election timeouts from the runtime's thread-local random
//! generator. On a real node that is seeded from the operating system, as tokio's would be;
//! the simulator calls [`seed`] first so that a run follows its seed.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use openraft::async_runtime::TokioOneShotSender;
use openraft::{AsyncRuntime, OptionalSend, TokioInstant};
use rand::rngs::StdRng;
use rand::SeedableRng;

static SEEDED: AtomicBool = AtomicBool::new(false);
static NEXT_SEED: AtomicU64 = AtomicU64::new(0);

/// Makes every later draw of openraft's random numbers follow `seed` (the simulator).
pub fn seed(seed: u64) {
    NEXT_SEED.store(seed, Ordering::SeqCst);
    SEEDED.store(true, Ordering::SeqCst);
}

/// tokio, as openraft's `TokioRuntime`, with a seedable random source.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DroverRuntime;

impl AsyncRuntime for DroverRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = StdRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::task::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        if SEEDED.load(Ordering::SeqCst) {
            let next = NEXT_SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::SeqCst);
            StdRng::seed_from_u64(next)
        } else {
            StdRng::from_entropy()
        }
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(tx), rx)
    }
}
