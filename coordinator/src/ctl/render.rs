//! How `clustersync ctl progress` shows a report: [`summary`] for one report, and
//! [`WatchDisplay`] for `--watch`.
//!
//! On a terminal, `--watch` draws live bars on stderr (indicatif), each line fitting 80 columns:
//! the state line, the bytes copied over the estimated total, one bar per collection (those
//! still copying first, at most [`MAX_COLLECTION_BARS`]), and lines for the change streams,
//! verification and the fleet.
//! When stderr is not a terminal (a pipe, CI, a test) it prints one plain line on stdout each
//! time the headline changes, so logs stay readable.

use std::fmt::Write as _;
use std::time::Duration;

use clustersync_common::model::{CdcStage, Phase, Role, SyncState};
use indicatif::{HumanBytes, MultiProgress, ProgressBar, ProgressStyle};

use crate::ctl::CtlError;
use crate::progress::{CollectionProgress, Progress};

/// Collections listed by [`summary`] before the rest is counted.
pub const MAX_SUMMARY_COLLECTIONS: usize = 50;

/// Collections that get a live bar in [`WatchDisplay`].
pub const MAX_COLLECTION_BARS: usize = 10;

/// The lifecycle phase as REST names it.
pub fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Idle => "idle",
        Phase::Setup => "setup",
        Phase::Snapshot => "snapshot",
        Phase::Running => "running",
        Phase::Paused => "paused",
        Phase::Committing => "committing",
        Phase::Completed => "completed",
        Phase::Failed => "failed",
    }
}

fn stage_name(stage: CdcStage) -> &'static str {
    match stage {
        CdcStage::Spooling => "spooling",
        CdcStage::Draining => "draining",
        CdcStage::Live => "live",
    }
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

