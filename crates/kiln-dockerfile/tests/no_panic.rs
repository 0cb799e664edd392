//! Arbitrary input must never panic the parser or the lexer. The harness bodies are the ones
//! the cargo-fuzz targets in `fuzz/` run; these cases run them on stable in CI.

mod harness;

use kiln_dockerfile::ShellLex;
use proptest::prelude::*;

/// Strings built from the characters that matter to the grammar, so random cases reach deep
/// into quoting, continuations, heredocs, flags and substitutions.
fn dockerfile_like() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "FROM ",
        "RUN ",
        "COPY ",
        "ADD ",
        "ENV ",
        "ARG ",
        "LABEL ",
        "ONBUILD ",
        "HEALTHCHECK ",
        "CMD ",
        "SHELL ",
        "FROM a AS b",
        "--mount=x ",
        "--from=",
        "-- ",
        "<<EOF",
        "<<-'E'",
        "EOF",
        "\n",
        "\r\n",
        "\\\n",
        "`\n",
        "# escape=`\n",
        "# syntax=x\n",
        "#",
        " ",
        "\t",
        "\"",
        "'",
        "\\",
        "`",
        "[",
        "]",
        "[\"a\", \"b\"]",
        ",",
        "=",
        "$",
        "${",
        "}",
        ":-",
        ":+",
        "?",
        "#",
        "%%",
        "//",
        "*",
        "a",
        "\u{feff}",
        "é",
        "\u{a0}",
        "\u{85}",
        "1",
    ]);
    prop::collection::vec(atoms, 0..60).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics(src in dockerfile_like()) {
        harness::parse(&src);
    }

    #[test]
    fn parse_arbitrary_unicode_never_panics(src in "\\PC{0,200}") {
        harness::parse(&src);
    }

    #[test]
    fn parse_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        harness::parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn lexer_never_panics(
        word in dockerfile_like(),
        escape in prop::sample::select(vec!['\\', '`']),
        opts in 0u8..8,
    ) {
        let env = vec![("a".to_string(), "x y".to_string()), ("E".to_string(), String::new())];
        let lex = ShellLex {
            raw_quotes: opts & 1 != 0,
            raw_escapes: opts & 2 != 0,
            skip_unset_env: opts & 4 != 0,
            ..ShellLex::new(escape)
        };
        harness::lex(lex, &word, &env);
    }

    #[test]
    fn lexer_fuzz_layout_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        harness::lex_bytes(&bytes);
    }
}
