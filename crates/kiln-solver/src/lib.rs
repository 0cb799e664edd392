//! The solver: walks a DAG of vertices from a root, solves every vertex at most once (inputs
//! concurrently), asks the [`Worker`] for each vertex's cache key once its inputs are solved, and
//! reuses a cached result when the key is known. It knows vertices, keys and results; not what an
//! op does, LLB, mounts or files (the worker does).
//!
//! The contract a worker relies on:
//! - `cache_key` runs after every input is solved and sees their values and keys, so a key can
//!   cover the content an op reads from an input (e.g. the files a COPY selects), not just the
//!   input's identity.
//! - `exec` runs only on a cache miss (or with `no_cache`); its value is saved under the key.
//! - A cached value is used only if `usable` says its backing data is still present.
//! - Dropping the future returned by [`Solver::solve`] cancels every vertex in flight, except
//!   a step another solver sharing its [`InFlight`] waits on: that one runs on for the waiter.
//!
//! Solvers given the same [`InFlight`] (one engine's builds) merge by cache key: a persisted
//! step whose key another solver is running is joined, not run again, and each gets its value
//! or its error. Across processes the cache store's per-key lock does the same: the second
//! waits for the first's run, then finds its record.

mod cache;
mod inflight;

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt, Shared};
use kiln_oci::Digest;
use kiln_progress::{Progress, Vertex};
use parking_lot::Mutex;
use serde::{Serialize, de::DeserializeOwned};

pub use cache::{FileCacheStore, LayeredCacheStore};
pub use inflight::InFlight;

use inflight::{RunResult, SharedCause};

/// The graph the solver walks. Vertex ids are indexes; inputs must form a DAG.
pub trait Graph: Send + Sync + 'static {
    fn inputs(&self, vertex: usize) -> &[usize];
    /// What progress output calls the vertex; empty means "do not show".
    fn name(&self, vertex: usize) -> &str;
}

/// A solved vertex: its value and the cache key it was solved (or found) under.
#[derive(Debug, Clone)]
pub struct Solved<V> {
    pub value: V,
    pub cache_key: Digest,
    pub cached: bool,
}

pub type WorkerError = Box<dyn std::error::Error + Send + Sync>;

pub trait Worker<G: Graph>: Send + Sync + 'static {
    type Value: Clone + Send + Sync + Serialize + DeserializeOwned + 'static;

    fn cache_key<'a>(
        &'a self,
        graph: &'a G,
        vertex: usize,
        inputs: &'a [Solved<Self::Value>],
    ) -> BoxFuture<'a, Result<Digest, WorkerError>>;

    fn exec<'a>(
        &'a self,
        graph: &'a G,
        vertex: usize,
        inputs: &'a [Solved<Self::Value>],
        progress: &'a Vertex,
    ) -> BoxFuture<'a, Result<Self::Value, WorkerError>>;

    /// Whether a value found in the cache can still be used (its data was not pruned).
    fn usable(&self, value: &Self::Value) -> bool;

    /// Whether results of this vertex go to the persistent cache (sources that are cheap to
    /// recompute need not).
    fn persist(&self, _graph: &G, _vertex: usize) -> bool {
        true
    }
}

/// Where cache records live: key → value.
pub trait CacheStore<V>: Send + Sync {
    fn load(&self, key: &Digest) -> Option<V>;
    fn save(&self, key: &Digest, value: &V);

    /// Waits for, then holds until dropped, the lock of `key`'s step, so another process
    /// solving the same key meanwhile waits and then finds the record instead of running the
    /// step again. `None`: no lock (a lock that cannot be had costs a second run, not the
    /// build).
    fn lock<'a>(&'a self, _key: &'a Digest) -> BoxFuture<'a, Option<KeyLock>> {
        futures::future::ready(None).boxed()
    }
}

/// A held cache key lock (see [`CacheStore::lock`]); released when dropped.
pub type KeyLock = Box<dyn Send>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{name}")]
    Vertex {
        name: String,
        #[source]
        source: WorkerError,
    },
    #[error("{name}: computing the cache key")]
    CacheKey {
        name: String,
        #[source]
        source: WorkerError,
    },
}

pub type SharedError = Arc<Error>;
type SolveFuture<V> = Shared<BoxFuture<'static, Result<Solved<V>, SharedError>>>;

pub struct Solver<G: Graph, W: Worker<G>> {
    inner: Arc<Inner<G, W>>,
    /// One shared future per vertex. The futures hold `inner` but not this map, so dropping the
    /// solver and the caller's future drops every vertex in flight (no reference cycle).
    futures: Mutex<HashMap<usize, SolveFuture<W::Value>>>,
}

struct Inner<G: Graph, W: Worker<G>> {
    graph: Arc<G>,
    worker: Arc<W>,
    cache: Arc<dyn CacheStore<W::Value>>,
    progress: Progress,
    no_cache: bool,
    /// Vertices that run whatever the cache holds (`--no-cache-filter`); their results are
    /// still saved.
    no_cache_vertices: std::collections::HashSet<usize>,
    /// Steps running now in this solver and the others sharing it, by cache key.
    in_flight: Arc<InFlight<W::Value>>,
}

