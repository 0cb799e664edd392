//! Arbitrary input must never panic the parser or the lexer.

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
        if let Err(e) = kiln_dockerfile::parse(&src) {
            let _ = e.render("Dockerfile", &src);
        }
        if let Ok(r) = kiln_dockerfile::parser::parse(&src) {
            let _ = r.ast.dump();
        }
    }

    #[test]
    fn parse_arbitrary_unicode_never_panics(src in "\\PC{0,200}") {
        let _ = kiln_dockerfile::parse(&src);
    }

    #[test]
    fn lexer_never_panics(word in dockerfile_like(), escape in prop::sample::select(vec!['\\', '`'])) {
        let env = vec![("a".to_string(), "x y".to_string()), ("E".to_string(), String::new())];
        for raw in [false, true] {
            let lex = ShellLex { raw_quotes: raw, raw_escapes: raw, skip_unset_env: raw, ..ShellLex::new(escape) };
            let _ = lex.process_word_with_matches(&word, &env);
        }
    }
}
