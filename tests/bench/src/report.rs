//! The results of a run: the markdown tables printed on stdout, `report.json` (one object per
//! case with its figures and ratios, the targets, the machine), and the targets' verdicts.

use std::fmt::Write as _;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::copy::Rate;
use crate::load::CdcFigures;
use crate::sync::{DistributedRun, SyncRun};

/// A case that ran, or why it did not.
pub type Outcome<T> = Result<T, String>;

/// Everything measured in one run.
pub struct Results {
    /// `small` or `full`.
    pub size: String,
    /// Documents of the main data set.
    pub documents: u64,
    /// Bytes of BSON of the main data set.
    pub bytes: u64,
    /// Loading the source (one client), for information.
    pub source_load: Outcome<Rate>,
    /// Insert-only rate of a fresh server, one client.
    pub raw_insert: Outcome<Rate>,
    /// Scan-only rate of the source, one client.
    pub raw_scan: Outcome<Rate>,
    /// The baseline copier.
    pub baseline: Outcome<Rate>,
    /// clustersync on the main data set.
    pub sync: Outcome<SyncRun>,
    /// clustersync on the smaller data set (memory comparison).
    pub sync_small: Outcome<SyncRun>,
    /// Distributed copies by worker count.
    pub scaling: Vec<(usize, Outcome<DistributedRun>)>,
    /// Worker settings clustersync ran with.
    pub settings: Value,
    /// Where they came from.
    pub settings_source: String,
    /// The machine.
    pub machine: Machine,
}

/// The machine a run happened on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cores: usize,
    /// CPU model.
    pub cpu: String,
    /// Total memory, GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// Operating system.
    pub os: String,
    /// `git rev-parse --short HEAD` of the tree, if known.
    pub commit: Option<String>,
    /// 1-minute load average when the run started (other work on the machine skews figures).
    pub load_average_start: Option<f64>,
    /// 1-minute load average when the run ended.
    pub load_average_end: Option<f64>,
    /// The cargo profile the binaries were built with (`release`, or `dev` in CI's smoke run,
    /// whose figures are not comparable).
    pub build_profile: String,
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

impl Machine {
    /// Reads `/proc` and `/etc/os-release`.
    pub fn detect() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name").and_then(|rest| rest.split(':').nth(1)))
            .map(|model| model.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let memory_kib = read("/proc/meminfo")
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        let os = read("/etc/os-release")
            .lines()
            .find_map(|line| line.strip_prefix("PRETTY_NAME="))
            .map(|name| name.trim_matches('"').to_string())
            .unwrap_or_else(|| "unknown".into());
        let commit = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string());
        Machine {
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            cpu,
            memory_gib: (memory_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            os,
            commit,
            load_average_start: load_average(),
            load_average_end: None,
            build_profile: "release".into(),
        }
    }
}

/// A target of the issue and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What is measured.
    pub name: String,
    /// The figure (`None`: its case did not run).
    pub measured: Option<f64>,
    /// `>=`, `<=` or `<`.
    pub comparison: &'static str,
    /// The bound.
    pub threshold: f64,
    /// Unit of `measured` and `threshold`.
    pub unit: &'static str,
    /// Met, missed, or unknown.
    pub met: Option<bool>,
    /// How far from the bound, relative to it: positive = better than needed.
    pub margin: Option<f64>,
    /// Why it was not measured, if it was not.
    pub note: Option<String>,
}

impl Target {
    fn new(name: &str, measured: Option<f64>, comparison: &'static str, threshold: f64, unit: &'static str) -> Target {
        let (met, margin) = match measured {
            Some(value) if value.is_finite() => {
                let met = match comparison {
                    ">=" => value >= threshold,
                    "<=" => value <= threshold,
                    _ => value < threshold,
                };
                let margin = if threshold == 0.0 {
                    None
                } else if comparison == ">=" {
                    Some(value / threshold - 1.0)
                } else {
                    Some((threshold - value) / threshold.abs())
                };
                (Some(met), margin)
            }
            _ => (None, None),
        };
        Target { name: name.to_string(), measured, comparison, threshold, unit, met, margin, note: None }
    }