fn plural(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// `RUNNING (phase snapshot: collection copy)`.
fn headline_state(progress: &Progress) -> String {
    let mut text = progress.state.as_str().to_string();
    match (progress.phase, progress.info.as_deref()) {
        (Some(phase), Some(info)) => write!(text, " (phase {}: {info})", phase_name(phase)),
        (Some(phase), None) => write!(text, " (phase {})", phase_name(phase)),
        (None, Some(info)) => write!(text, " ({info})"),
        (None, None) => Ok(()),
    }
    .unwrap_or_default();
    text
}

/// `1.95 KiB / 3.91 KiB (50%)`, or `not started` before the copy is planned.
fn copy_text(progress: &Progress) -> String {
    match progress.collection_copy {
        Some(copy) if copy.estimated_total_bytes <= 1 && copy.estimated_copied_bytes == 0 => "not started".into(),
        Some(copy) => {
            let percent = copy.estimated_copied_bytes.saturating_mul(100) / copy.estimated_total_bytes.max(1);
            format!(
                "{} / {} ({}%)",
                HumanBytes(copy.estimated_copied_bytes),
                HumanBytes(copy.estimated_total_bytes),
                percent.min(100)
            )
        }
        None => "-".into(),
    }
}

fn change_stream_text(progress: &Progress) -> Option<String> {
    let stream = progress.change_stream.as_ref()?;
    let stage = stream.stage.map_or("not started", stage_name);
    Some(format!(
        "{stage} · {} · {} applied · {} spooled · {}",
        plural(u64::from(stream.tasks), "task", "tasks"),
        stream.events_applied,
        stream.events_spooled,
        plural(stream.repairs, "repair", "repairs")
    ))
}

fn lag_text(progress: &Progress) -> String {
    progress.lag_time_seconds.map_or_else(|| "-".into(), |lag| format!("{lag}s"))
}

fn verification_text(progress: &Progress) -> Option<String> {
    let verification = progress.verification.as_ref()?;
    let (source, destination) = (&verification.source, &verification.destination);
    if source.phase == crate::progress::verification_phase::DISABLED {
        return Some("disabled".into());
    }
    Some(format!(
        "{} · {}/{} documents hashed on the source, {} on the destination · {}/{} collections",
        source.phase,
        source.hashed_document_count,
        source.estimated_document_count,
        destination.hashed_document_count,
        source.scanned_collection_count,
        source.total_collection_count
    ))
}

/// `VerificationFailed: documents differ (namespace db.b, range all _id values)`.
pub fn failure(progress: &Progress) -> String {
    let mut text = format!(
        "{}: {}",
        progress.error.as_deref().unwrap_or("unknown error"),
        progress.error_description.as_deref().unwrap_or("no description")
    );
    let details: Vec<String> = [("namespace", &progress.error_namespace), ("range", &progress.error_range)]
        .into_iter()
        .filter_map(|(label, value)| value.as_ref().map(|value| format!("{label} {value}")))
        .collect();
    if !details.is_empty() {
        write!(text, " ({})", details.join(", ")).unwrap_or_default();
    }
    text
}

fn collection_line(collection: &CollectionProgress) -> String {
    format!(
        "{} / {} · {} · {}/{} partitions",
        HumanBytes(collection.estimated_copied_bytes),
        HumanBytes(collection.estimated_total_bytes),
        plural(collection.documents_copied, "document", "documents"),
        collection.partitions_done,
        collection.partitions
    )
}

fn roles_text(roles: &[Role]) -> String {
    let names: Vec<&str> = roles
        .iter()
        .map(|role| match role {
            Role::Coordinator => "coordinator",
            Role::Worker => "worker",
        })
        .collect();
    if names.is_empty() { "-".into() } else { names.join("+") }
}

/// A readable report, one `label  value` line each, ending with a newline.
pub fn summary(progress: &Progress) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: &str| {
        let _ = writeln!(out, "{label:<14}{value}");
    };
    if progress.state == SyncState::Idle {
        line("state", "IDLE (no migration started; start one with `clustersync ctl start`)");
        return out;
    }
    line("state", &headline_state(progress));
    line("can commit", yes_no(progress.can_commit));
    line("can write", progress.can_write.map_or("-", yes_no));
    if let Some(mapping) = &progress.direction_mapping {
        line("direction", &format!("{} → {}", mapping.source, mapping.destination));
    }
    if progress.state == SyncState::Failed || progress.error.is_some() {
        line("error", &failure(progress));
    }
    line("copy", &copy_text(progress));
    if let Some(stream) = change_stream_text(progress) {
        line("change stream", &stream);
    }
    line("lag", &lag_text(progress));
    line("events", &format!("{} applied", progress.total_events_applied.unwrap_or(0)));
    if let Some(verification) = verification_text(progress) {
        line("verification", &verification);
    }
    let collections = progress.collections.as_deref().unwrap_or_default();
    if !collections.is_empty() {
        let done = collections.iter().filter(|c| c.partitions > 0 && c.partitions_done == c.partitions).count();
        line("collections", &format!("{} ({done} copied)", collections.len()));
        let width = collections.iter().take(MAX_SUMMARY_COLLECTIONS).map(|c| c.namespace.len()).max().unwrap_or(0);
        for collection in collections.iter().take(MAX_SUMMARY_COLLECTIONS) {
            line("", &format!("{:<width$}  {}", collection.namespace, collection_line(collection)));
        }
        if collections.len() > MAX_SUMMARY_COLLECTIONS {
            line("", &format!("... and {} more (see --json)", collections.len() - MAX_SUMMARY_COLLECTIONS));
        }
    }
    if let Some(fleet) = &progress.fleet {
        let leader = fleet.leader.as_deref().unwrap_or("none elected");
        line("fleet", &format!("{} · leader {leader}", plural(fleet.instances.len() as u64, "instance", "instances")));
        for instance in &fleet.instances {
            let mut text = format!("{}  {}", instance.id, roles_text(&instance.roles));
            if let Some(hostname) = &instance.hostname {
                write!(text, "  {hostname}").unwrap_or_default();
            }
            if let Some(api) = &instance.api_address {
                write!(text, "  api {api}").unwrap_or_default();
            }
            if let Some(lag) = instance.lag_time_seconds {
                write!(text, "  lag {lag}s").unwrap_or_default();
            }
            write!(text, "  {}", plural(instance.tasks.len() as u64, "task", "tasks")).unwrap_or_default();
            line("", &text);
            for task in &instance.tasks {
                let what = task.namespace.as_deref().or(task.shard.as_deref()).unwrap_or("-");
                line(
                    "",
                    &format!(
                        "  {} {} {what} · {} · {}",
                        task.id,
                        task.kind,
                        plural(task.documents, "document", "documents"),
                        HumanBytes(task.bytes)
                    ),
                );
            }
        }
    }
    out
}

