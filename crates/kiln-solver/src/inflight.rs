//! Steps running now, by cache key, shared by every solver given the same [`InFlight`]: one
//! engine's builds. A build that needs a key another build is running joins that run instead of
//! starting its own, so an identical step runs once and every build waiting on it gets its
//! result (or its error).
//!
//! A run is a [`Shared`] future: whichever waiter polls drives it, so the build that started it
//! may be dropped (cancelled) and the run goes on for the others; it is dropped, and so
//! cancelled, only when no build waits on it any more. The map holds weak handles, so it never
//! keeps a run alive by itself.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt, Shared, WeakShared};
use kiln_oci::Digest;
use kiln_progress::Vertex;
use parking_lot::Mutex;

use crate::WorkerError;

/// What a shared run ends with: the value and whether it came from the cache (another process
/// ran the step while this one waited on its key's lock), or the worker's error for every
/// waiter.
pub(crate) type RunResult<V> = Result<(V, bool), Arc<WorkerError>>;
pub(crate) type Run<V> = Shared<BoxFuture<'static, RunResult<V>>>;
type WeakRun<V> = WeakShared<BoxFuture<'static, RunResult<V>>>;

/// The engine-wide map of steps running now. Cheap to share: hold it in an `Arc` and give the
/// same one to every [`Solver`](crate::Solver) that should merge with the others.
pub struct InFlight<V> {
    /// Each run, and the progress vertex of the build that started it (where its output goes).
    runs: Mutex<HashMap<Digest, (WeakRun<V>, Vertex)>>,
}

impl<V> Default for InFlight<V> {
    fn default() -> Self {
        Self {
            runs: Mutex::new(HashMap::new()),
        }
    }
}

impl<V: Clone + Send + Sync + 'static> InFlight<V> {
    /// The run of `key` in progress, joined (its output shown on `progress` too from now on);
    /// or, when there is none, `start()` made the run of it, reporting on `progress`.
    pub(crate) fn join_or_start(
        &self,
        key: &Digest,
        progress: &Vertex,
        start: impl FnOnce() -> BoxFuture<'static, RunResult<V>>,
    ) -> Run<V> {
        let mut runs = self.runs.lock();
        // A finished run is not joined: its record is in the cache by now (or it failed, and
        // a later build tries again), and its entry is about to go.
        if let Some((weak, starter)) = runs.get(key)
            && let Some(run) = weak.upgrade()
            && run.peek().is_none()
        {
            starter.mirror_to(progress);
            return run;
        }
        // Builds that join later see the step's output from its start.
        progress.remember_output();
        let run = start().shared();
        let weak = run.downgrade().expect("a new run is pending");
        runs.insert(key.clone(), (weak, progress.clone()));
        run
    }

    /// Forgets `key`'s run once it is over or nobody waits on it; called by each waiter as it
    /// leaves (after dropping its handle), so the last one out clears the entry.
    pub(crate) fn leave(&self, key: &Digest) {
        let mut runs = self.runs.lock();
        let over = runs
            .get(key)
            .is_some_and(|(weak, _)| weak.upgrade().is_none_or(|run| run.peek().is_some()));
        if over {
            runs.remove(key);
        }
    }

    /// How many keys have a run in progress (for tests and diagnostics).
    pub fn len(&self) -> usize {
        self.runs
            .lock()
            .values()
            .filter(|(w, _)| w.upgrade().is_some_and(|r| r.peek().is_none()))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A worker error several builds report: the same text and chain of causes as the original.
#[derive(Debug)]
pub(crate) struct SharedCause(pub Arc<WorkerError>);

impl std::fmt::Display for SharedCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedCause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}