    fn with_note(mut self, note: Option<String>) -> Target {
        if self.measured.is_none() {
            self.note = note;
        }
        self
    }

    fn verdict(&self) -> String {
        match (self.met, self.margin) {
            (Some(true), Some(margin)) => format!("met (by {:.0}%)", margin * 100.0),
            (Some(false), Some(margin)) => format!("**missed** (by {:.0}%)", -margin * 100.0),
            (Some(true), None) => "met".into(),
            (Some(false), None) => "**missed**".into(),
            (None, _) => match &self.note {
                Some(note) => format!("not measured: {note}"),
                None => "not measured".into(),
            },
        }
    }
}

/// A case of `report.json`.
#[derive(Debug, Serialize)]
pub struct Case {
    /// Name (`copy-clustersync`, ...).
    pub name: String,
    /// `ok`, `not run: <reason>` or `failed: <reason>`.
    pub status: String,
    /// Measured figures.
    pub figures: Map<String, Value>,
    /// Ratios to the baselines of the same run.
    pub ratios: Map<String, Value>,
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn rate_figures(rate: &Rate) -> Map<String, Value> {
    object(json!({
        "documents": rate.documents,
        "mib": round(rate.bytes as f64 / 1048576.0, 1),
        "seconds": round(rate.seconds, 2),
        "docs_per_sec": round(rate.docs_per_sec(), 0),
        "mib_per_sec": round(rate.mib_per_sec(), 1),
    }))
}

fn rounded(value: Option<f64>) -> Value {
    value.map_or(Value::Null, |v| json!(round(v, 3)))
}

impl Results {
    fn raw_limit(&self) -> Option<f64> {
        match (&self.raw_insert, &self.raw_scan) {
            (Ok(insert), Ok(scan)) => Some(insert.docs_per_sec().min(scan.docs_per_sec())),
            _ => None,
        }
    }

    fn copy_vs_baseline(&self) -> Option<f64> {
        match (&self.sync, &self.baseline) {
            (Ok(sync), Ok(baseline)) => ratio(sync.copy.docs_per_sec(), baseline.docs_per_sec()),
            _ => None,
        }
    }

    fn copy_vs_raw(&self) -> Option<f64> {
        self.sync.as_ref().ok().zip(self.raw_limit()).and_then(|(sync, raw)| ratio(sync.copy.docs_per_sec(), raw))
    }

    fn verify_growth(&self) -> Option<f64> {
        let peak = |run: &Outcome<SyncRun>| {
            run.as_ref()
                .ok()
                .filter(|run| run.commit_error.is_none())
                .and_then(|run| run.memory.get("verify").or(run.memory.get("commit")))
                .map(|m| m.peak_rss_mib)
        };
        peak(&self.sync).zip(peak(&self.sync_small)).and_then(|(large, small)| ratio(large, small)).map(|r| r - 1.0)
    }

    fn verification_problem(&self) -> Option<String> {
        [&self.sync_small, &self.sync].into_iter().find_map(|run| match run {
            Ok(run) => run.commit_error.as_ref().map(|e| {
                format!(
                    "verification did not finish at {} documents ({})",
                    run.documents,
                    e.lines().next().unwrap_or("")
                )
            }),
            Err(e) => Some(format!("run failed: {}", e.lines().next().unwrap_or(""))),
        })
    }

