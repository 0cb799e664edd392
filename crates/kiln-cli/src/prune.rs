//! `kiln du` and `kiln prune`: print what the engine accounts and removes, as `docker buildx du`
//! and `docker builder prune` do.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Result, bail};
use kiln_engine::{
    Engine, PruneOptions, PruneReport, PruneRequest, UsageKind, UsageRecord, human_duration,
    human_size,
};

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

/// Lays out rows under `head`, columns padded as buildx's tabwriter does.
fn layout<const N: usize>(head: [&str; N], rows: Vec<[String; N]>) -> String {
    let head = head.map(String::from);
    let mut widths = [0usize; N];
    for row in std::iter::once(&head).chain(&rows) {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
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

/// `kiln du`'s table; `policy[i]` is what the GC policy does with row `i` (`keep`, or the rule
/// that removes it).
fn table(records: &[UsageRecord], policy: &[String]) -> String {
    let rows: Vec<[String; 6]> = records
        .iter()
        .zip(policy)
        .map(|(r, p)| {
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
                p.clone(),
            ]
        })
        .collect();
    layout(
        [
            "ID",
            "TYPE",
            "RECLAIMABLE",
            "SIZE",
            "LAST ACCESSED",
            "GC POLICY",
        ],
        rows,
    )
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
    // What automatic GC would do now, per row.
    let mut policy = vec!["keep".to_string(); usage.records.len()];
    let mut policy_why = vec![String::new(); usage.records.len()];
    let mut by_policy = 0;
    for p in engine.plan_rules(&engine.gc_rules(), &usage.records) {
        let r = &usage.records[p.index];
        by_policy += if r.shared { 0 } else { r.size };
        policy[p.index] = p.rule.clone();
        policy_why[p.index] = format!("remove by {}: {}", p.rule, p.reason);
    }
    let mut out = String::new();
    if a.verbose {
        for (i, r) in usage.records.iter().enumerate() {
            let _ = writeln!(out, "ID:\t\t{}", r.id);
            let _ = writeln!(out, "Type:\t\t{}", r.kind.name());
            let _ = writeln!(out, "Reclaimable:\t{}", r.reclaimable());
            let _ = writeln!(out, "Shared:\t\t{}", r.shared);
            let _ = writeln!(out, "In use:\t\t{}", r.in_use);
            let _ = writeln!(out, "Size:\t\t{}", human_size(r.size));
            let _ = writeln!(out, "Description:\t{}", r.description);
            let _ = writeln!(out, "Last used:\t{}", last_used(r));
            let why = &policy_why[i];
            let _ = writeln!(
                out,
                "GC policy:\t{}\n",
                if why.is_empty() { "keep" } else { why }
            );
        }
    } else if !usage.records.is_empty() {
        out.push_str(&table(&usage.records, &policy));
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
    let _ = writeln!(out, "By GC policy:\t{}", human_size(by_policy));
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

fn size_flag(flag: &str, value: &Option<String>) -> Result<Option<u64>> {
    match value {
        None => Ok(None),
        Some(s) => match kiln_engine::DiskSpace::parse(s) {
            Ok(d) if d.percentage == 0 => Ok(Some(d.bytes)),
            _ => bail!("invalid {flag} `{s}`: expected a size such as 512MB"),
        },
    }
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
    req.keep_storage = match &a.keep_storage {
        Some(_) => size_flag("--keep-storage", &a.keep_storage)?,
        None => size_flag("--reserved-space", &a.reserved_space)?,
    };
    req.max_used_space = size_flag("--max-used-space", &a.max_used_space)?;
    req.min_free_space = size_flag("--min-free-space", &a.min_free_space)?;
    Ok(req)
}

/// The dry run's table: every row that would go, with the rule and its reason.
fn planned_table(report: &PruneReport) -> String {
    let rows = report
        .removed
        .iter()
        .map(|p| {
            let r = &p.record;
            [
                r.id.clone(),
                r.kind.name().to_string(),
                human_size(r.size),
                last_used(r),
                r.shared.to_string(),
                p.rule.clone(),
                p.reason.clone(),
            ]
        })
        .collect();
    layout(
        [
            "ID",
            "TYPE",
            "SIZE",
            "LAST ACCESSED",
            "SHARED",
            "RULE",
            "REASON",
        ],
        rows,
    )
}

pub fn prune(engine: &Engine, a: &PruneArgs) -> Result<ExitCode> {
    let req = request(a)?;
    if !a.force && !a.dry_run {
        if !std::io::stdin().is_terminal() {
            bail!(
                "`kiln prune` asks for confirmation: use -f/--force when stdin is not a terminal"
            );
        }
        let what = if a.gc {
            "the build cache the GC policies select"
        } else if a.all {
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
    let opts = PruneOptions {
        dry_run: a.dry_run,
        deadline: None,
    };
    let report = if a.gc {
        engine.gc(opts)?
    } else {
        engine.prune_rules(&[req.rule()], opts)?
    };
    let mut out = String::new();
    if a.dry_run {
        out.push_str("Would delete (dry run: nothing was deleted):\n");
        out.push_str(&planned_table(&report));
        out.push('\n');
    } else if !report.removed.is_empty() {
        out.push_str("Deleted build cache objects:\n");
        for r in &report.removed {
            out.push_str(&r.record.id);
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
