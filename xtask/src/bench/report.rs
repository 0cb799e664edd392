//! The results: one row per phase and tool, the machine, printed as a table and kept as JSON.

use std::collections::BTreeMap;

use serde::Serialize;

use super::limits;

#[derive(Serialize)]
pub struct PhaseResult {
    pub phase: String,
    pub tool: String,
    pub samples: Vec<f64>,
    pub median: f64,
    pub peak_rss_mib: Option<f64>,
    pub target: Option<f64>,
    /// Target for kiln's median over BuildKit v0.32.2's.
    pub ratio_target: Option<f64>,
    pub network_bound: bool,
}

#[derive(Serialize)]
pub struct Report {
    pub date: String,
    pub machine: BTreeMap<String, String>,
    pub results: Vec<PhaseResult>,
    pub limits: Vec<limits::Limit>,
    pub errors: Vec<String>,
}

pub fn machine() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    m.insert("cpu".into(), cpu);
    m.insert(
        "cpus".into(),
        std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or_default(),
    );
    let mem = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    m.insert("memory".into(), mem);
    m.insert(
        "kernel".into(),
        read("/proc/sys/kernel/osrelease").trim().to_string(),
    );
    m
}

/// The tools, in the table's order; kiln's ratios are against each peer.
pub const TOOLS: &[&str] = &["kiln", "buildkit", "buildkit32", "buildah"];
/// Column headers: Docker 20.10's BuildKit, BuildKit v0.32.2, Buildah.
const SHORT: &[&str] = &["kiln", "bk20", "bk32", "bah"];

pub fn print_table(r: &Report) {
    let mut head = format!("\n{:<18}", "phase (s)");
    for s in SHORT {
        head += &format!(" {s:>7}");
    }
    for s in &SHORT[1..] {
        head += &format!(" {:>8}", format!("k/{s}"));
    }
    head += &format!(" {:>7} ", "target");
    for s in SHORT {
        head += &format!(" {:>6}", format!("M {s}"));
    }
    println!("{head}");
    let mut phases: Vec<&str> = Vec::new();
    for res in &r.results {
        if !phases.contains(&res.phase.as_str()) {
            phases.push(&res.phase);
        }
    }
    for p in phases {
        let get = |t: &str| r.results.iter().find(|x| x.phase == p && x.tool == t);
        let med = |t: &str| get(t).map(|x| x.median);
        let any = TOOLS.iter().find_map(|t| get(t));
        let mut line = match any {
            Some(x) if x.network_bound => format!("{:<18}", format!("{p} (net)")),
            _ => format!("{p:<18}"),
        };
        for t in TOOLS {
            line += &format!(" {:>7}", med(t).map_or("-".into(), |v| format!("{v:.3}")));
        }
        for t in &TOOLS[1..] {
            let ratio = match (med("kiln"), med(t)) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "-".to_string(),
            };
            line += &format!(" {ratio:>8}");
        }
        // Seconds, or `x0.9` for a ratio to BuildKit v0.32.2 in the same run.
        let target = match (any.and_then(|x| x.target), any.and_then(|x| x.ratio_target)) {
            (Some(t), _) => format!("{t}"),
            (None, Some(r)) => format!("x{r}"),
            (None, None) => "-".to_string(),
        };
        line += &format!(" {target:>7} ");
        for t in TOOLS {
            let m = get(t).and_then(|x| x.peak_rss_mib);
            line += &format!(" {:>6}", m.map_or("-".into(), |m| format!("{m:.0}")));
        }
        println!("{line}");
    }
    if !r.limits.is_empty() {
        println!("\nthis machine's limits:");
        for l in &r.limits {
            println!("  {:<40} {:>8.3}s  {}", l.name, l.secs, l.rate);
        }
    }
}
