//! Drives the BuildKit conformance vectors in `tests/conformance/` (see its README): one loop
//! per corpus, printing `passed/total`, failing with every mismatch listed.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_dockerfile::instructions::{self, BFlags, InstructionKind};
use kiln_dockerfile::parser::{self, Node, directives, heredoc, line_parsers};
use kiln_dockerfile::{Command, Healthcheck, ShellLex};
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

fn read(rel: &str) -> String {
    fs::read_to_string(dir().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn cases(rel: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("parse {rel}: {e}"));
    v["cases"].as_array().cloned().unwrap_or_default()
}

/// Counts one corpus and collects its failures.
struct Tally {
    name: &'static str,
    total: usize,
    failures: Vec<String>,
}

impl Tally {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            total: 0,
            failures: Vec::new(),
        }
    }

    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.total += 1;
        if !ok {
            self.failures.push(what());
        }
    }

    fn finish(self) {
        println!(
            "{}: {}/{} passed",
            self.name,
            self.total - self.failures.len(),
            self.total
        );
        assert!(self.total > 0, "{}: no cases found", self.name);
        assert!(
            self.failures.is_empty(),
            "{} failures in {}:\n{}",
            self.failures.len(),
            self.name,
            self.failures.join("\n")
        );
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default()
}

fn sorted_dirs(rel: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(dir().join(rel))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn buildkit_testfiles() {
    let mut t = Tally::new("buildkit-parser/testfiles");
    for case in sorted_dirs("buildkit-parser/testfiles") {
        let src = fs::read_to_string(case.join("Dockerfile")).unwrap();
        let expected = fs::read_to_string(case.join("result")).unwrap();
        let got = parser::parse(&src).map(|r| r.ast.dump() + "\n");
        t.check(got.as_ref().ok() == Some(&expected), || {
            format!("{}: got {got:?}\nwant {expected:?}", case.display())
        });
    }
    assert_eq!(t.total, 33);
    t.finish();
}

#[test]
fn buildkit_testfiles_negative() {
    let mut t = Tally::new("buildkit-parser/testfiles-negative");
    for case in sorted_dirs("buildkit-parser/testfiles-negative") {
        let src = fs::read_to_string(case.join("Dockerfile")).unwrap();
        let got = parser::parse(&src);
        t.check(got.is_err(), || {
            format!(
                "{}: parsed: {:?}",
                case.display(),
                got.map(|r| r.ast.dump())
            )
        });
    }
    assert_eq!(t.total, 4);
    t.finish();
}

fn env_var_test_env() -> Vec<(String, String)> {
    [
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

#[test]
fn shell_env_var_test() {
    let mut t = Tally::new("shell-lexer/envVarTest");
    let env = env_var_test_env();
    let lex = ShellLex::new('\\');
    for line in read("shell-lexer/envVarTest").split('\n') {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.trim().split('|').map(str::trim).collect();
        let [platform, input, expected] = fields[..] else {
            panic!("bad line {line:?}")
        };
        if platform == "W" {
            continue;
        }
        let got = lex.process_word(input, &env);
        let ok = match expected {
            "error" => got.is_err(),
            _ => got.as_deref().ok() == Some(expected),
        };
        t.check(ok, || format!("{input:?}: got {got:?}, want {expected:?}"));
    }
    assert_eq!(t.total, 228);
    t.finish();
}

#[test]
fn shell_words_test() {
    let mut t = Tally::new("shell-lexer/wordsTest");
    let mut env: Vec<(String, String)> = Vec::new();
    let lex = ShellLex::new('\\');
    for line in read("shell-lexer/wordsTest").split('\n') {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(entry) = line.strip_prefix("ENV ") {
            let (k, v) = entry.trim_start_matches(' ').split_once('=').unwrap();
            env.push((k.to_string(), v.to_string()));
            continue;
        }
        let [input, expected] = line.split('|').collect::<Vec<_>>()[..] else {
            panic!("bad line {line:?}")
        };
        let input = input.trim();
        let expected: Vec<&str> = expected.trim_start_matches(' ').split(',').collect();
        let got = lex.process_words(input, &env);
        let ok = match expected[..] {
            ["error"] => got.is_err(),
            _ => got.as_ref().is_ok_and(|w| *w == expected),
        };
        t.check(ok, || format!("{input:?}: got {got:?}, want {expected:?}"));
    }
    assert_eq!(t.total, 24);
    t.finish();
}

fn env_object(v: &Value) -> Vec<(String, String)> {
    v.as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), s(v))).collect())
        .unwrap_or_default()
}