    /// The targets of the issue, evaluated on this run.
    pub fn targets(&self) -> Vec<Target> {
        let cdc_max = self.sync.as_ref().ok().and_then(|s| s.cdc_max.as_ref());
        let cdc_half = self.sync.as_ref().ok().and_then(|s| s.cdc_half.as_ref());
        let copy_rss = self.sync.as_ref().ok().and_then(|s| s.memory.get("copy")).map(|m| m.peak_rss_mib);
        let small_docs = self.sync_small.as_ref().map(|s| s.documents).unwrap_or(0);
        vec![
            Target::new("copy throughput vs the baseline copier", self.copy_vs_baseline(), ">=", 1.2, "×"),
            Target::new("copy throughput vs min(raw insert, raw scan)", self.copy_vs_raw(), ">=", 0.7, "×"),
            Target::new(
                "change application vs the source's maximum write rate",
                cdc_max.and_then(|c| ratio(c.applied_events_per_sec, c.source_writes_per_sec)),
                ">=",
                0.9,
                "×",
            ),
            Target::new(
                "lag p99 at half rate",
                cdc_half.and_then(|c| c.lag_p99_ms).map(|ms| ms as f64 / 1000.0),
                "<=",
                2.0,
                "s",
            ),
            Target::new("peak RSS during the copy", copy_rss, "<=", 300.0, "MiB"),
            Target::new(
                &format!("verification peak RSS growth, {} → {} documents", small_docs, self.documents),
                self.verify_growth(),
                "<",
                0.2,
                "× (growth)",
            )
            .with_note(self.verification_problem()),
        ]
    }

    /// The cases of `report.json`.
    pub fn cases(&self) -> Vec<Case> {
        let mut cases = Vec::new();
        let status = |outcome: Result<(), &String>| match outcome {
            Ok(()) => "ok".to_string(),
            Err(reason) if reason.starts_with("not run") => reason.clone(),
            Err(reason) => format!("failed: {reason}"),
        };
        let mut rate_case = |name: &str, rate: &Outcome<Rate>, ratios: Map<String, Value>| {
            cases.push(Case {
                name: name.to_string(),
                status: status(rate.as_ref().map(|_| ())),
                figures: rate.as_ref().map(rate_figures).unwrap_or_default(),
                ratios,
            });
        };
        rate_case("source-load", &self.source_load, Map::new());
        rate_case("raw-insert", &self.raw_insert, Map::new());
        rate_case("raw-scan", &self.raw_scan, Map::new());
        let baseline_vs_raw =
            self.baseline.as_ref().ok().zip(self.raw_limit()).and_then(|(b, raw)| ratio(b.docs_per_sec(), raw));
        rate_case("copy-baseline", &self.baseline, object(json!({"vs_min_raw": rounded(baseline_vs_raw)})));
        let sync_copy = self.sync.as_ref().map(|s| s.copy).map_err(Clone::clone);
        rate_case(
            "copy-clustersync",
            &sync_copy,
            object(json!({
                "vs_baseline": rounded(self.copy_vs_baseline()),
                "vs_min_raw": rounded(self.copy_vs_raw()),
            })),
        );

        let sustained = self.sync.as_ref().ok().and_then(|s| s.cdc_max.as_ref()).map(|c| c.applied_events_per_sec);
        let alone = self.sync.as_ref().ok().and_then(|s| s.generator_alone_writes_per_sec);
        for (name, pick) in [
            ("cdc-max-rate", (|s: &SyncRun| s.cdc_max.clone()) as fn(&SyncRun) -> Option<CdcFigures>),
            ("cdc-half-rate", |s: &SyncRun| s.cdc_half.clone()),
        ] {
            let figures = self.sync.as_ref().map_err(Clone::clone).and_then(|s| {
                pick(s).ok_or_else(|| s.cdc_error.clone().unwrap_or_else(|| "not run: no load phase".into()))
            });
            let mut ratios = Map::new();
            let mut extra = Map::new();
            if let Ok(f) = &figures {
                ratios.insert(
                    "applied_over_source_writes".into(),
                    rounded(ratio(f.applied_events_per_sec, f.source_writes_per_sec)),
                );
                if name == "cdc-max-rate" {
                    extra.insert("generator_alone_writes_per_sec".into(), rounded(alone));
                    ratios.insert(
                        "source_writes_vs_generator_alone".into(),
                        rounded(alone.and_then(|a| ratio(f.source_writes_per_sec, a))),
                    );
                } else {
                    ratios.insert(
                        "target_rate_vs_sustained".into(),
                        rounded(sustained.zip(f.target_writes_per_sec).and_then(|(s, t)| ratio(t, s))),
                    );
                }
            }
            let mut map = figures.as_ref().map(|f| object(json!(f))).unwrap_or_default();
            map.extend(extra);
            cases.push(Case { name: name.into(), status: status(figures.as_ref().map(|_| ())), figures: map, ratios });
        }

        for (run, is_main) in [(&self.sync_small, false), (&self.sync, true)] {
            let documents = run.as_ref().map(|r| r.documents).unwrap_or(0);
            let mut figures = Map::new();
            if let Ok(run) = run {
                figures.insert("documents".into(), json!(run.documents));
                figures.insert("copy_docs_per_sec".into(), json!(round(run.copy.docs_per_sec(), 0)));
                figures.insert("verify_seconds".into(), json!(round(run.verify_seconds, 2)));
                figures.insert("commit_seconds".into(), json!(round(run.commit_seconds, 2)));
                figures.insert("committed".into(), json!(run.commit_error.is_none()));
                if let Some(error) = &run.commit_error {
                    figures.insert("commit_error".into(), json!(error));
                }
                if let Some(check) = &run.verification_check {
                    figures.insert("verification_check".into(), json!(check));
                }
                for (phase, memory) in &run.memory {
                    figures.insert(format!("{phase}_peak_rss_mib"), json!(round(memory.peak_rss_mib, 1)));
                    figures.insert(format!("{phase}_start_rss_mib"), json!(round(memory.start_rss_mib, 1)));
                }
            }
            let mut ratios = Map::new();
            if is_main {
                ratios.insert("verify_peak_rss_growth_vs_smaller".into(), rounded(self.verify_growth()));
            }
            cases.push(Case {
                name: if documents > 0 {
                    format!("memory-{documents}")
                } else {
                    format!("memory-{}", if is_main { "main" } else { "small" })
                },
                status: status(run.as_ref().map(|_| ())),
                figures,
                ratios,
            });
        }

        let one = self
            .scaling
            .iter()
            .find(|(n, _)| *n == 1)
            .and_then(|(_, r)| r.as_ref().ok())
            .map(|r| r.copy.docs_per_sec());
        for (workers, run) in &self.scaling {
            let mut figures = run.as_ref().map(|r| rate_figures(&r.copy)).unwrap_or_default();
            if let Ok(run) = run {
                figures.insert("workers".into(), json!(run.workers));
                figures.insert("workers_seen".into(), json!(run.workers_seen));
            }
            let vs_one = run.as_ref().ok().zip(one).and_then(|(r, one)| ratio(r.copy.docs_per_sec(), one));
            cases.push(Case {
                name: format!("scaling-{workers}-worker{}", if *workers == 1 { "" } else { "s" }),
                status: status(run.as_ref().map(|_| ())),
                figures,
                ratios: object(json!({"vs_1_worker": rounded(vs_one)})),
            });
        }
        cases
    }

