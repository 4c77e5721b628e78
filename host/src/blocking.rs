//! One way onto tokio's blocking pool for the whole host.
//!
//! `tokio::task::spawn_blocking` is generic over its closure: every call
//! site with its own closure type adds its own copy of tokio's task
//! machinery, about 3.5 KiB of the armv7 board binary apiece, whose 4 MiB
//! budget is tight. [`spawn_blocking`] boxes the closure and its result, so
//! all call sites share one copy, for one extra allocation per call.

use std::any::Any;

type Erased = Box<dyn Any + Send>;
type Job = Box<dyn FnOnce() -> Erased + Send>;

/// Runs `f` on the blocking pool, as `tokio::task::spawn_blocking` does.
pub async fn spawn_blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    start(f).await
}

/// [`spawn_blocking`], started at once rather than when first polled: the
/// work goes on while the caller does something else before awaiting it.
pub fn start<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> impl Future<Output = Result<T, tokio::task::JoinError>> {
    let job: Job = Box::new(move || Box::new(f()) as Erased);
    let handle = tokio::task::spawn_blocking(job);
    async move { Ok(*handle.await?.downcast::<T>().expect("a blocking job returns the type its closure does")) }
}
