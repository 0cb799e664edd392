//! Arbitrary bytes, read as lossy UTF-8, through the Dockerfile parser; errors are rendered and
//! parsed files walked (see the harness).

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/kiln-dockerfile/tests/harness/mod.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    harness::parse(&String::from_utf8_lossy(data));
});
