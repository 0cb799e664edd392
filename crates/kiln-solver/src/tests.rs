//! Solver tests with fake arithmetic ops: each vertex adds its inputs' values and a constant,
//! counting executions, so dedup, caching and skipping are visible without containers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;

struct Arith {
    /// (inputs, constant, sleep ms)
    vertices: Vec<(Vec<usize>, i64, u64)>,
}

impl Graph for Arith {
    fn inputs(&self, v: usize) -> &[usize] {
        &self.vertices[v].0
    }
    fn name(&self, v: usize) -> &str {
        ["a", "b", "c", "d", "e", "f"][v]
    }
}

#[derive(Default)]
struct Counter {
    execs: Vec<AtomicUsize>,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

struct SumWorker(Arc<Counter>);

impl Worker<Arith> for SumWorker {
    type Value = i64;

    fn cache_key<'a>(
        &'a self,
        g: &'a Arith,
        v: usize,
        inputs: &'a [Solved<i64>],
    ) -> BoxFuture<'a, Result<Digest, WorkerError>> {
        let keys: Vec<String> = inputs.iter().map(|i| i.cache_key.to_string()).collect();
        let text = format!("{}:{:?}", g.vertices[v].1, keys);
        async move { Ok(kiln_oci::sha256(text.as_bytes())) }.boxed()
    }

    fn exec<'a>(
        &'a self,
        g: &'a Arith,
        v: usize,
        inputs: &'a [Solved<i64>],
        _p: &'a Vertex,
    ) -> BoxFuture<'a, Result<i64, WorkerError>> {
        async move {
            self.0.execs[v].fetch_add(1, Ordering::SeqCst);
            let now = self.0.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.0.max_running.fetch_max(now, Ordering::SeqCst);
            let _running = Running(&self.0.running);
            tokio::time::sleep(Duration::from_millis(g.vertices[v].2)).await;
            if g.vertices[v].1 < 0 {
                return Err("negative constant".into());
            }
            Ok(inputs.iter().map(|i| i.value).sum::<i64>() + g.vertices[v].1)
        }
        .boxed()
    }

    fn usable(&self, _: &i64) -> bool {
        true
    }
}

/// Counts a vertex as running until its future ends or is dropped.
struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// a=1, b=a+2, c=a+3 (b and c independent), d=b+c+4, e unused.
fn diamond() -> Arith {
    Arith {
        vertices: vec![
            (vec![], 1, 0),
            (vec![0], 2, 100),
            (vec![0], 3, 100),
            (vec![1, 2], 4, 0),
            (vec![0], 100, 0),
        ],
    }
}

fn solver(
    g: Arith,
    dir: &std::path::Path,
    no_cache: bool,
) -> (Solver<Arith, SumWorker>, Arc<Counter>) {
    let counter = Arc::new(Counter {
        execs: (0..g.vertices.len()).map(|_| AtomicUsize::new(0)).collect(),
        ..Default::default()
    });
    let cache: Arc<dyn CacheStore<i64>> = Arc::new(FileCacheStore::open(dir).unwrap());
    let s = Solver::new(
        Arc::new(g),
        Arc::new(SumWorker(counter.clone())),
        cache,
        Progress::discard(),
        no_cache,
    );
    (s, counter)
}

fn execs(c: &Counter) -> Vec<usize> {
    c.execs.iter().map(|e| e.load(Ordering::SeqCst)).collect()
}

#[tokio::test]
async fn solves_each_vertex_once_in_parallel_and_skips_unneeded() {
    let dir = tempfile::tempdir().unwrap();
    let (s, c) = solver(diamond(), dir.path(), false);
    let (r1, r2) = tokio::join!(s.solve(3), s.solve(3));
    assert_eq!(r1.unwrap().value, (1 + 2) + (1 + 3) + 4);
    assert_eq!(r2.unwrap().value, 11);
    assert_eq!(execs(&c), vec![1, 1, 1, 1, 0]);
    assert_eq!(
        c.max_running.load(Ordering::SeqCst),
        2,
        "b and c ran at the same time"
    );
}

#[tokio::test]
async fn second_solve_hits_the_cache_and_no_cache_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = solver(diamond(), dir.path(), false);
    assert!(!s.solve(3).await.unwrap().cached);
    let (s, c) = solver(diamond(), dir.path(), false);
    let r = s.solve(3).await.unwrap();
    assert!(r.cached);
    assert_eq!(r.value, 11);
    assert_eq!(execs(&c), vec![0, 0, 0, 0, 0]);
    let (s, c) = solver(diamond(), dir.path(), true);
    assert!(!s.solve(3).await.unwrap().cached);
    assert_eq!(execs(&c), vec![1, 1, 1, 1, 0]);
}

#[tokio::test]
async fn no_cache_vertices_rerun_and_the_rest_hits() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = solver(diamond(), dir.path(), false);
    s.solve(3).await.unwrap();
    let (s, c) = solver(diamond(), dir.path(), false);
    let s = s.with_no_cache_for([1]);
    assert_eq!(s.solve(3).await.unwrap().value, 11);
    // b reruns; its key is unchanged, so d, downstream, still hits.
    assert_eq!(execs(&c), vec![0, 1, 0, 0, 0]);
}