    /// `report.json`.
    pub fn json(&self) -> Value {
        json!({
            "size": self.size,
            "documents": self.documents,
            "mib": round(self.bytes as f64 / 1048576.0, 1),
            "machine": self.machine,
            "clustersync_worker_settings": self.settings,
            "clustersync_worker_settings_source": self.settings_source,
            "cases": self.cases(),
            "targets": self.targets(),
        })
    }

    /// The markdown tables.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = writeln!(
            out,
            "## clustersync benchmark: `--size {}` ({} documents, {:.0} MiB)\n",
            self.size,
            self.documents,
            self.bytes as f64 / 1048576.0
        );
        let load = |l: Option<f64>| l.map_or("?".into(), |l| format!("{l:.2}"));
        let _ = writeln!(
            out,
            "Machine: {} cores ({}), {:.1} GiB RAM, Linux {}, {}{}; load average {} at the start, {} at the end; \
             {} build.  ",
            m.cores,
            m.cpu,
            m.memory_gib,
            m.kernel,
            m.os,
            m.commit.as_ref().map(|c| format!(", commit {c}")).unwrap_or_default(),
            load(m.load_average_start),
            load(m.load_average_end),
            m.build_profile,
        );
        let _ = writeln!(out, "clustersync worker settings ({}): `{}`\n", self.settings_source, self.settings);