/// One line for logs: state, copy, change stream, lag, events, verification.
pub fn one_line(progress: &Progress) -> String {
    if progress.state == SyncState::Idle {
        return "IDLE".into();
    }
    let mut text = format!("{} · copy {}", headline_state(progress), copy_text(progress));
    if let Some(stream) = &progress.change_stream {
        write!(text, " · change stream {}", stream.stage.map_or("not started", stage_name)).unwrap_or_default();
    }
    write!(text, " · lag {} · {} events applied", lag_text(progress), progress.total_events_applied.unwrap_or(0))
        .unwrap_or_default();
    if let Some(verification) = &progress.verification {
        write!(text, " · verification {}", verification.source.phase).unwrap_or_default();
    }
    if progress.state == SyncState::Failed {
        write!(text, " · {}", failure(progress)).unwrap_or_default();
    }
    text
}

/// The change-stream line of the live display: `live · 1 task · lag 0s · 12 applied · 3 spooled`.
fn compact_change_stream(progress: &Progress) -> String {
    let Some(stream) = &progress.change_stream else {
        return "-".into();
    };
    let mut text = format!(
        "{} · {} · lag {} · {} applied · {} spooled",
        stream.stage.map_or("not started", stage_name),
        plural(u64::from(stream.tasks), "task", "tasks"),
        lag_text(progress),
        stream.events_applied,
        stream.events_spooled
    );
    if stream.repairs > 0 {
        write!(text, " · {}", plural(stream.repairs, "repair", "repairs")).unwrap_or_default();
    }
    text
}

/// The verification line of the live display: `hashing · source 10/40 · destination 9 · 1/2 collections`.
fn compact_verification(progress: &Progress) -> String {
    let Some(verification) = &progress.verification else {
        return "-".into();
    };
    let (source, destination) = (&verification.source, &verification.destination);
    if source.phase == crate::progress::verification_phase::DISABLED {
        return "disabled".into();
    }
    format!(
        "{} · source {}/{} · destination {} · {}/{} collections",
        source.phase,
        source.hashed_document_count,
        source.estimated_document_count,
        destination.hashed_document_count,
        source.scanned_collection_count,
        source.total_collection_count
    )
}

/// Width of the namespace column of the live display.
const NAMESPACE_COLUMNS: usize = 18;

/// `text` in at most `width` characters: its end, after an ellipsis, when too long (the end of a
/// namespace tells collections apart better than its start).
fn keep_end(text: &str, width: usize) -> String {
    let length = text.chars().count();
    if length <= width {
        return text.to_string();
    }
    let tail: String = text.chars().skip(length - (width - 1)).collect();
    format!("…{tail}")
}

/// The live display of `progress --watch`.
pub struct WatchDisplay {
    /// Bars on a terminal; `None` prints plain lines instead.
    bars: Option<Bars>,
    /// The last plain line printed (plain mode prints only changes).
    last_line: String,
}

struct Bars {
    multi: MultiProgress,
    state: ProgressBar,
    copy: ProgressBar,
    /// One bar per shown collection, right after `copy`.
    collections: Vec<ProgressBar>,
    /// "... and N more collections", only while some are not shown.
    more: Option<ProgressBar>,
    change_stream: ProgressBar,
    verification: ProgressBar,
    fleet: ProgressBar,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

fn text_line(multi: &MultiProgress) -> ProgressBar {
    let bar = multi.add(ProgressBar::new(0));
    bar.set_style(style("{wide_msg}"));
    bar
}

impl Default for WatchDisplay {
    fn default() -> Self {
        Self::new()
    }
}

impl WatchDisplay {
    /// Bars on stderr when it is a terminal, plain lines on stdout otherwise.
    pub fn new() -> WatchDisplay {
        let multi = MultiProgress::new();
        if multi.is_hidden() {
            return WatchDisplay { bars: None, last_line: String::new() };
        }
        let state = multi.add(ProgressBar::new_spinner());
        state.set_style(style("{spinner:.green} {wide_msg:.bold}"));
        state.enable_steady_tick(Duration::from_millis(120));
        let copy = multi.add(ProgressBar::new(1));
        copy.set_style(style("  copy    [{bar:30.cyan/blue}] {percent:>3}% {bytes}/{total_bytes}"));
        let change_stream = text_line(&multi);
        let verification = text_line(&multi);
        let fleet = text_line(&multi);
        WatchDisplay {
            bars: Some(Bars {
                multi,
                state,
                copy,
                collections: Vec::new(),
                more: None,
                change_stream,
                verification,
                fleet,
            }),
            last_line: String::new(),
        }
    }