#[tokio::test]
async fn changed_input_rebuilds_only_downstream() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = solver(diamond(), dir.path(), false);
    s.solve(3).await.unwrap();
    let mut g = diamond();
    g.vertices[2].1 = 30;
    let (s, c) = solver(g, dir.path(), false);
    assert_eq!(s.solve(3).await.unwrap().value, 3 + 31 + 4);
    assert_eq!(execs(&c), vec![0, 0, 1, 1, 0]);
}

#[tokio::test]
async fn failure_names_the_vertex_and_is_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = diamond();
    g.vertices[1].1 = -1;
    let (s, _) = solver(g, dir.path(), false);
    let err = s.solve(3).await.unwrap_err();
    assert_eq!(err.to_string(), "b");
    assert_eq!(error_chain(&*err), "b: negative constant");
}

#[tokio::test]
async fn dropping_the_solve_cancels_running_vertices() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = diamond();
    g.vertices[1].2 = 10_000;
    let (s, c) = solver(g, dir.path(), false);
    let r = tokio::time::timeout(Duration::from_millis(200), s.solve(3)).await;
    assert!(r.is_err());
    drop(s);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        c.running.load(Ordering::SeqCst),
        0,
        "the sleeping vertex was dropped"
    );
}

#[tokio::test]
async fn solved_lists_every_vertex_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = solver(diamond(), dir.path(), false);
    s.solve(3).await.unwrap();
    let solved = s.solved();
    let vertices: Vec<usize> = solved.iter().map(|(v, _)| *v).collect();
    assert_eq!(vertices, vec![0, 1, 2, 3], "e was never needed");
    let values: Vec<i64> = solved.iter().map(|(_, s)| s.value).collect();
    assert_eq!(values, vec![1, 3, 4, 11]);
}

#[tokio::test]
async fn imported_records_are_found_after_local_ones_and_hits_are_kept_locally() {
    let from = tempfile::tempdir().unwrap();
    let (s, _) = solver(diamond(), from.path(), false);
    s.solve(3).await.unwrap();
    let records: HashMap<Digest, i64> = s
        .solved()
        .into_iter()
        .map(|(_, s)| (s.cache_key, s.value))
        .collect();

    // Another data root that imports them: nothing runs; the records hit are kept there.
    let dir = tempfile::tempdir().unwrap();
    let local: Arc<dyn CacheStore<i64>> = Arc::new(FileCacheStore::open(dir.path()).unwrap());
    let layered = Arc::new(LayeredCacheStore::new(local, vec![records.clone()]));
    let counter = Arc::new(Counter {
        execs: (0..5).map(|_| AtomicUsize::new(0)).collect(),
        ..Default::default()
    });
    let s = Solver::new(
        Arc::new(diamond()),
        Arc::new(SumWorker(counter.clone())),
        layered.clone(),
        Progress::discard(),
        false,
    );
    let r = s.solve(3).await.unwrap();
    assert!(r.cached);
    assert_eq!(r.value, 11);
    assert_eq!(execs(&counter), vec![0, 0, 0, 0, 0]);
    assert!(std::fs::read_dir(dir.path()).unwrap().count() >= 1);
    // The next build on that data root hits without the import.
    let local_only: Arc<dyn CacheStore<i64>> = Arc::new(FileCacheStore::open(dir.path()).unwrap());
    let s = Solver::new(
        Arc::new(diamond()),
        Arc::new(SumWorker(counter.clone())),
        local_only,
        Progress::discard(),
        false,
    );
    let r = s.solve(3).await.unwrap();
    assert!(r.cached);
    assert_eq!(execs(&counter), vec![0, 0, 0, 0, 0]);

    // A local record wins over an imported one of the same key.
    let key = records.iter().find(|(_, v)| **v == 11).unwrap().0.clone();
    layered.save(&key, &42);
    assert_eq!(layered.load(&key), Some(42));
    let missing = kiln_oci::sha256(b"nothing");
    assert_eq!(layered.load(&missing), None);
}

/// A solver over `g` counting into `counter`, merging with others through `in_flight`.
fn sharing_solver(
    g: Arith,
    dir: &std::path::Path,
    counter: &Arc<Counter>,
    in_flight: &Arc<InFlight<i64>>,
) -> Solver<Arith, SumWorker> {
    let cache: Arc<dyn CacheStore<i64>> = Arc::new(FileCacheStore::open(dir).unwrap());
    Solver::new(
        Arc::new(g),
        Arc::new(SumWorker(counter.clone())),
        cache,
        Progress::discard(),
        false,
    )
    .with_in_flight(in_flight.clone())
}

fn counter(n: usize) -> Arc<Counter> {
    Arc::new(Counter {
        execs: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        ..Default::default()
    })
}