        let _ = writeln!(out, "### Initial copy\n");
        let _ = writeln!(out, "| case | documents | MiB | seconds | docs/s | MiB/s | vs baseline | vs min(raw) |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|");
        let raw = self.raw_limit();
        let baseline = self.baseline.as_ref().ok().map(|b| b.docs_per_sec());
        let sync_copy = self.sync.as_ref().map(|s| s.copy).map_err(Clone::clone);
        for (name, rate) in [
            ("raw insert (1 client, fresh server)", &self.raw_insert),
            ("raw scan (1 client, source)", &self.raw_scan),
            ("baseline copier (task per collection)", &self.baseline),
            ("clustersync (single process)", &sync_copy),
        ] {
            match rate {
                Ok(rate) => {
                    let vs = |other: Option<f64>| {
                        other.and_then(|o| ratio(rate.docs_per_sec(), o)).map_or("".into(), |r| format!("{r:.2}×"))
                    };
                    let (vs_baseline, vs_raw) = if name.starts_with("raw") {
                        (String::new(), String::new())
                    } else if name.starts_with("baseline") {
                        (String::new(), vs(raw))
                    } else {
                        (vs(baseline), vs(raw))
                    };
                    let _ = writeln!(
                        out,
                        "| {name} | {} | {:.0} | {:.2} | {:.0} | {:.1} | {vs_baseline} | {vs_raw} |",
                        rate.documents,
                        rate.bytes as f64 / 1048576.0,
                        rate.seconds,
                        rate.docs_per_sec(),
                        rate.mib_per_sec()
                    );
                }
                Err(reason) => {
                    let _ = writeln!(out, "| {name} | {} | | | | | | |", cell(reason));
                }
            }
        }

        let _ = writeln!(out, "\n### Change application (50/30/20 update/insert/delete)\n");
        let _ = writeln!(
            out,
            "| phase | source writes/s | applied events/s | applied ÷ written | lag p50 | lag p99 | lag max | converge after stop | clustersync `lagTimeSeconds` max |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        match &self.sync {
            Ok(sync) => {
                for (name, figures) in [("maximum rate", &sync.cdc_max), ("half the sustained rate", &sync.cdc_half)] {
                    match figures {
                        Some(f) => {
                            let ms = |v: Option<i64>| v.map_or("–".into(), |v| format!("{v} ms"));
                            let _ = writeln!(
                                out,
                                "| {name}{} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} |",
                                f.target_writes_per_sec.map(|t| format!(" (target {t:.0}/s)")).unwrap_or_default(),
                                f.source_writes_per_sec,
                                f.applied_events_per_sec,
                                ratio(f.applied_events_per_sec, f.source_writes_per_sec)
                                    .map_or("–".into(), |r| format!("{r:.2}")),
                                ms(f.lag_p50_ms),
                                ms(f.lag_p99_ms),
                                ms(f.lag_max_ms),
                                f.converge_seconds
                                    .map_or(format!("not converged ({} writes missing)", f.missing), |s| format!(
                                        "{s:.2} s"
                                    )),
                                f.clustersync_max_lag_seconds.map_or("–".into(), |s| format!("{s} s")),
                            );
                        }
                        None => {
                            let why = sync.cdc_error.as_deref().map_or("not run".to_string(), cell);
                            let _ = writeln!(out, "| {name} | {why} | | | | | | | |");
                        }
                    }
                }
                if let Some(alone) = sync.generator_alone_writes_per_sec {
                    let _ = writeln!(
                        out,
                        "\nThe generator alone on the source (clustersync stopped): {alone:.0} writes/s."
                    );
                }
            }
            Err(reason) => {
                let _ = writeln!(out, "| – | {} | | | | | | | |", cell(reason));
            }
        }