    /// Shows a new report.
    pub fn update(&mut self, progress: &Progress) {
        let Some(bars) = &mut self.bars else {
            let line = one_line(progress);
            if line != self.last_line {
                println!("{line}");
                self.last_line = line;
            }
            return;
        };
        // `RUNNING (running: change event application) · canCommit yes · canWrite no`: 80 columns.
        bars.state.set_message(format!(
            "{} · canCommit {} · canWrite {}",
            headline_state(progress).replacen("(phase ", "(", 1),
            yes_no(progress.can_commit),
            progress.can_write.map_or("-", yes_no)
        ));
        if let Some(copy) = progress.collection_copy {
            bars.copy.set_length(copy.estimated_total_bytes.max(copy.estimated_copied_bytes).max(1));
            bars.copy.set_position(copy.estimated_copied_bytes);
        }

        // The collections still copying first, then the rest, up to MAX_COLLECTION_BARS.
        let collections = progress.collections.as_deref().unwrap_or_default();
        let copying = |c: &&CollectionProgress| c.partitions_done < c.partitions;
        let shown: Vec<&CollectionProgress> = collections
            .iter()
            .filter(copying)
            .chain(collections.iter().filter(|c| !copying(c)))
            .take(MAX_COLLECTION_BARS)
            .collect();
        while bars.collections.len() < shown.len() {
            let previous = bars.collections.last().unwrap_or(&bars.copy);
            let bar = bars.multi.insert_after(previous, ProgressBar::new(1));
            bar.set_style(style("    {prefix:<18} [{bar:16.green/white}] {percent:>3}% {bytes:>10} {msg}"));
            bars.collections.push(bar);
        }
        while bars.collections.len() > shown.len() {
            if let Some(bar) = bars.collections.pop() {
                bars.multi.remove(&bar);
            }
        }
        for (bar, collection) in bars.collections.iter().zip(&shown) {
            bar.set_prefix(keep_end(&collection.namespace, NAMESPACE_COLUMNS));
            bar.set_length(collection.estimated_total_bytes.max(collection.estimated_copied_bytes).max(1));
            bar.set_position(collection.estimated_copied_bytes);
            bar.set_message(format!(
                "{} · {}/{}",
                plural(collection.documents_copied, "doc", "docs"),
                collection.partitions_done,
                collection.partitions
            ));
        }
        let hidden = collections.len() - shown.len();
        match (&bars.more, hidden) {
            (Some(more), 0) => {
                bars.multi.remove(more);
                bars.more = None;
            }
            (Some(more), hidden) => more.set_message(format!("    ... and {hidden} more collections")),
            (None, 0) => {}
            (None, hidden) => {
                let more = bars.multi.insert_after(bars.collections.last().unwrap_or(&bars.copy), ProgressBar::new(0));
                more.set_style(style("{wide_msg}"));
                more.set_message(format!("    ... and {hidden} more collections"));
                bars.more = Some(more);
            }
        }
        bars.change_stream.set_message(format!("  stream  {}", compact_change_stream(progress)));
        bars.verification.set_message(format!("  verify  {}", compact_verification(progress)));
        bars.fleet.set_message(match &progress.fleet {
            Some(fleet) => format!(
                "  fleet   {} · leader {} · {} held",
                plural(fleet.instances.len() as u64, "instance", "instances"),
                fleet.leader.as_deref().unwrap_or("none elected"),
                plural(fleet.instances.iter().map(|i| i.tasks.len() as u64).sum(), "task", "tasks")
            ),
            None => String::new(),
        });
    }

    /// Stops drawing; the outcome is printed by the caller (as an error) or here (success).
    pub fn finish(self, error: Option<&CtlError>) {
        if let Some(bars) = self.bars {
            bars.state.disable_steady_tick();
            for bar in [&bars.state, &bars.copy, &bars.change_stream, &bars.verification, &bars.fleet]
                .into_iter()
                .chain(&bars.collections)
                .chain(&bars.more)
            {
                bar.abandon();
            }
        }
        if error.is_none() {
            println!("the migration is COMMITTED");
        }
    }
}

#[cfg(test)]
mod tests {
    use clustersync_common::model::Phase;

    use super::*;
    use crate::progress::{
        ChangeStreamProgress, CollectionCopy, DirectionMapping, Fleet, FleetInstance, FleetTask, Verification,
        VerificationSide,
    };

