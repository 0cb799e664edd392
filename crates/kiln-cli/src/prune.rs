//! `kiln du` and `kiln prune`: print what the engine accounts and removes, as `docker buildx du`
//! and `docker builder prune` do.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Result, bail};
use kiln_engine::{Engine, PruneRequest, UsageKind, UsageRecord, human_duration, human_size};

use crate::args::{DuArgs, PruneArgs};

fn last_used(r: &UsageRecord) -> String {
    match r.last_used {
        Some(t) => {
            let age = chrono::Utc::now() - chrono::DateTime::<chrono::Utc>::from(t);
            format!("{} ago", human_duration(age.max(chrono::TimeDelta::zero())))
        }
        None => String::new(),
    }
}

fn table(records: &[UsageRecord]) -> String {
    let rows: Vec<[String; 5]> = records
        .iter()
        .map(|r| {
            // As buildx: ids shortened to 25 characters (`--verbose` shows them whole).
            let mut id: String = r.id.chars().take(25).collect();
            if r.in_use {
                id.push('*');
            }
            [
                id,
                r.kind.name().to_string(),
                r.reclaimable().to_string(),
                human_size(r.size),
                last_used(r),
            ]
        })
        .collect();
    let head = ["ID", "TYPE", "RECLAIMABLE", "SIZE", "LAST ACCESSED"].map(String::from);
    let mut widths = [0usize; 5];
    for row in std::iter::once(&head).chain(&rows) {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&head).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Writes `text` to stdout; a reader that went away (`kiln du | head`) is not an error.
fn emit(text: &str) -> Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

pub fn du(engine: &Engine, a: &DuArgs) -> Result<ExitCode> {
    use std::fmt::Write as _;
    let usage = engine.disk_usage()?;
    let mut out = String::new();
    if a.verbose {
        for r in &usage.records {
            let _ = writeln!(out, "ID:\t\t{}", r.id);
            let _ = writeln!(out, "Type:\t\t{}", r.kind.name());
            let _ = writeln!(out, "Reclaimable:\t{}", r.reclaimable());
            let _ = writeln!(out, "Shared:\t\t{}", r.shared);
            let _ = writeln!(out, "In use:\t\t{}", r.in_use);
            let _ = writeln!(out, "Size:\t\t{}", human_size(r.size));
            let _ = writeln!(out, "Description:\t{}", r.description);
            let _ = writeln!(out, "Last used:\t{}\n", last_used(r));
        }
    } else if !usage.records.is_empty() {
        out.push_str(&table(&usage.records));
        out.push('\n');
    }
    let mounts = usage
        .records
        .iter()
        .filter(|r| r.kind == UsageKind::CacheMount)
        .count();
    let _ = writeln!(out, "Cache mounts:\t{mounts}");
    let partial: u64 = usage
        .records
        .iter()
        .filter(|r| r.kind == UsageKind::Partial)
        .map(|r| r.size)
        .sum();
    let _ = writeln!(out, "Partial:\t{}", human_size(partial));
    let _ = writeln!(out, "Shared:\t\t{}", human_size(usage.shared()));
    let private = usage.total() - usage.shared();
    let _ = writeln!(out, "Private:\t{}", human_size(private));
    let _ = writeln!(out, "Reclaimable:\t{}", human_size(usage.reclaimable()));
    let _ = writeln!(out, "Total:\t\t{}", human_size(usage.total()));
    let _ = writeln!(
        out,
        "Images:\t\t{} tagged, {}",
        usage.images,
        human_size(usage.images_size)
    );
    emit(&out)?;
    Ok(ExitCode::SUCCESS)
}

fn request(a: &PruneArgs) -> Result<PruneRequest> {
    let mut req = PruneRequest {
        all: a.all,
        ..Default::default()
    };
    for f in &a.filter {
        let Some((key, value)) = f.split_once('=') else {
            bail!("invalid --filter `{f}`: expected key=value");
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "until" | "unused-for" => {
                let Some(d) = kiln_engine::parse_duration(value) else {
                    bail!("invalid --filter `{f}`: expected a duration such as 24h or 90m");
                };
                req.until = Some(d);
            }
            "type" => match UsageKind::parse(value) {
                Some(k) => req.kinds.push(k),
                None => bail!(
                    "invalid --filter `{f}`: type is one of regular, source.image, exec.cachemount, unreferenced, partial"
                ),
            },
            "id" => req.ids.push(value.to_string()),
            other => bail!("--filter `{other}` is not supported yet"),
        }
    }
    if let Some(s) = &a.keep_storage {
        let Some(n) = kiln_engine::parse_size(s) else {
            bail!("invalid --keep-storage `{s}`: expected a size such as 512MB");
        };
        req.keep_storage = Some(n);
    }
    Ok(req)
}

pub fn prune(engine: &Engine, a: &PruneArgs) -> Result<ExitCode> {
    let req = request(a)?;
    if !a.force {
        if !std::io::stdin().is_terminal() {
            bail!(
                "`kiln prune` asks for confirmation: use -f/--force when stdin is not a terminal"
            );
        }
        let what = if a.all {
            "all build cache"
        } else {
            "all unused build cache (base images stay, see --all)"
        };
        print!("WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let report = engine.prune(&req)?;
    let mut out = String::new();
    if !report.removed.is_empty() {
        out.push_str("Deleted build cache objects:\n");
        for r in &report.removed {
            out.push_str(&r.id);
            out.push('\n');
        }
        out.push('\n');
    }
    if report.gc_skipped {
        eprintln!(
            "note: other kiln processes use this data directory: unreferenced layers and blobs are kept until a prune runs alone"
        );
    }
    out.push_str(&format!("Total:\t{}\n", human_size(report.reclaimed)));
    emit(&out)?;
    Ok(ExitCode::SUCCESS)
}