        let _ = writeln!(
            out,
            "\n### Memory (peak RSS of the clustersync process, MiB; in brackets: growth within the phase; the process is restarted before the commit)\n"
        );
        let _ = writeln!(out, "| documents | copy | change application | commit (drain, restore) | verification |");
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|");
        for run in [&self.sync_small, &self.sync] {
            match run {
                Ok(run) => {
                    let peak = |phase: &str| {
                        run.memory.get(phase).map_or("–".into(), |m| {
                            format!("{:.0} (+{:.0})", m.peak_rss_mib, m.peak_rss_mib - m.start_rss_mib)
                        })
                    };
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {} | {} |",
                        run.documents,
                        peak("copy"),
                        peak("cdc"),
                        peak("commit"),
                        match &run.commit_error {
                            None => peak("verify"),
                            Some(_) => format!("{}, did not finish", peak("verify")),
                        }
                    );
                }
                Err(reason) => {
                    let _ = writeln!(out, "| {} | | | | |", cell(reason));
                }
            }
        }

        for run in [&self.sync_small, &self.sync].into_iter().filter_map(|run| run.as_ref().ok()) {
            if let Some(error) = &run.commit_error {
                let _ = writeln!(
                    out,
                    "\nThe commit at {} documents did not complete after {:.0} s: {}",
                    run.documents,
                    run.commit_seconds,
                    error.lines().next().unwrap_or("")
                );
                if let Some(check) = &run.verification_check {
                    let _ = writeln!(out, "The bench's {}.", check.summary());
                }
            }
        }

        let _ = writeln!(out, "\n### Scaling (distributed mode: etcd, 1 coordinator, N workers)\n");
        let _ = writeln!(out, "| workers | seconds | docs/s | MiB/s | vs 1 worker |");
        let _ = writeln!(out, "|---:|---:|---:|---:|---:|");
        let one = self
            .scaling
            .iter()
            .find(|(n, _)| *n == 1)
            .and_then(|(_, r)| r.as_ref().ok())
            .map(|r| r.copy.docs_per_sec());
        for (workers, run) in &self.scaling {
            match run {
                Ok(run) => {
                    let _ = writeln!(
                        out,
                        "| {workers} | {:.2} | {:.0} | {:.1} | {} |",
                        run.copy.seconds,
                        run.copy.docs_per_sec(),
                        run.copy.mib_per_sec(),
                        one.and_then(|o| ratio(run.copy.docs_per_sec(), o))
                            .map_or("–".into(), |r| format!("{r:.2}×"))
                    );
                }
                Err(reason) => {
                    let _ = writeln!(out, "| {workers} | {} | | | |", cell(reason));
                }
            }
        }

        let _ = writeln!(out, "\n### Targets\n");
        let _ = writeln!(out, "| target | measured | needed | result |");
        let _ = writeln!(out, "|---|---:|---:|---|");
        for target in self.targets() {
            let _ = writeln!(
                out,
                "| {} | {} | {} {} {} | {} |",
                target.name,
                target.measured.map_or("–".into(), |v| format!("{v:.2} {}", target.unit)),
                target.comparison,
                target.threshold,
                target.unit,
                target.verdict()
            );
        }
        out
    }
}

/// A reason shown in a table cell: one line, no pipes.
fn cell(reason: &str) -> String {
    let line = reason.lines().next().unwrap_or("").replace('|', "/");
    if line.starts_with("not run") { line } else { format!("failed: {line}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_verdicts_and_margins() {
        let t = Target::new("x", Some(1.5), ">=", 1.2, "×");
        assert_eq!(t.met, Some(true));
        assert!((t.margin.unwrap() - 0.25).abs() < 1e-9);
        let t = Target::new("x", Some(3.0), "<=", 2.0, "s");
        assert_eq!(t.met, Some(false));
        assert!(t.verdict().contains("**missed** (by 50%)"), "{}", t.verdict());
        let t = Target::new("x", None, "<", 0.2, "×");
        assert_eq!(t.met, None);
    }
}
