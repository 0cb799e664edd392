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

pub fn print_table(r: &Report) {
    let tools = ["kiln", "buildkit", "buildah"];
    println!(
        "\n{:<18} {:>8} {:>9} {:>8} {:>10} {:>9} {:>7}  {:>6} {:>6} {:>6}",
        "phase (s)",
        "kiln",
        "buildkit",
        "buildah",
        "kiln/bk",
        "kiln/bah",
        "target",
        "MiB k",
        "bk",
        "bah"
    );
    let mut phases: Vec<&str> = Vec::new();
    for res in &r.results {
        if !phases.contains(&res.phase.as_str()) {
            phases.push(&res.phase);
        }
    }
    for p in phases {
        let get = |t: &str| r.results.iter().find(|x| x.phase == p && x.tool == t);
        let med = |t: &str| get(t).map(|x| x.median);
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".to_string(),
        };
        let mem = |t: &str| {
            get(t)
                .and_then(|x| x.peak_rss_mib)
                .map_or("-".to_string(), |m| format!("{m:.0}"))
        };
        let any = tools.iter().find_map(|t| get(t));
        let target = any.and_then(|x| x.target);
        let name = if any.is_some_and(|x| x.network_bound) {
            format!("{p} (net)")
        } else {
            p.to_string()
        };
        println!(
            "{:<18} {:>8} {:>9} {:>8} {:>10} {:>9} {:>7}  {:>6} {:>6} {:>6}",
            name,
            cell(med("kiln")),
            cell(med("buildkit")),
            cell(med("buildah")),
            ratio(med("kiln"), med("buildkit")),
            ratio(med("kiln"), med("buildah")),
            target.map_or("-".to_string(), |t| format!("{t}")),
            mem("kiln"),
            mem("buildkit"),
            mem("buildah"),
        );
    }
    if !r.limits.is_empty() {
        println!("\nthis machine's limits:");
        for l in &r.limits {
            println!("  {:<40} {:>8.3}s  {}", l.name, l.secs, l.rate);
        }
    }
}