fn env_list(v: &Value) -> Vec<(String, String)> {
    strings(v)
        .into_iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (e, String::new()),
        })
        .collect()
}

#[test]
fn shell_json_vectors() {
    let lex = ShellLex::new('\\');

    let mut t = Tally::new("shell-lexer/process-word-with-matches.json");
    for c in cases("shell-lexer/process-word-with-matches.json") {
        let input = s(&c["input"]);
        let got = lex.process_word_with_matches(&input, &env_object(&c["env"]));
        let ok = if c["error"] == true {
            got.is_err()
        } else {
            got.as_ref().is_ok_and(|r| {
                r.result == s(&c["expected"])
                    && r.matched.iter().cloned().collect::<Vec<_>>() == strings(&c["matched"])
                    && r.unmatched.iter().cloned().collect::<Vec<_>>() == strings(&c["unmatched"])
            })
        };
        t.check(ok, || format!("{input:?}: got {got:?}, case {c}"));
    }
    t.finish();

    let mut t = Tally::new("shell-lexer/process-word.json");
    for c in cases("shell-lexer/process-word.json") {
        let input = s(&c["input"]);
        let got = lex.process_word(&input, &env_list(&c["env"]));
        let ok = match c.get("error_contains") {
            Some(e) => got
                .as_ref()
                .is_err_and(|err| err.to_string().contains(&s(e))),
            None => got.as_deref().ok() == Some(s(&c["expected"]).as_str()),
        };
        t.check(ok, || format!("{input:?}: got {got:?}, case {c}"));
    }
    t.finish();

    let mut t = Tally::new("shell-lexer/env-lookup.json");
    for c in cases("shell-lexer/env-lookup.json") {
        let env = env_list(&c["env"]);
        let got = lex.process_word(&format!("${{{}}}", s(&c["name"])), &env);
        t.check(
            got.as_deref().ok() == Some(s(&c["expected"]).as_str()),
            || format!("got {got:?}, case {c}"),
        );
    }
    t.finish();

    // Only the pattern-validity half applies: kiln matches patterns without regexes, so the
    // conversion is checked through `${V#pattern}` succeeding or failing.
    let mut t = Tally::new("shell-lexer/pattern-helpers.json (shell_pattern_to_regex)");
    for c in cases("shell-lexer/pattern-helpers.json") {
        if c["fn"] != "shell_pattern_to_regex" {
            continue;
        }
        let word = format!("${{V#{}}}", s(&c["pattern"]));
        let got = lex.process_word(&word, &vec![("V".to_string(), "x".to_string())]);
        t.check(got.is_err() == (c["error"] == true), || {
            format!("{word:?}: got {got:?}")
        });
    }
    t.finish();
}

fn heredoc_json(h: &kiln_dockerfile::Heredoc) -> Value {
    serde_json::json!({"name": h.name, "content": h.content, "expand": h.expand, "chomp": h.chomp, "file_descriptor": h.file_descriptor})
}

#[test]
fn parser_heredoc_vectors() {
    let mut t = Tally::new("buildkit-parser/heredocs.json");
    for c in cases("buildkit-parser/heredocs.json") {
        let ast = parser::parse(&s(&c["dockerfile"])).unwrap().ast;
        for child in c["children"].as_array().unwrap() {
            let node = &ast.children[child["index"].as_u64().unwrap() as usize];
            let got: Vec<Value> = node.heredocs.iter().map(heredoc_json).collect();
            let ok = node.original == s(&child["original"])
                && Value::Array(got.clone()) == child["heredocs"];
            t.check(ok, || {
                format!("{:?}: got {got:?}, want {child}", node.original)
            });
        }
    }
    t.finish();

    let mut t = Tally::new("buildkit-parser/heredoc-words.json");
    for c in cases("buildkit-parser/heredoc-words.json") {
        let got = heredoc::parse_heredoc(&s(&c["input"]));
        let ok = match c["expect"].as_str() {
            Some("heredoc") => got
                .as_ref()
                .is_ok_and(|h| h.as_ref().is_some_and(|h| h.name == s(&c["name"]))),
            Some("error") => got.is_err(),
            _ => matches!(got, Ok(None)),
        };
        t.check(ok, || format!("got {got:?}, case {c}"));
    }
    t.finish();

    let mut t = Tally::new("buildkit-parser/heredocs-from-line.json");
    for c in cases("buildkit-parser/heredocs-from-line.json") {
        let got: Vec<String> = heredoc::heredocs_from_line(&s(&c["line"]))
            .unwrap()
            .into_iter()
            .map(|h| h.name)
            .collect();
        let want = strings(c.get("reference_names").unwrap_or(&c["names"]));
        t.check(got == want, || format!("got {got:?}, case {c}"));
    }
    t.finish();

    let mut t = Tally::new("buildkit-parser/heredoc-chomp.json");
    for c in cases("buildkit-parser/heredoc-chomp.json") {
        let got = heredoc::chomp_heredoc_content(&s(&c["input"]));
        t.check(got == s(&c["expected"]), || {
            format!("got {got:?}, case {c}")
        });
    }
    t.finish();
}

