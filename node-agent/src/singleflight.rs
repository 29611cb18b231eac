//! Single flight: concurrent requests for one key share one execution.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

/// Runs at most one task per key at a time; later callers for a running key await the
/// same result. The task runs on the tokio runtime, so it completes (and its result is
/// cached by the task itself) even if every caller gives up.
pub struct SingleFlight<K, V: Clone> {
    running: Arc<Mutex<HashMap<K, Shared<BoxFuture<'static, V>>>>>,
}

impl<K, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            running: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Joins the running task for `key` or starts `start()` as a new one. `on_panic`
    /// builds the value returned if the task panics.
    pub async fn run<F>(&self, key: K, start: impl FnOnce() -> F, on_panic: fn(String) -> V) -> V
    where
        F: Future<Output = V> + Send + 'static,
    {
        let shared = {
            let mut running = self.running.lock().expect("single flight");
            if let Some(s) = running.get(&key) {
                s.clone()
            } else {
                let handle = tokio::spawn(start());
                let map = self.running.clone();
                let k = key.clone();
                let fut = async move {
                    let v = match handle.await {
                        Ok(v) => v,
                        Err(e) => on_panic(e.to_string()),
                    };
                    map.lock().expect("single flight").remove(&k);
                    v
                }
                .boxed()
                .shared();
                running.insert(key, fut.clone());
                // Drive it even if nobody awaits: the removal above must happen.
                tokio::spawn(fut.clone());
                fut
            }
        };
        shared.await
    }

    /// Keys running right now.
    pub fn in_flight(&self) -> usize {
        self.running.lock().expect("single flight").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let sf: Arc<SingleFlight<u32, u64>> = Arc::new(SingleFlight::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let sf = sf.clone();
            let runs = runs.clone();
            tasks.push(tokio::spawn(async move {
                sf.run(
                    7,
                    || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        42
                    },
                    |_| 0,
                )
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 42);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(sf.in_flight(), 0);
    }
}
