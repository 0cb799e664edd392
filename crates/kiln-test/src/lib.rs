//! Support code for kiln's test suites (not published): finding the external tools the real
//! tests run against, and the rule for what happens when one is missing.

mod dockerd;

use std::path::PathBuf;

pub use dockerd::Dockerd;

/// The first `name` on PATH.
pub fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// Whether external tools are required (`KILN_TEST_REQUIRE_EXTERNAL=1`, as in CI).
pub fn externals_required() -> bool {
    std::env::var("KILN_TEST_REQUIRE_EXTERNAL").as_deref() == Ok("1")
}

/// Whether a test needing `what` should skip: prints why and returns true, or panics when
/// externals are required.
pub fn skip_without(what: &str, missing: bool) -> bool {
    if !missing {
        return false;
    }
    if externals_required() {
        panic!("{what} is required (KILN_TEST_REQUIRE_EXTERNAL=1) but not available");
    }
    eprintln!("skipping: {what} is not available");
    true
}
