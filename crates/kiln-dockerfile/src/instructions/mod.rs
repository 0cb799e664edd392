//! The typed layer: AST nodes to [`Instruction`]s, checking arity and flags like BuildKit's
//! `instructions` package. Values stay unexpanded.

mod device;
mod duration;
pub mod flags;

pub use device::{Device, parse_device};
pub use duration::{parse_go_duration, validate_interval};
pub use flags::{BFlags, FlagKind};

use crate::error::{Error, Location, Result};
use crate::parser::Node;
use crate::parser::heredoc::{Heredoc, chomp_heredoc_content, parse_heredoc};
use crate::quote::go_quote;

/// One instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    pub location: Location,
    /// The keyword as written (`run`, `RUN`, `Run`).
    pub keyword: String,
    /// The logical line: physical lines joined, continuations and comments removed (BuildKit's
    /// `Original`). Heredoc bodies are not included.
    pub original: String,
    /// The raw flag words, e.g. `--mount=type=cache,target=/x`.
    pub flags: Vec<String>,
    /// Comment lines directly above the instruction, without `#` (doc comments).
    pub comments: Vec<String>,
    pub kind: InstructionKind,
}

impl Instruction {
    /// The names of the flags given (`mount` for `--mount=...`), sorted and deduplicated.
    pub fn flags_used(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .flags
            .iter()
            .filter_map(|f| f.strip_prefix("--"))
            .map(|f| f.split_once('=').map_or(f, |(n, _)| n))
            .filter(|n| !n.is_empty())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// The doc comment for `name` among an instruction's comment lines: the first line that starts
/// with `name` and a space, without that prefix (BuildKit's `getComment`).
pub fn doc_comment(comments: &[String], name: &str) -> Option<String> {
    if name.is_empty() {
        return None;
    }
    let prefix = format!("{name} ");
    comments
        .iter()
        .find_map(|c| c.strip_prefix(&prefix))
        .map(str::to_string)
}

/// A command line: shell form runs through the shell, exec form does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Shell(String),
    Exec(Vec<String>),
}

/// HEALTHCHECK settings; durations and retries are kept as written (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    None,
    Cmd {
        command: Command,
        interval: Option<String>,
        timeout: Option<String>,
        start_period: Option<String>,
        start_interval: Option<String>,
        retries: Option<String>,
    },
}

/// Arguments of COPY and ADD.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CopyArgs {
    /// Sources that are not heredocs.
    pub sources: Vec<String>,
    pub dest: String,
    /// Inline sources (`COPY <<EOF /dest`): `content` has tabs already stripped for `<<-`.
    pub heredocs: Vec<Heredoc>,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    pub exclude: Vec<String>,
    pub checksum: Option<String>,
    /// `--keep-git-dir` as `"true"`/`"false"` when given.
    pub keep_git_dir: Option<String>,
    /// `--unpack` as `"true"`/`"false"` when given.
    pub unpack: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstructionKind {
    /// `name` is the stage name, lower-cased as BuildKit does.
    From {
        image: String,
        name: Option<String>,
        platform: Option<String>,
    },
    Run {
        command: Command,
        /// Inline files; `content` is raw, `chomp` says whether to strip leading tabs.
        heredocs: Vec<Heredoc>,
        /// Raw `--mount` values.
        mounts: Vec<String>,
        network: Option<String>,
        security: Option<String>,
        /// Raw `--device` values (validated with [`parse_device`]).
        device: Vec<String>,
    },
    Cmd(Command),
    Entrypoint(Command),
    Shell(Vec<String>),
    Copy(CopyArgs),
    Add(CopyArgs),
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    Arg(Vec<(String, Option<String>)>),
    Workdir(String),
    User(String),
    Expose(Vec<String>),
    Volume(Vec<String>),
    StopSignal(String),
    Maintainer(String),
    Healthcheck(Healthcheck),
    Onbuild(Box<Instruction>),
}

