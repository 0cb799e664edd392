//! Harness bodies shared by the stable proptest cases (`tests/no_panic.rs`) and the cargo-fuzz
//! targets (`fuzz/fuzz_targets/*.rs` include this file by path), so both exercise the same
//! calls. Any panic here is a bug in the crate; the asserts check that the lexer's entry points
//! agree with each other.

#![allow(dead_code)]

use kiln_dockerfile::instructions::{Instruction, InstructionKind, doc_comment, parse_device};
use kiln_dockerfile::shell::ProcessWordResult;
use kiln_dockerfile::{Command, Healthcheck, ShellLex, render_snippet};

/// Parses `source` as a Dockerfile; renders the error, or walks every instruction the way the
/// frontend would (expanding words with the variables declared so far).
pub fn parse(source: &str) {
    match kiln_dockerfile::parse(source) {
        Err(e) => {
            let _ = e.render("Dockerfile", source);
            let _ = e.message();
        }
        Ok(df) => {
            let lex = ShellLex::new(df.directives.escape);
            let mut env: Vec<(String, String)> = Vec::new();
            for inst in &df.instructions {
                walk(inst, source, lex, &mut env);
            }
            for w in &df.warnings {
                let _ = render_snippet("Dockerfile", source, w.location, &w.message);
            }
        }
    }
    if let Ok(r) = kiln_dockerfile::parser::parse(source) {
        let _ = r.ast.dump();
        let _ = format!("{:?}", r.ast);
    }
}

fn walk(inst: &Instruction, source: &str, lex: ShellLex, env: &mut Vec<(String, String)>) {
    let _ = render_snippet("Dockerfile", source, inst.location, &inst.original);
    let _ = inst.flags_used();
    let _ = format!("{inst:?}");
    let expand = |word: &str, env: &Vec<(String, String)>| {
        let _ = lex.process_word_with_matches(word, env);
    };
    for flag in &inst.flags {
        expand(flag, env);
    }
    match &inst.kind {
        InstructionKind::From {
            image,
            name,
            platform,
        } => {
            expand(image, env);
            if let Some(p) = platform {
                expand(p, env);
            }
            let _ = name;
        }
        InstructionKind::Run {
            command,
            heredocs,
            device,
            ..
        } => {
            command_words(command, lex, env);
            for d in device {
                let _ = parse_device(d);
            }
            for h in heredocs.iter().filter(|h| h.expand) {
                expand(&h.content, env);
            }
        }
        InstructionKind::Cmd(c) | InstructionKind::Entrypoint(c) => command_words(c, lex, env),
        InstructionKind::Healthcheck(Healthcheck::Cmd { command, .. }) => {
            command_words(command, lex, env);
        }
        InstructionKind::Copy(args) | InstructionKind::Add(args) => {
            for s in &args.sources {
                let _ = lex.process_words(s, env);
            }
            expand(&args.dest, env);
            for h in args.heredocs.iter().filter(|h| h.expand) {
                expand(&h.content, env);
            }
        }
        InstructionKind::Env(pairs) | InstructionKind::Label(pairs) => {
            for (k, v) in pairs {
                expand(k, env);
                if let Ok(v) = lex.process_word(v, env) {
                    env.push((k.clone(), v));
                }
            }
        }
        InstructionKind::Arg(pairs) => {
            for (k, v) in pairs {
                let _ = doc_comment(&inst.comments, k);
                let v = v.as_deref().map(|v| lex.process_word(v, env));
                if let Some(Ok(v)) = v {
                    env.push((k.clone(), v));
                }
            }
        }
        InstructionKind::Workdir(w) | InstructionKind::User(w) | InstructionKind::StopSignal(w) => {
            expand(w, env);
        }
        InstructionKind::Expose(words) | InstructionKind::Volume(words) => {
            for w in words {
                let _ = lex.process_words(w, env);
            }
        }
        InstructionKind::Onbuild(inner) => walk(inner, source, lex, env),
        InstructionKind::Shell(_)
        | InstructionKind::Maintainer(_)
        | InstructionKind::Healthcheck(Healthcheck::None) => {}
    }
}

fn command_words(command: &Command, lex: ShellLex, env: &[(String, String)]) {
    match command {
        Command::Shell(s) => {
            let _ = lex.process_word(s, &env);
        }
        Command::Exec(words) => {
            for w in words {
                let _ = lex.process_word(w, &env);
            }
        }
    }
}

/// Runs every lexer entry point on `word` and checks that they agree.
pub fn lex(lex: ShellLex, word: &str, env: &[(String, String)]) {
    let full = lex.process_word_with_matches(word, &env);
    let one = lex.process_word(word, &env);
    let many = lex.process_words(word, &env);
    match &full {
        Ok(ProcessWordResult {
            result,
            words,
            matched,
            unmatched,
        }) => {
            assert_eq!(one.as_ref().ok(), Some(result), "process_word disagrees");
            assert_eq!(many.as_ref().ok(), Some(words), "process_words disagrees");
            assert!(
                matched.is_disjoint(unmatched),
                "a variable is both matched and unmatched"
            );
        }
        Err(e) => {
            let _ = e.render("Dockerfile", word);
            assert!(
                one.is_err() && many.is_err(),
                "only some entry points failed"
            );
        }
    }
}

/// Splits fuzzer bytes into lexer options, a word and a small env, then runs [`lex`].
///
/// Layout: byte 0 picks the escape character and the three option flags; the rest is read as
/// lossy UTF-8 and split at NUL: the first piece is the word, each further piece (at most 8) an
/// env entry `NAME=VALUE` (no `=` means set to "").
pub fn lex_bytes(data: &[u8]) {
    let Some((&opts, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut pieces = text.split('\0');
    let word = pieces.next().unwrap_or_default();
    let env: Vec<(String, String)> = pieces
        .take(8)
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    let lexer = ShellLex {
        raw_quotes: opts & 2 != 0,
        raw_escapes: opts & 4 != 0,
        skip_unset_env: opts & 8 != 0,
        ..ShellLex::new(if opts & 1 == 0 { '\\' } else { '`' })
    };
    lex(lexer, word, &env);
}