#[test]
fn parser_json_vectors() {
    let mut t = Tally::new("buildkit-parser/json-arrays.json");
    for c in cases("buildkit-parser/json-arrays.json") {
        let got = line_parsers::parse_json_array(&s(&c["input"]));
        let ok = match c.get("error") {
            Some(_) => got == Err(true),
            None => got.as_ref().ok() == Some(&strings(&c["expected"])),
        };
        t.check(ok, || format!("got {got:?}, case {c}"));
    }
    t.finish();

    let mut t = Tally::new("buildkit-parser/parse-words.json");
    for c in cases("buildkit-parser/parse-words.json") {
        let got = line_parsers::parse_words(&s(&c["input"]), '\\');
        t.check(got == strings(&c["expected"]), || {
            format!("got {got:?}, case {c}")
        });
    }
    t.finish();

    let mut t = Tally::new("buildkit-parser/name-val.json");
    for c in cases("buildkit-parser/name-val.json") {
        let got = parser::parse(&format!("{} {}", s(&c["instruction"]), s(&c["rest"]))).map(|r| {
            r.ast.children[0]
                .args()
                .map(|a| a.value.clone())
                .collect::<Vec<_>>()
        });
        let ok = match c.get("error") {
            Some(e) => got.as_ref().is_err_and(|err| err.to_string() == s(e)),
            None => got.as_ref().ok() == Some(&strings(&c["expected"])),
        };
        t.check(ok, || format!("got {got:?}, case {c}"));
    }
    t.finish();

    let mut t = Tally::new("buildkit-parser/directives.json");
    for c in cases("buildkit-parser/directives.json") {
        let input = s(&c["input"]);
        let ok = match c["fn"].as_str() {
            Some("parse_all") => {
                let got = directives::parse_all(&input).unwrap();
                let got: Vec<Value> = got
                    .iter()
                    .map(|d| serde_json::json!({"name": d.name, "value": d.value}))
                    .collect();
                Value::Array(got) == c["expected"]
            }
            Some(f) => {
                let got = if f == "detect_syntax" {
                    directives::detect_syntax(&input)
                } else {
                    directives::parse_directive(&s(&c["key"]), &input)
                };
                let field = |name: &str, have: Value| c.get(name).is_none_or(|want| *want == have);
                field("found", got.is_some().into())
                    && field(
                        "value",
                        got.as_ref().map_or("", |m| m.value.as_str()).into(),
                    )
                    && field(
                        "cmdline",
                        got.as_ref().map_or("", |m| m.cmdline.as_str()).into(),
                    )
                    && field("start_line", got.as_ref().map_or(0, |m| m.line).into())
                    && field("end_line", got.as_ref().map_or(0, |m| m.line).into())
            }
            None => false,
        };
        t.check(ok, || format!("case {c}"));
    }
    t.finish();
}

#[test]
fn parser_lines_warnings_and_limits() {
    let mut t = Tally::new("buildkit-parser/line-numbers.json");
    for c in cases("buildkit-parser/line-numbers.json") {
        let ast = parser::parse(&read(&format!(
            "buildkit-parser/{}",
            s(&c["dockerfile_path"])
        )))
        .unwrap()
        .ast;
        let lines =
            |n: &Node| serde_json::json!({"start_line": n.start_line, "end_line": n.end_line});
        let children: Vec<Value> = ast.children.iter().map(lines).collect();
        let ok = lines(&ast) == c["root"] && Value::Array(children.clone()) == c["children"];
        t.check(ok, || {
            format!("got root {} children {children:?}", lines(&ast))
        });
    }
    t.finish();

    let mut t = Tally::new("buildkit-parser/warnings.json");
    for c in cases("buildkit-parser/warnings.json") {
        let warnings = parser::parse(&s(&c["dockerfile"])).unwrap().warnings;
        let mut ok = warnings.len() as u64 == c["warning_count"].as_u64().unwrap();
        for (w, want) in warnings.iter().zip(c["warnings"].as_array().unwrap()) {
            ok &= strings(&want["short_contains"])
                .iter()
                .all(|p| w.message.contains(p));
            ok &= strings(&want["detail_contains"])
                .iter()
                .all(|p| w.detail.contains(p));
        }
        t.check(ok, || format!("got {warnings:?}"));
    }
    t.finish();

    let mut t = Tally::new("buildkit-parser/scanner-errors.json");
    for c in cases("buildkit-parser/scanner-errors.json") {
        let input = format!(
            "{}{}{}",
            s(&c["prefix"]),
            s(&c["repeat_char"]).repeat(c["repeat_count"].as_u64().unwrap() as usize),
            s(&c["suffix"])
        );
        let got = parser::parse(&input).map(|r| r.ast.dump());
        t.check(
            got.as_ref().is_err_and(|e| e.to_string() == s(&c["error"])),
            || format!("got {got:?}"),
        );
    }
    t.finish();
}

