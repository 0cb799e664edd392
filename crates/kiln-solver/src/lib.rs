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
//! - Dropping the future returned by [`Solver::solve`] cancels every vertex in flight.

mod cache;

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt, Shared};
use kiln_oci::Digest;
use kiln_progress::{Progress, Vertex};
use parking_lot::Mutex;
use serde::{Serialize, de::DeserializeOwned};

pub use cache::{FileCacheStore, LayeredCacheStore};

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
}

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
            inner.solve_one(vertex, inputs).await
        }
        .boxed()
        .shared();
        // Another caller may have raced us; keep the first so the vertex runs once.
        self.futures.lock().entry(vertex).or_insert(fut).clone()
    }
}

impl<G: Graph, W: Worker<G>> Inner<G, W> {
    async fn solve_one(
        &self,
        vertex: usize,
        inputs: Vec<Solved<W::Value>>,
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
        if !self.no_cache
            && !self.no_cache_vertices.contains(&vertex)
            && persist
            && let Some(value) = self
                .cache
                .load(&cache_key)
                .filter(|v| self.worker.usable(v))
        {
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
        match self.worker.exec(graph, vertex, &inputs, &progress).await {
            Ok(value) => {
                if persist {
                    self.cache.save(&cache_key, &value);
                }
                progress.done();
                Ok(Solved {
                    value,
                    cache_key,
                    cached: false,
                })
            }
            Err(source) => {
                progress.error(&error_chain(&*source));
                Err(Arc::new(Error::Vertex { name, source }))
            }
        }
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