/// Instruction keywords, for near-miss suggestions.
const INSTRUCTIONS: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Converts one instruction node of the AST.
pub fn parse_instruction(node: &Node) -> Result<Instruction> {
    let location = node.location();
    convert(node, &node.heredocs, location).map_err(|m| Error::instruction(location, m))
}

type Step<T> = std::result::Result<T, String>;

/// The flattened arguments, as BuildKit's `nodeArgs`.
fn node_args(node: &Node) -> Vec<String> {
    let mut out = Vec::new();
    for arg in node.args() {
        match arg.children.first() {
            None => out.push(arg.value.clone()),
            Some(child) => {
                out.push(child.value.clone());
                out.push(child.dump());
            }
        }
    }
    out
}

fn exactly_one(args: &[String], cmd: &str) -> Step<String> {
    match args {
        [one] => Ok(one.clone()),
        _ => Err(format!("{cmd} requires exactly one argument")),
    }
}

fn at_least_one(args: &[String], cmd: &str) -> Step<()> {
    if args.is_empty() {
        return Err(format!("{cmd} requires at least one argument"));
    }
    Ok(())
}

fn parse_flags(node: &Node, declare: impl FnOnce(&mut BFlags)) -> Step<BFlags> {
    let mut flags = BFlags::new(node.flags.clone());
    declare(&mut flags);
    flags.parse()?;
    Ok(flags)
}

fn no_flags(node: &Node) -> Step<()> {
    parse_flags(node, |_| {}).map(drop)
}

fn command(args: Vec<String>, json: bool) -> Command {
    if json {
        Command::Exec(args)
    } else {
        Command::Shell(args.join(" "))
    }
}

fn key_values(args: &[String], cmd: &str) -> Step<Vec<(String, String)>> {
    at_least_one(args, cmd)?;
    if !args.len().is_multiple_of(3) {
        return Err(format!("Bad input to {cmd}, too many arguments"));
    }
    args.chunks(3)
        .map(|kv| {
            if kv[0].is_empty() {
                return Err(format!("{cmd} names can not be blank"));
            }
            Ok((kv[0].clone(), kv[1].clone()))
        })
        .collect()
}

fn convert(node: &Node, heredocs: &[Heredoc], location: Location) -> Step<Instruction> {
    let args = node_args(node);
    let keyword = node.value.to_lowercase();
    let kind = match keyword.as_str() {
        "env" => {
            no_flags(node)?;
            InstructionKind::Env(key_values(&args, "ENV")?)
        }
        "label" => {
            no_flags(node)?;
            InstructionKind::Label(key_values(&args, "LABEL")?)
        }
        "maintainer" => {
            let v = exactly_one(&args, "MAINTAINER")?;
            no_flags(node)?;
            InstructionKind::Maintainer(v)
        }
        "workdir" => {
            let v = exactly_one(&args, "WORKDIR")?;
            no_flags(node)?;
            InstructionKind::Workdir(v)
        }
        "user" => {
            let v = exactly_one(&args, "USER")?;
            no_flags(node)?;
            InstructionKind::User(v)
        }
        "stopsignal" => {
            let v = exactly_one(&args, "STOPSIGNAL")?;
            no_flags(node)?;
            InstructionKind::StopSignal(v)
        }
        "from" => convert_from(node, &args)?,
        "add" | "copy" => convert_copy(node, args, heredocs, keyword == "add")?,
        "run" => convert_run(node, args, heredocs)?,
        "cmd" => {
            no_flags(node)?;
            InstructionKind::Cmd(command(args, node.json))
        }
        "entrypoint" => {
            no_flags(node)?;
            InstructionKind::Entrypoint(command(args, node.json))
        }
        "shell" => {
            no_flags(node)?;
            if args.is_empty() {
                return Err("SHELL requires at least one argument".to_string());
            }
            if !node.json {
                return Err("SHELL requires the arguments to be in JSON form".to_string());
            }
            InstructionKind::Shell(args)
        }
        "healthcheck" => convert_healthcheck(node, args)?,
        "expose" => {
            at_least_one(&args, "EXPOSE")?;
            no_flags(node)?;
            InstructionKind::Expose(args)
        }
        "volume" => {
            at_least_one(&args, "VOLUME")?;
            no_flags(node)?;
            let volumes = args
                .iter()
                .map(|v| v.trim().to_string())
                .collect::<Vec<_>>();
            if volumes.iter().any(String::is_empty) {
                return Err("VOLUME specified can not be an empty string".to_string());
            }
            InstructionKind::Volume(volumes)
        }
        "arg" => {
            at_least_one(&args, "ARG")?;
            no_flags(node)?;
            let pairs = args
                .iter()
                .map(|arg| match arg.split_once('=') {
                    Some(("", _)) => Err("ARG names can not be blank".to_string()),
                    Some((k, v)) => Ok((k.to_string(), Some(v.to_string()))),
                    None => Ok((arg.clone(), None)),
                })
                .collect::<Step<Vec<_>>>()?;
            InstructionKind::Arg(pairs)
        }
        "onbuild" => convert_onbuild(node, &args, heredocs, location)?,
        _ => {
            let mut msg = format!("unknown instruction: {}", node.value);
            if let Some(s) = crate::suggest::closest(&node.value, &INSTRUCTIONS, false) {
                msg.push_str(&format!(" (did you mean {s}?)"));
            }
            return Err(msg);
        }
    };
    Ok(Instruction {
        location,
        keyword: node.value.clone(),
        original: node.original.clone(),
        flags: node.flags.clone(),
        comments: node.prev_comment.clone(),
        kind,
    })
}

