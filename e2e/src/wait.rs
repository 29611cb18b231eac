use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, sleep};

use crate::{Error, Result};

const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Polls `check` until it returns `Ok(Some(value))` or `timeout` passes.
///
/// `Ok(None)` means "not yet"; an `Err` is also treated as "not yet" (the API may be briefly
/// unavailable), and the last one is reported if time runs out, together with `what`.
pub async fn wait_until<T, E, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
    E: Debug,
{
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last = Some(format!("{err:?}")),
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.to_string(),
                timeout,
                last,
            });
        }
        sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_first_ready_value() {
        let mut calls = 0;
        let value = wait_until("the third call", Duration::from_secs(5), || {
            calls += 1;
            let ready = calls >= 3;
            async move { Ok::<_, String>(ready.then_some(calls)) }
        })
        .await
        .unwrap();
        assert_eq!(value, 3);
    }

    #[tokio::test]
    async fn times_out_naming_what_and_the_last_error() {
        let err = wait_until(
            "a thing that never happens",
            Duration::from_millis(300),
            || async { Err::<Option<()>, _>("still broken") },
        )
        .await
        .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("a thing that never happens"), "{message}");
        assert!(message.contains("still broken"), "{message}");
    }
}