/// Two builds' solvers (separate cache dirs, so only the in-flight map can merge them) solving
/// the same keys at once: each step runs once and both get every value.
#[tokio::test]
async fn solvers_sharing_in_flight_run_each_key_once() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = counter(5);
    let in_flight = Arc::new(InFlight::default());
    let s1 = sharing_solver(diamond(), d1.path(), &c, &in_flight);
    let s2 = sharing_solver(diamond(), d2.path(), &c, &in_flight);
    let (r1, r2) = tokio::join!(s1.solve(3), s2.solve(3));
    assert_eq!(r1.unwrap().value, 11);
    assert_eq!(r2.unwrap().value, 11);
    assert_eq!(execs(&c), vec![1, 1, 1, 1, 0]);
    assert!(in_flight.is_empty(), "finished runs are forgotten");

    // Separate maps (and dirs): nothing merges them, every step runs twice.
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = counter(5);
    let s1 = sharing_solver(diamond(), d1.path(), &c, &Default::default());
    let s2 = sharing_solver(diamond(), d2.path(), &c, &Default::default());
    let (r1, r2) = tokio::join!(s1.solve(3), s2.solve(3));
    assert_eq!((r1.unwrap().value, r2.unwrap().value), (11, 11));
    assert_eq!(execs(&c), vec![2, 2, 2, 2, 0]);
}

/// As two processes on one data root: no shared map, one cache dir. The key lock makes the
/// second wait for the first's run and take its record.
#[tokio::test]
async fn the_key_lock_makes_a_second_store_user_wait_and_hit() {
    let dir = tempfile::tempdir().unwrap();
    let c = counter(5);
    let s1 = sharing_solver(diamond(), dir.path(), &c, &Default::default());
    let s2 = sharing_solver(diamond(), dir.path(), &c, &Default::default());
    let (r1, r2) = tokio::join!(s1.solve(3), s2.solve(3));
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    assert_eq!((r1.value, r2.value), (11, 11));
    assert_eq!(execs(&c), vec![1, 1, 1, 1, 0]);
    assert!(
        r1.cached != r2.cached,
        "one ran d, the other found its record"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".lock-"))
        .collect();
    assert!(left.is_empty(), "lock files left: {left:?}");
}

/// The build that started a shared step is dropped while another waits on it: the step goes
/// on for the waiter, which gets its value; nothing runs twice.
#[tokio::test]
async fn cancelling_the_starter_keeps_the_waiters_run() {
    let dir = tempfile::tempdir().unwrap();
    let c = counter(5);
    let in_flight = Arc::new(InFlight::default());
    let g = || {
        let mut g = diamond();
        g.vertices[1].2 = 600;
        g.vertices[2].2 = 600;
        g
    };
    // One cache dir, as one engine has: `a`, done before the second starts, is a hit for it.
    let s1 = sharing_solver(g(), dir.path(), &c, &in_flight);
    let s2 = sharing_solver(g(), dir.path(), &c, &in_flight);
    let mut first = Box::pin(s1.solve(3));
    // The first alone starts b and c...
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut first)
            .await
            .is_err()
    );
    assert_eq!(c.running.load(Ordering::SeqCst), 2);
    // ...the second joins them, then the first is cancelled.
    let mut second = Box::pin(s2.solve(3));
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut second)
            .await
            .is_err()
    );
    drop(first);
    drop(s1);
    let r = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the waiter finishes")
        .unwrap();
    assert_eq!(r.value, 11);
    assert_eq!(execs(&c), vec![1, 1, 1, 1, 0]);

    // With nobody left waiting, a run is cancelled.
    let c = counter(5);
    let d3 = tempfile::tempdir().unwrap();
    let s3 = sharing_solver(g(), d3.path(), &c, &in_flight);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), s3.solve(3))
            .await
            .is_err()
    );
    drop(s3);
    assert_eq!(c.running.load(Ordering::SeqCst), 0);
    assert!(in_flight.is_empty());
}

/// A shared step that fails fails every build that needed it, each with the step's error.
#[tokio::test]
async fn a_failed_shared_step_fails_each_waiter_with_its_error() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = counter(5);
    let in_flight = Arc::new(InFlight::default());
    let g = || {
        let mut g = diamond();
        g.vertices[1].1 = -1;
        g.vertices[1].2 = 300;
        g
    };
    let s1 = sharing_solver(g(), d1.path(), &c, &in_flight);
    let s2 = sharing_solver(g(), d2.path(), &c, &in_flight);
    let (r1, r2) = tokio::join!(s1.solve(3), s2.solve(3));
    for r in [r1, r2] {
        let err = r.unwrap_err();
        assert_eq!(error_chain(&*err), "b: negative constant");
    }
    assert_eq!(execs(&c)[1], 1, "b ran once");
    // Not kept: the next build runs it again.
    let s3 = sharing_solver(g(), d1.path(), &c, &in_flight);
    assert!(s3.solve(3).await.is_err());
    assert_eq!(execs(&c)[1], 2);
}
