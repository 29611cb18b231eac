//! Single flight: concurrent requests for one key share one execution.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::oneshot;

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

    /// Starts one task that produces the values of several keys (adjacent blocks fetched
    /// by one request), each handed over through its sender as soon as the task has it.
    /// Returns the shared result of every key in `keys`, in order: keys already running
    /// join their task, and `start` gets the senders of the others only (it is not called
    /// when there are none). A key whose sender is dropped unsent gets `on_lost`.
    pub fn run_group<F>(
        &self,
        keys: Vec<K>,
        start: impl FnOnce(Vec<(K, oneshot::Sender<V>)>) -> F,
        on_lost: fn(String) -> V,
    ) -> Vec<Shared<BoxFuture<'static, V>>>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut senders = Vec::new();
        let results = {
            let mut running = self.running.lock().expect("single flight");
            keys.into_iter()
                .map(|key| {
                    if let Some(s) = running.get(&key) {
                        return s.clone();
                    }
                    let (tx, rx) = oneshot::channel();
                    let map = self.running.clone();
                    let k = key.clone();
                    let fut = async move {
                        let v = rx.await.unwrap_or_else(|_| {
                            on_lost("the fetch ended without a result".to_string())
                        });
                        map.lock().expect("single flight").remove(&k);
                        v
                    }
                    .boxed()
                    .shared();
                    running.insert(key.clone(), fut.clone());
                    // Drive it even if nobody awaits: the removal above must happen.
                    tokio::spawn(fut.clone());
                    senders.push((key, tx));
                    fut
                })
                .collect()
        };
        if !senders.is_empty() {
            tokio::spawn(start(senders));
        }
        results
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

    /// A group task serves each of its keys as it goes; a caller of a key the group is
    /// producing joins it instead of starting its own run, keys already running are not
    /// handed to the group, and a key the group drops gets the "lost" value.
    #[tokio::test]
    async fn group_shares_keys_with_single_runs() {
        let sf: Arc<SingleFlight<u32, u64>> = Arc::new(SingleFlight::default());
        let single_runs = Arc::new(AtomicUsize::new(0));
        let (release_tx, release_rx) = oneshot::channel::<()>();
        // Key 2 is already running on its own.
        let running = {
            let sf = sf.clone();
            tokio::spawn(async move {
                sf.run(
                    2,
                    || async move {
                        let _ = release_rx.await;
                        20
                    },
                    |_| 0,
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let handed = Arc::new(Mutex::new(Vec::new()));
        let h = handed.clone();
        let group = sf.run_group(
            vec![1, 2, 3, 4],
            move |senders| async move {
                for (k, tx) in senders {
                    h.lock().unwrap().push(k);
                    if k != 4 {
                        let _ = tx.send(u64::from(k) * 100);
                    }
                }
            },
            |_| 999,
        );
        // A single caller of key 3 joins the group's run.
        let runs = single_runs.clone();
        let joined = sf
            .run(
                3,
                || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    7
                },
                |_| 0,
            )
            .await;
        // (current-thread test runtime: the group task has not run yet when key 3 is asked)
        assert_eq!(joined, 300);
        assert_eq!(single_runs.load(Ordering::SeqCst), 0);
        release_tx.send(()).unwrap();
        let values = futures::future::join_all(group).await;
        assert_eq!(values, vec![100, 20, 300, 999]);
        assert_eq!(*handed.lock().unwrap(), vec![1, 3, 4]);
        assert_eq!(running.await.unwrap(), 20);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(sf.in_flight(), 0);
    }
}