fn convert_from(node: &Node, args: &[String]) -> Step<InstructionKind> {
    let name = match args {
        [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
            let lower = name.to_lowercase();
            if !is_valid_stage_name(&lower) {
                return Err(format!(
                    "invalid name for build stage: {}, name can't start with a number or contain symbols",
                    go_quote(name)
                ));
            }
            Some(lower)
        }
        [_] => None,
        _ => return Err("FROM requires either one or three arguments".to_string()),
    };
    let flags = parse_flags(node, |f| f.add_string("platform", ""))?;
    Ok(InstructionKind::From {
        image: args[0].clone(),
        name,
        platform: flags.given_string("platform"),
    })
}

/// `^[a-z][a-z0-9-_.]*$`
fn is_valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

fn convert_copy(
    node: &Node,
    mut args: Vec<String>,
    heredocs: &[Heredoc],
    add: bool,
) -> Step<InstructionKind> {
    let cmd = if add { "ADD" } else { "COPY" };
    if args.len() < 2 {
        return Err(format!(
            "{cmd} requires at least two arguments, but only one was provided. Destination could not be determined"
        ));
    }
    let flags = parse_flags(node, |f| {
        f.add_strings("exclude");
        f.add_string("chown", "");
        f.add_string("chmod", "");
        f.add_bool("link", false);
        if add {
            f.add_bool("keep-git-dir", false);
            f.add_string("checksum", "");
            f.add_bool("unpack", false);
        } else {
            f.add_bool("parents", false);
            f.add_string("from", "");
        }
    })?;
    let dest = args.pop().unwrap_or_default();
    let mut copy = CopyArgs {
        from: flags.given_string("from"),
        chown: flags.given_string("chown"),
        chmod: flags.given_string("chmod"),
        link: flags.bool("link"),
        parents: flags.bool("parents"),
        exclude: flags.strings("exclude").to_vec(),
        checksum: flags.given_string("checksum"),
        keep_git_dir: flags.given_string("keep-git-dir"),
        unpack: flags.given_string("unpack"),
        ..CopyArgs::default()
    };
    // Heredoc sources only exist in shell form; exec-form words are taken literally.
    if !node.json && matches!(parse_heredoc(&dest), Ok(Some(_))) {
        return Err(format!("{cmd} cannot accept a heredoc as a destination"));
    }
    copy.dest = dest;
    for src in args {
        match parse_heredoc(&src) {
            Ok(Some(mut doc)) if !node.json => {
                let content = heredocs
                    .iter()
                    .rev()
                    .find(|h| h.name == doc.name)
                    .map(|h| h.content.as_str())
                    .unwrap_or("");
                doc.content = if doc.chomp {
                    chomp_heredoc_content(content)
                } else {
                    content.to_string()
                };
                copy.heredocs.push(doc);
            }
            _ => copy.sources.push(src),
        }
    }
    Ok(if add {
        InstructionKind::Add(copy)
    } else {
        InstructionKind::Copy(copy)
    })
}