    fn running() -> Progress {
        let side = |hashed| VerificationSide {
            phase: "hashing".into(),
            hashed_document_count: hashed,
            estimated_document_count: 40,
            scanned_collection_count: 1,
            total_collection_count: 2,
            lag_time_seconds: None,
        };
        Progress {
            state: SyncState::Running,
            can_commit: false,
            can_write: Some(false),
            info: Some("collection copy".into()),
            lag_time_seconds: Some(3),
            total_events_applied: Some(7),
            collection_copy: Some(CollectionCopy { estimated_total_bytes: 4096, estimated_copied_bytes: 2048 }),
            direction_mapping: Some(DirectionMapping {
                source: "cluster0: a:1".into(),
                destination: "cluster1: b:1".into(),
            }),
            mongosync_id: Some("node-a".into()),
            coordinator_id: Some("node-a".into()),
            verification: Some(Verification { source: side(10), destination: side(9) }),
            phase: Some(Phase::Snapshot),
            collections: Some(vec![CollectionProgress {
                namespace: "shop.orders".into(),
                estimated_total_bytes: 4096,
                estimated_copied_bytes: 2048,
                documents_copied: 21,
                documents_recopied: 0,
                partitions: 2,
                partitions_done: 1,
            }]),
            change_stream: Some(ChangeStreamProgress {
                stage: Some(CdcStage::Spooling),
                tasks: 1,
                events_applied: 7,
                events_spooled: 9,
                repairs: 1,
            }),
            fleet: Some(Fleet {
                leader: Some("node-a".into()),
                instances: vec![FleetInstance {
                    id: "node-a".into(),
                    roles: vec![Role::Coordinator, Role::Worker],
                    hostname: Some("vm-1".into()),
                    api_address: Some("127.0.0.1:27182".into()),
                    tasks: vec![FleetTask {
                        id: 1001,
                        kind: "copy".into(),
                        namespace: Some("shop.orders".into()),
                        shard: None,
                        documents: 6,
                        bytes: 600,
                    }],
                    lag_time_seconds: None,
                    events_applied: 7,
                }],
            }),
            ..Progress::idle()
        }
    }

    #[test]
    fn the_summary_shows_every_part_of_the_report() {
        let text = summary(&running());
        for expected in [
            "RUNNING (phase snapshot: collection copy)",
            "can commit    no",
            "cluster0: a:1 → cluster1: b:1",
            "2.00 KiB / 4.00 KiB (50%)",
            "spooling · 1 task · 7 applied · 9 spooled · 1 repair",
            "lag           3s",
            "hashing · 10/40 documents hashed on the source, 9 on the destination · 1/2 collections",
            "shop.orders  2.00 KiB / 4.00 KiB · 21 documents · 1/2 partitions",
            "1 instance · leader node-a",
            "node-a  coordinator+worker  vm-1  api 127.0.0.1:27182  1 task",
            "1001 copy shop.orders · 6 documents · 600 B",
        ] {
            assert!(text.contains(expected), "{expected:?} missing from:\n{text}");
        }
        assert!(!text.contains("error"), "{text}");
        assert!(summary(&Progress::idle()).starts_with("state         IDLE"));
    }

    #[test]
    fn failures_name_the_error_namespace_and_range() {
        let failed = Progress {
            state: SyncState::Failed,
            phase: Some(Phase::Failed),
            info: None,
            error: Some("VerificationFailed".into()),
            error_description: Some("documents differ".into()),
            error_namespace: Some("db.b".into()),
            error_range: Some("all _id values".into()),
            ..running()
        };
        assert_eq!(failure(&failed), "VerificationFailed: documents differ (namespace db.b, range all _id values)");
        assert!(summary(&failed).contains("error         VerificationFailed"));
        assert!(one_line(&failed).starts_with("FAILED (phase failed)"), "{}", one_line(&failed));
        assert!(one_line(&failed).ends_with("range all _id values)"));
    }

    #[test]
    fn long_namespaces_keep_their_end() {
        assert_eq!(keep_end("shop.orders", 18), "shop.orders");
        assert_eq!(keep_end("many.collection_with_a_long_name_07", 18), "…th_a_long_name_07");
        assert_eq!(keep_end("many.collection_with_a_long_name_07", 18).chars().count(), 18);
    }

    #[test]
    fn the_copy_reads_not_started_before_planning() {
        let setup = Progress {
            collection_copy: Some(CollectionCopy { estimated_total_bytes: 1, estimated_copied_bytes: 0 }),
            ..running()
        };
        assert!(one_line(&setup).contains("copy not started"), "{}", one_line(&setup));
        let overshoot = Progress {
            collection_copy: Some(CollectionCopy { estimated_total_bytes: 100, estimated_copied_bytes: 150 }),
            ..running()
        };
        assert!(one_line(&overshoot).contains("(100%)"));
    }
}
