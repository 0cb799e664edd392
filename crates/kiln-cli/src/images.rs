//! The image-store commands: `images`, `rmi`, `save`, `load`, `inspect`, `history` and
//! `imagetools`, printed as the Docker CLI and buildx print them.

use std::io::{BufWriter, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use kiln_engine::view::{self, HistoryView, ImagesView, Template};
use kiln_engine::{Engine, ImageFilter, IndexRequest, RmiEvent, SaveFormat};
use kiln_oci::Reference;

use crate::args::{
    Cli, Command, HistoryArgs, ImagesArgs, ImagetoolsCommand, ImagetoolsCreateArgs, LoadArgs,
    SaveArgs,
};
use crate::{open_engine, parse_ref};

const IMAGE_FIELDS: &[&str] = &[
    "Repository",
    "Tag",
    "ID",
    "Digest",
    "CreatedSince",
    "CreatedAt",
    "Size",
];
const HISTORY_FIELDS: &[&str] = &[
    "ID",
    "CreatedSince",
    "CreatedAt",
    "CreatedBy",
    "Size",
    "Comment",
];

pub async fn run(cli: &Cli) -> Result<ExitCode> {
    let engine = open_engine(cli)?;
    match &cli.command {
        Command::Images(a) => images(&engine, a),
        Command::Rmi(a) => {
            let mut failed = false;
            for image in &a.images {
                match engine.remove_image(image, a.force) {
                    Ok(events) => {
                        for e in events {
                            match e {
                                RmiEvent::Untagged(name) => say(format_args!("Untagged: {name}"))?,
                                RmiEvent::Deleted(id) => say(format_args!("Deleted: {id}"))?,
                            }
                        }
                    }
                    // Docker goes on with the other images and fails at the end.
                    Err(e) => {
                        crate::print_error(&anyhow::Error::new(e));
                        failed = true;
                    }
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Save(a) => save(&engine, a),
        Command::Load(a) => load(&engine, a),
        Command::Inspect(a) => {
            let platform: Option<kiln_oci::Platform> = a
                .platform
                .as_deref()
                .map(|p| {
                    p.parse()
                        .with_context(|| format!("invalid --platform `{p}`"))
                })
                .transpose()?;
            // As docker: what was found is printed, then an error for each of the others (not
            // there, or without the platform asked for).
            let mut found = Vec::new();
            let mut errors = Vec::new();
            for image in &a.images {
                match engine.inspect_image(image, platform.as_ref()) {
                    Ok(v) => found.push(v),
                    Err(e) => errors.push(e),
                }
            }
            say(format_args!("{}", serde_json::to_string_pretty(&found)?))?;
            if errors.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                for e in errors {
                    crate::print_error(&anyhow::Error::new(e));
                }
                Ok(ExitCode::FAILURE)
            }
        }
        Command::History(a) => history(&engine, a),
        Command::Imagetools(a) => match &a.command {
            ImagetoolsCommand::Inspect(i) => {
                let name = parse_ref(&i.name)?;
                let raw = engine.imagetools_inspect(&name).await?;
                let mut out = std::io::stdout().lock();
                if i.raw {
                    out.write_all(&raw.bytes)?;
                    if raw.bytes.last() != Some(&b'\n') {
                        out.write_all(b"\n")?;
                    }
                } else {
                    out.write_all(kiln_engine::format_imagetools(&name, &raw).as_bytes())?;
                }
                Ok(ExitCode::SUCCESS)
            }
            ImagetoolsCommand::Create(c) => imagetools_create(&engine, c).await,
        },
        _ => bail!("not an image command"),
    }
}

fn images(engine: &Engine, a: &ImagesArgs) -> Result<ExitCode> {
    let mut filter = ImageFilter::parse(&a.filter)?;
    if let Some(repo) = &a.repository {
        filter.references.push(repo.clone());
    }
    let records = engine.list_images(&filter)?;
    let now = chrono::Utc::now();
    let mut out = std::io::stdout().lock();
    if a.tree {
        if a.quiet || a.format.is_some() || a.digests {
            bail!("--tree can't be combined with --quiet, --format or --digests");
        }
        let mut rows = Vec::new();
        for r in records {
            let platforms = engine.platform_images(&r)?;
            rows.push((r, platforms));
        }
        out.write_all(view::images_tree(&rows, a.no_trunc).as_bytes())?;
    } else if a.quiet {
        for r in &records {
            writeln!(out, "{}", view::short_id(&r.config, a.no_trunc))?;
        }
    } else if let Some(format) = &a.format {
        let template = Template::parse(format, IMAGE_FIELDS).map_err(anyhow::Error::msg)?;
        let rows: Vec<_> = records
            .iter()
            .map(|r| view::image_fields(r, now, a.no_trunc))
            .collect();
        out.write_all(template.render(&rows).as_bytes())?;
    } else {
        let table = view::images_table(
            &records,
            now,
            ImagesView {
                digests: a.digests,
                no_trunc: a.no_trunc,
            },
        );
        out.write_all(table.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn history(engine: &Engine, a: &HistoryArgs) -> Result<ExitCode> {
    let (found, details) = engine.image_details(&a.image)?;
    let rows = view::history_rows(
        &details,
        &found.config,
        chrono::Utc::now(),
        HistoryView {
            no_trunc: a.no_trunc,
        },
    );
    let mut out = std::io::stdout().lock();
    if a.quiet {
        for r in &rows {
            writeln!(out, "{}", r["ID"])?;
        }
    } else if let Some(format) = &a.format {
        let template = Template::parse(format, HISTORY_FIELDS).map_err(anyhow::Error::msg)?;
        out.write_all(template.render(&rows).as_bytes())?;
    } else {
        out.write_all(view::history_table(&rows).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn save(engine: &Engine, a: &SaveArgs) -> Result<ExitCode> {
    let format = match a.format.as_str() {
        "oci" => SaveFormat::Oci,
        _ => SaveFormat::Docker,
    };
    match &a.output {
        Some(path) => {
            // Written beside the destination and renamed once whole, so a failed or killed
            // save leaves the old file (or none), never a torn one.
            kiln_engine::write_file_atomically(path, |out| {
                engine.save(&a.images, format, out).map(drop)
            })?;
        }
        None => {
            if std::io::stdout().is_terminal() {
                bail!("cowardly refusing to save to a terminal. Use the -o flag or redirect");
            }
            let out = engine.save(&a.images, format, BufWriter::new(std::io::stdout().lock()))?;
            out.into_inner().map_err(|e| e.into_error())?.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn load(engine: &Engine, a: &LoadArgs) -> Result<ExitCode> {
    let loaded = match &a.input {
        Some(path) => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("opening `{}`", path.display()))?;
            engine.load(std::io::BufReader::new(file), path)?
        }
        None => {
            if std::io::stdin().is_terminal() {
                bail!("requested load from stdin, but stdin is empty");
            }
            engine.load(std::io::stdin().lock(), Path::new("<stdin>"))?
        }
    };
    if !a.quiet {
        for img in &loaded {
            if img.names.is_empty() {
                say(format_args!("Loaded image ID: {}", img.config))?;
            }
            for name in &img.names {
                let (repo, tag) = kiln_engine::familiar_name(name);
                say(format_args!("Loaded image: {repo}:{tag}"))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn imagetools_create(engine: &Engine, c: &ImagetoolsCreateArgs) -> Result<ExitCode> {
    let targets = c
        .tag
        .iter()
        .map(|t| parse_ref(t))
        .collect::<Result<Vec<Reference>>>()?;
    let first = &targets[0];
    let mut sources = Vec::new();
    for s in &c.sources {
        // A bare digest names a manifest in the (first) target's repository, as in buildx.
        let src = if s.starts_with("sha256:") {
            format!("{}/{}@{s}", first.registry(), first.repository())
        } else {
            s.clone()
        };
        sources.push(parse_ref(&src)?);
    }
    for target in &targets {
        let (digest, bytes) = engine
            .imagetools_create(&IndexRequest {
                target: target.clone(),
                sources: sources.clone(),
                append: c.append,
                annotations: c.annotation.clone(),
                dry_run: c.dry_run,
            })
            .await?;
        if c.dry_run {
            say(format_args!("{}", String::from_utf8_lossy(&bytes)))?;
            break;
        }
        eprintln!("pushed {}@{digest}", target.whole());
        say(format_args!("{digest}"))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One line to stdout; a closed pipe is an error, not a panic as with `println!`.
/// One line to standard output; a closed pipe is an error, not a panic.
pub(crate) fn say(line: std::fmt::Arguments) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(line)?;
    out.write_all(b"\n")?;
    Ok(())
}