fn convert_run(node: &Node, args: Vec<String>, heredocs: &[Heredoc]) -> Step<InstructionKind> {
    let flags = parse_flags(node, |f| {
        f.add_strings("mount");
        f.add_string("network", "default");
        f.add_string("security", "sandbox");
        f.add_strings("device");
    })?;
    let network = flags.given_string("network");
    if let Some(n) = network
        .as_deref()
        .filter(|n| !matches!(*n, "default" | "none" | "host"))
    {
        return Err(format!("invalid network mode {}", go_quote(n)));
    }
    let security = flags.given_string("security");
    if let Some(s) = security
        .as_deref()
        .filter(|s| !matches!(*s, "sandbox" | "insecure"))
    {
        return Err(format!("security {} is not valid", go_quote(s)));
    }
    let device = flags.strings("device").to_vec();
    for d in &device {
        parse_device(d)?;
    }
    Ok(InstructionKind::Run {
        command: command(args, node.json),
        heredocs: heredocs.to_vec(),
        mounts: flags.strings("mount").to_vec(),
        network,
        security,
        device,
    })
}

fn convert_healthcheck(node: &Node, args: Vec<String>) -> Step<InstructionKind> {
    let Some((kind, rest)) = args.split_first() else {
        return Err("HEALTHCHECK requires at least one argument".to_string());
    };
    let kind = kind.to_uppercase();
    if kind == "NONE" {
        if !rest.is_empty() {
            return Err("HEALTHCHECK NONE takes no arguments".to_string());
        }
        no_flags(node)?;
        return Ok(InstructionKind::Healthcheck(Healthcheck::None));
    }
    let durations = ["interval", "timeout", "start-period", "start-interval"];
    let flags = parse_flags(node, |f| {
        durations.iter().for_each(|d| f.add_string(d, ""));
        f.add_string("retries", "");
    })?;
    if kind != "CMD" {
        return Err(format!(
            "Unknown type {} in HEALTHCHECK (try CMD)",
            go_quote(&kind)
        ));
    }
    if rest.is_empty() {
        return Err("Missing command after HEALTHCHECK CMD".to_string());
    }
    for d in durations {
        validate_interval(d, flags.string(d).unwrap_or_default())?;
    }
    let retries = flags.given_string("retries").filter(|r| !r.is_empty());
    if let Some(r) = &retries {
        let n: i32 = r
            .parse()
            .map_err(|_| format!("strconv.ParseInt: parsing {}: invalid syntax", go_quote(r)))?;
        if n < 0 {
            return Err(format!("--retries cannot be negative ({n})"));
        }
    }
    let given = |name| flags.given_string(name).filter(|v| !v.is_empty());
    Ok(InstructionKind::Healthcheck(Healthcheck::Cmd {
        command: command(rest.to_vec(), node.json),
        interval: given("interval"),
        timeout: given("timeout"),
        start_period: given("start-period"),
        start_interval: given("start-interval"),
        retries,
    }))
}