impl<G: Graph, W: Worker<G>> Solver<G, W> {
    pub fn new(
        graph: Arc<G>,
        worker: Arc<W>,
        cache: Arc<dyn CacheStore<W::Value>>,
        progress: Progress,
        no_cache: bool,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                graph,
                worker,
                cache,
                progress,
                no_cache,
                no_cache_vertices: Default::default(),
                in_flight: Default::default(),
            }),
            futures: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `vertices` without looking in the cache (the others use it). Call before solving.
    pub fn with_no_cache_for(mut self, vertices: impl IntoIterator<Item = usize>) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("set before solving");
        inner.no_cache_vertices.extend(vertices);
        self
    }

    /// Merges with every other solver given the same map: a step one of them is running is
    /// joined, not run again. Call before solving.
    pub fn with_in_flight(mut self, in_flight: Arc<InFlight<W::Value>>) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("set before solving");
        inner.in_flight = in_flight;
        self
    }

    /// Solves `root` and everything it needs; vertices it does not need are never touched.
    pub async fn solve(&self, root: usize) -> Result<Solved<W::Value>, SharedError> {
        self.future(root).await
    }

    /// Every vertex solved so far whose result goes to the persistent cache, with its key and
    /// value (cached or run): what a cache export writes.
    pub fn solved(&self) -> Vec<(usize, Solved<W::Value>)> {
        let mut out: Vec<_> = self
            .futures
            .lock()
            .iter()
            .filter(|(v, _)| self.inner.worker.persist(&self.inner.graph, **v))
            .filter_map(|(v, f)| match f.peek() {
                Some(Ok(solved)) => Some((*v, solved.clone())),
                _ => None,
            })
            .collect();
        out.sort_by_key(|(v, _)| *v);
        out
    }

    fn future(&self, vertex: usize) -> SolveFuture<W::Value> {
        if let Some(f) = self.futures.lock().get(&vertex) {
            return f.clone();
        }
        let inputs: Vec<_> = self
            .inner
            .graph
            .inputs(vertex)
            .iter()
            .map(|i| self.future(*i))
            .collect();
        let inner = Arc::clone(&self.inner);
        let fut = async move {
            let inputs = futures::future::try_join_all(inputs).await?;
            inner.solve_one(vertex, Arc::new(inputs)).await
        }
        .boxed()
        .shared();
        // Another caller may have raced us; keep the first so the vertex runs once.
        self.futures.lock().entry(vertex).or_insert(fut).clone()
    }
}

impl<G: Graph, W: Worker<G>> Inner<G, W> {
    async fn solve_one(
        self: Arc<Self>,
        vertex: usize,
        inputs: Arc<Vec<Solved<W::Value>>>,
    ) -> Result<Solved<W::Value>, SharedError> {
        let graph = &*self.graph;
        let name = graph.name(vertex).to_string();
        let cache_key = self
            .worker
            .cache_key(graph, vertex, &inputs)
            .await
            .map_err(|source| {
                Arc::new(Error::CacheKey {
                    name: name.clone(),
                    source,
                })
            })?;
        let persist = self.worker.persist(graph, vertex);
        let use_cache = !self.no_cache && !self.no_cache_vertices.contains(&vertex) && persist;
        if use_cache && let Some(value) = self.lookup(&cache_key) {
            if !name.is_empty() {
                self.progress.vertex(name).cached();
            }
            return Ok(Solved {
                value,
                cache_key,
                cached: true,
            });
        }
        let progress = if name.is_empty() {
            Progress::discard().vertex("")
        } else {
            self.progress.vertex(name.clone())
        };
        let ran = if use_cache {
            self.clone()
                .shared_run(vertex, inputs, &cache_key, &progress)
                .await
        } else {
            // Without the cache the step runs here whatever else runs it: it is neither joined
            // to another build's run nor offered to them.
            match self.worker.exec(graph, vertex, &inputs, &progress).await {
                Ok(value) => {
                    if persist {
                        self.cache.save(&cache_key, &value);
                    }
                    Ok((value, false))
                }
                Err(e) => Err(Arc::new(e)),
            }
        };
        match ran {
            Ok((value, cached)) => {
                match cached {
                    true => progress.cached(),
                    false => progress.done(),
                }
                Ok(Solved {
                    value,
                    cache_key,
                    cached,
                })
            }
            Err(source) => {
                progress.error(&error_chain(&**source));
                Err(Arc::new(Error::Vertex {
                    name,
                    source: Box::new(SharedCause(source)),
                }))
            }
        }
    }

    /// A cached value whose data is still there.
    fn lookup(&self, key: &Digest) -> Option<W::Value> {
        self.cache.load(key).filter(|v| self.worker.usable(v))
    }

    /// Runs the step of `key`, or joins the run of it another solver sharing the in-flight map
    /// started. The run takes the key's lock first, so a run of it in another process is
    /// waited for and its record used.
    async fn shared_run(
        self: Arc<Self>,
        vertex: usize,
        inputs: Arc<Vec<Solved<W::Value>>>,
        key: &Digest,
        progress: &Vertex,
    ) -> RunResult<W::Value> {
        /// Leaves the run when this waiter is done or dropped (after its handle is gone).
        struct Leave<'a, V: Clone + Send + Sync + 'static>(&'a InFlight<V>, &'a Digest);
        impl<V: Clone + Send + Sync + 'static> Drop for Leave<'_, V> {
            fn drop(&mut self) {
                self.0.leave(self.1);
            }
        }
        let in_flight = self.in_flight.clone();
        let _leave = Leave(&in_flight, key);
        let run = in_flight.join_or_start(key, progress, || {
            let inner = self.clone();
            let key = key.clone();
            let progress = progress.clone();
            async move {
                let _lock = inner.cache.lock(&key).await;
                // Another process may have run the step while this one waited for the lock.
                if let Some(value) = inner.lookup(&key) {
                    return Ok((value, true));
                }
                let value = inner
                    .worker
                    .exec(&inner.graph, vertex, &inputs, &progress)
                    .await
                    .map_err(Arc::new)?;
                // Saved before the run ends (and the lock goes), so whoever comes next finds it.
                inner.cache.save(&key, &value);
                Ok((value, false))
            }
            .boxed()
        });
        run.await
    }
}

/// "outer: inner: innermost", for one-line progress errors.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests;
