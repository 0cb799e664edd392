//! Automatic GC after a build: the configured policies applied on a thread of the same
//! process, started once the build's result is exported. kiln has no daemon to run it later,
//! so the process waits for the thread before it exits; the pass is bounded (no removal starts
//! after [`GC_BUDGET`]) and whatever it had no time for is left for the next one.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{Engine, PruneOptions, PruneReport, Result};

/// How long automatic GC may go on removing after it starts.
pub const GC_BUDGET: Duration = Duration::from_secs(2);

/// A GC pass running in the background; joined by [`GcTask::wait`] or on drop.
pub struct GcTask(Option<JoinHandle<Result<PruneReport>>>);

impl Engine {
    /// Starts automatic GC on a thread (nothing when `gc = false`).
    pub fn spawn_gc(self: &Arc<Self>) -> GcTask {
        if self.gc.gc == Some(false) {
            return GcTask(None);
        }
        let engine = self.clone();
        let handle = std::thread::Builder::new()
            .name("kiln-gc".into())
            .spawn(move || {
                engine.gc(PruneOptions {
                    dry_run: false,
                    deadline: Some(Instant::now() + GC_BUDGET),
                })
            });
        // No thread (out of resources): no GC this time, the build is done all the same.
        GcTask(handle.ok())
    }
}

impl GcTask {
    /// Waits for the pass; `None` when none ran.
    pub fn wait(mut self) -> Option<Result<PruneReport>> {
        self.join()
    }

    fn join(&mut self) -> Option<Result<PruneReport>> {
        let handle = self.0.take()?;
        Some(match handle.join() {
            Ok(r) => r,
            Err(_) => Err(crate::Error::Usage("the GC thread panicked".into())),
        })
    }
}

impl Drop for GcTask {
    /// A removal interrupted by the process exiting is safe (see prune.rs), but a pass that
    /// ran to its end is tidier: the process waits.
    fn drop(&mut self) {
        let _ = self.join();
    }
}