fn convert_onbuild(
    node: &Node,
    args: &[String],
    heredocs: &[Heredoc],
    location: Location,
) -> Step<InstructionKind> {
    at_least_one(args, "ONBUILD")?;
    no_flags(node)?;
    let trigger = args[0].trim().to_uppercase();
    match trigger.as_str() {
        "ONBUILD" => return Err("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".to_string()),
        "MAINTAINER" | "FROM" => {
            return Err(format!("{trigger} isn't allowed as an ONBUILD trigger"));
        }
        _ => {}
    }
    let Some(inner) = node.args().find_map(|a| a.children.first()) else {
        return Err("ONBUILD requires at least one argument".to_string());
    };
    let inner = convert(inner, heredocs, location)?;
    Ok(InstructionKind::Onbuild(Box::new(inner)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(src: &str) -> Step<InstructionKind> {
        let ast = crate::parser::parse(src).map_err(|e| e.to_string())?.ast;
        parse_instruction(&ast.children[0])
            .map(|i| i.kind)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn from_forms() {
        assert_eq!(
            one("FROM --platform=$P img AS Build").unwrap(),
            InstructionKind::From {
                image: "img".into(),
                name: Some("build".into()),
                platform: Some("$P".into())
            }
        );
        assert!(one("FROM a b").unwrap_err().contains("one or three"));
        assert!(
            one("FROM a AS 1x")
                .unwrap_err()
                .starts_with("invalid name for build stage: \"1x\"")
        );
    }

    #[test]
    fn copy_flags() {
        let InstructionKind::Copy(c) = one("COPY --from=b --link --exclude=*.md a b /d/").unwrap()
        else {
            panic!("not a COPY")
        };
        assert_eq!(
            (c.from.as_deref(), c.link, c.exclude.len()),
            (Some("b"), true, 1)
        );
        assert_eq!(
            (c.sources, c.dest),
            (vec!["a".to_string(), "b".into()], "/d/".to_string())
        );
        assert!(
            one("ADD --from=x a b")
                .unwrap_err()
                .contains("unknown flag: --from")
        );
        assert!(
            one("COPY --checksum=x a b")
                .unwrap_err()
                .contains("unknown flag: --checksum")
        );
    }

    #[test]
    fn run_flags() {
        assert!(
            one("RUN --network=bridge x")
                .unwrap_err()
                .contains("invalid network mode \"bridge\"")
        );
        assert!(
            one("RUN --security=x y")
                .unwrap_err()
                .contains("security \"x\" is not valid")
        );
        let InstructionKind::Run {
            mounts, network, ..
        } = one("RUN --mount=type=tmpfs,target=/t --network=none x").unwrap()
        else {
            panic!("not a RUN")
        };
        assert_eq!(
            (mounts, network),
            (
                vec!["type=tmpfs,target=/t".to_string()],
                Some("none".to_string())
            )
        );
    }

    #[test]
    fn healthcheck() {
        assert_eq!(
            one("HEALTHCHECK NONE").unwrap(),
            InstructionKind::Healthcheck(Healthcheck::None)
        );
        assert!(
            one("HEALTHCHECK CONNECT x")
                .unwrap_err()
                .contains("Unknown type \"CONNECT\"")
        );
        assert!(
            one("HEALTHCHECK --retries=-1 CMD x")
                .unwrap_err()
                .contains("cannot be negative")
        );
        assert!(
            one("HEALTHCHECK --interval=1ns CMD x")
                .unwrap_err()
                .contains("less than 1ms")
        );
        assert!(
            one("HEALTHCHECK CMD")
                .unwrap_err()
                .contains("Missing command")
        );
    }

    #[test]
    fn onbuild_wraps_instruction() {
        let InstructionKind::Onbuild(inner) = one("ONBUILD COPY <<EOF /x\nhi\nEOF").unwrap() else {
            panic!("not ONBUILD")
        };
        let InstructionKind::Copy(c) = inner.kind else {
            panic!("not COPY")
        };
        assert_eq!(c.heredocs[0].content, "hi\n");
        assert!(
            one("ONBUILD FRUM x")
                .unwrap_err()
                .contains("did you mean FROM?")
        );
    }

    #[test]
    fn arg_and_shell() {
        assert_eq!(
            one("ARG a b=\"c d\"").unwrap(),
            InstructionKind::Arg(vec![
                ("a".into(), None),
                ("b".into(), Some("\"c d\"".into()))
            ])
        );
        assert!(
            one("ARG =x")
                .unwrap_err()
                .contains("ARG names can not be blank")
        );
        assert!(one("SHELL sh -c").unwrap_err().contains("JSON form"));
    }
}