/// The first instruction of `dockerfile`, converted.
fn first_instruction(dockerfile: &str) -> Result<kiln_dockerfile::Instruction, String> {
    let ast = parser::parse(dockerfile)
        .map_err(|e| format!("parse failed: {e}"))?
        .ast;
    instructions::parse_instruction(&ast.children[0]).map_err(|e| e.to_string())
}

#[test]
fn instruction_vectors() {
    let mut t = Tally::new("instructions/errors.json");
    for c in cases("instructions/errors.json") {
        let got = match c.get("dockerfile") {
            Some(d) => first_instruction(&s(d)),
            None => {
                let node = Node::with_args(&s(&c["node"]["value"]), strings(&c["node"]["args"]));
                instructions::parse_instruction(&node).map_err(|e| e.to_string())
            }
        };
        let want = s(&c["error"]);
        let ok = match (&got, c["compare"].as_str()) {
            (Err(e), Some("exact")) => *e == want,
            (Err(e), _) => e.contains(&want) && !e.starts_with("parse failed"),
            (Ok(_), _) => false,
        };
        t.check(ok, || format!("got {got:?}, want {want:?}"));
    }
    t.finish();

    let mut t = Tally::new("instructions/copy-heredoc.json");
    for c in cases("instructions/copy-heredoc.json") {
        let got = first_instruction(&s(&c["dockerfile"]));
        let ok = match &got {
            Ok(kiln_dockerfile::Instruction {
                kind: InstructionKind::Copy(copy),
                ..
            }) => {
                let contents: Vec<Value> = copy
                    .heredocs
                    .iter()
                    .map(|h| serde_json::json!({"path": h.name, "data": h.content, "expand": h.expand}))
                    .collect();
                copy.dest == s(&c["dest_path"])
                    && copy.sources == strings(&c["source_paths"])
                    && Value::Array(contents) == c["source_contents"]
            }
            _ => false,
        };
        t.check(ok, || format!("got {got:?}, case {c}"));
    }
    t.finish();

    let mut t = Tally::new("instructions/run-heredoc.json");
    for c in cases("instructions/run-heredoc.json") {
        let got = first_instruction(&s(&c["dockerfile"]));
        let ok = match &got {
            Ok(kiln_dockerfile::Instruction {
                kind:
                    InstructionKind::Run {
                        command, heredocs, ..
                    },
                ..
            }) => {
                let (prepend_shell, cmd_line) = match command {
                    Command::Shell(s) => (true, vec![s.clone()]),
                    Command::Exec(v) => (false, v.clone()),
                };
                let files: Vec<Value> = heredocs
                    .iter()
                    .map(|h| serde_json::json!({"name": h.name, "data": h.content, "chomp": h.chomp}))
                    .collect();
                Value::Bool(prepend_shell) == c["prepend_shell"]
                    && cmd_line == strings(&c["cmd_line"])
                    && Value::Array(files) == c["files"]
            }
            _ => false,
        };
        t.check(ok, || format!("got {got:?}, case {c}"));
    }
    t.finish();

    let mut t = Tally::new("instructions/run-device.json");
    for c in cases("instructions/run-device.json") {
        let got = instructions::parse_device(&s(&c["input"]));
        let ok = match c.get("error") {
            Some(e) => got.as_ref().is_err_and(|err| *err == s(e)),
            None => got
                .as_ref()
                .is_ok_and(|d| d.name == s(&c["name"]) && Value::Bool(d.required) == c["required"]),
        };
        t.check(ok, || format!("got {got:?}, case {c}"));
    }
    t.finish();

    let mut t = Tally::new("instructions/builder-flags.json");
    for c in cases("instructions/builder-flags.json") {
        let mut flags = BFlags::new(strings(&c["args"]));
        let defs = c["defs"].as_array().unwrap();
        for d in defs {
            match d["type"].as_str() {
                Some("bool") => flags.add_bool(&s(&d["name"]), d["default"] == true),
                _ => flags.add_string(&s(&d["name"]), &s(&d["default"])),
            }
        }
        let parsed = flags.parse();
        let mut ok = parsed.is_ok() == (c["ok"] == true);
        if parsed.is_ok() {
            for d in defs {
                let name = s(&d["name"]);
                let value: Value = if d["type"] == "bool" {
                    flags.bool(&name).into()
                } else {
                    flags.string(&name).unwrap_or("").into()
                };
                ok &= c
                    .get("values")
                    .and_then(|v| v.get(&name))
                    .is_none_or(|want| *want == value);
                ok &= c
                    .get("used")
                    .and_then(|v| v.get(&name))
                    .is_none_or(|want| *want == flags.is_used(&name));
            }
            ok &= c
                .get("used_names")
                .is_none_or(|want| strings(want) == flags.used());
        }
        t.check(ok, || format!("got {parsed:?}, case {c}"));
    }
    t.finish();

    let mut t = Tally::new("instructions/healthcheck.json");
    for c in cases("instructions/healthcheck.json") {
        let ok = match c["fn"].as_str() {
            Some("healthcheck_cmd") => {
                let node = Node::with_args(&s(&c["node"]["value"]), strings(&c["node"]["args"]));
                match instructions::parse_instruction(&node).map(|i| i.kind) {
                    Ok(InstructionKind::Healthcheck(Healthcheck::Cmd { command, .. })) => {
                        let test = match command {
                            Command::Shell(s) => vec!["CMD-SHELL".to_string(), s],
                            Command::Exec(v) => [vec!["CMD".to_string()], v].concat(),
                        };
                        test == strings(&c["test"])
                    }
                    _ => false,
                }
            }
            _ => {
                let got = instructions::validate_interval("interval", &s(&c["value"]));
                match c.get("error_contains") {
                    Some(e) => got.is_err_and(|err| err.contains(&s(e))),
                    None => got.is_ok(),
                }
            }
        };
        t.check(ok, || format!("case {c}"));
    }
    t.finish();

    let mut t = Tally::new("instructions/json-args.json");
    for c in cases("instructions/json-args.json") {
        let mut node = Node::with_args("cmd", strings(&c["args"]));
        node.json = c["json"] == true;
        let got = instructions::parse_instruction(&node).map(|i| i.kind);
        let expected = strings(&c["expected"]);
        let want = if node.json {
            Command::Exec(expected)
        } else {
            Command::Shell(expected.join(" "))
        };
        let ok = matches!(&got, Ok(InstructionKind::Cmd(cmd)) if *cmd == want);
        t.check(ok, || format!("got {got:?}, case {c}"));
    }
    t.finish();

    let mut t = Tally::new("instructions/doc-comments.json");
    for c in cases("instructions/doc-comments.json") {
        let df = kiln_dockerfile::parse(&s(&c["dockerfile"])).unwrap();
        let ok = match c["fn"].as_str() {
            Some("flags_used") => strings(&c["flags_used"]) == df.instructions[0].flags_used(),
            _ => {
                let arg_docs = |i: &kiln_dockerfile::Instruction| -> Value {
                    let InstructionKind::Arg(args) = &i.kind else {
                        return Value::Null;
                    };
                    args.iter()
                        .map(|(k, _)| {
                            let doc = instructions::doc_comment(&i.comments, k).unwrap_or_default();
                            serde_json::json!({"key": k, "doc": doc})
                        })
                        .collect()
                };
                let from = df
                    .instructions
                    .iter()
                    .position(|i| matches!(i.kind, InstructionKind::From { .. }))
                    .unwrap();
                let InstructionKind::From { name, .. } = &df.instructions[from].kind else {
                    unreachable!()
                };
                let stage_doc = instructions::doc_comment(
                    &df.instructions[from].comments,
                    name.as_deref().unwrap_or(""),
                );
                let meta: Vec<Value> = df.instructions[..from].iter().map(arg_docs).collect();
                let stage: Vec<Value> = df.instructions[from + 1..].iter().map(arg_docs).collect();
                stage_doc.unwrap_or_default() == s(&c["stage_doc"])
                    && Value::Array(meta) == c["meta_args"]
                    && Value::Array(stage) == c["stage_args"]
            }
        };
        t.check(ok, || format!("case {c}"));
    }
    t.finish();
}
