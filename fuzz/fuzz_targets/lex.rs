//! The shell-word lexer: the first byte picks the escape character and options, the rest is a
//! word and a small env separated by NUL bytes (see `harness::lex_bytes`).

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/kiln-dockerfile/tests/harness/mod.rs"]
mod harness;

fuzz_target!(|data: &[u8]| {
    harness::lex_bytes(data);
});
