//! The command line of the `clustersync` binary, and the verifier disclaimer prompt.
//!
//! The default command runs one process that is both coordinator and worker, like mongosync,
//! with mongosync's flag names (`--cluster0`, `--logPath`, `--acceptDisclaimer`, ...). The
//! `coordinator` and `worker` subcommands run one role each against etcd (distributed mode).
//! Every flag can also come from an environment variable or the `--config` YAML file; the
//! merge happens in [`crate::config`].
//!
//! `clustersync ctl` is a client, not a process of the fleet: it drives a migration through the
//! gRPC API of any coordinator ([`CtlArgs`], run by [`crate::ctl`]) and needs no cluster URIs.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Help text listing the environment variables, shown after `--help`.
const ENVIRONMENT_HELP: &str = "\
Environment variables (a flag wins over its variable, a variable over the config file):
  CLUSTERSYNC_CLUSTER0         --cluster0
  CLUSTERSYNC_CLUSTER1         --cluster1
  CLUSTERSYNC_PORT             --port
  CLUSTERSYNC_GRPC_PORT        --grpcPort
  CLUSTERSYNC_ID               --id
  CLUSTERSYNC_VERBOSITY        --verbosity
  CLUSTERSYNC_STATE_DIR        --stateDir
  CLUSTERSYNC_ETCD_ENDPOINTS   --etcd (comma-separated)";

/// `clustersync`: MongoDB cluster-to-cluster sync, driven through a mongosync-compatible REST API.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "clustersync",
    version,
    about = "MongoDB cluster-to-cluster sync, driven like mongosync through a REST API on 127.0.0.1:27182",
    long_about = None,
    args_conflicts_with_subcommands = true,
    after_help = ENVIRONMENT_HELP
)]
pub struct Cli {
    /// Distributed mode: run one role against etcd. Without a subcommand, one process runs
    /// everything with an embedded coordination store.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Flags of the default (single-process) command.
    #[command(flatten)]
    pub run: RunArgs,
}

/// The distributed-mode subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Runs the control plane (REST API, planning, the sync state machine) against etcd.
    Coordinator(DistributedArgs),
    /// Runs a data-plane worker that claims copy, change-stream and verification tasks from etcd.
    Worker(DistributedArgs),
    /// Drives a running migration through the gRPC API of any coordinator: start, progress,
    /// pause, resume, commit, reverse.
    Ctl(CtlArgs),
}

/// Flags of the `coordinator` and `worker` subcommands.
#[derive(Debug, Clone, Args)]
pub struct DistributedArgs {
    /// etcd endpoints, comma-separated (e.g. http://10.0.0.1:2379,http://10.0.0.2:2379).
    #[arg(long = "etcd", value_name = "ENDPOINTS", value_delimiter = ',')]
    pub etcd: Vec<String>,

    /// The flags shared with the default command.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Flags shared by every mode. Every field is optional here: unset flags fall back to the
/// environment, then the config file, then the default (see [`crate::config::Config::load`]).
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// Connection string of cluster0 (mongodb:// or mongodb+srv://).
    #[arg(long = "cluster0", value_name = "URI")]
    pub cluster0: Option<String>,

    /// Connection string of cluster1 (mongodb:// or mongodb+srv://).
    #[arg(long = "cluster1", value_name = "URI")]
    pub cluster1: Option<String>,

    /// Port of the REST API [default: 27182].
    #[arg(long = "port", value_name = "PORT")]
    pub port: Option<u16>,

    /// Port of the gRPC API, on the same address as the REST API; 0 picks a free port
    /// [default: 27183].
    #[arg(long = "grpcPort", alias = "grpc-port", value_name = "PORT")]
    pub grpc_port: Option<u16>,

    /// Address the REST API binds to [default: 127.0.0.1]. The API has no authentication:
    /// bind it to anything else only behind your own access control.
    #[arg(long = "bindAddress", alias = "bind-address", value_name = "IP")]
    pub bind_address: Option<String>,

    /// Identity of this process, reported as mongosyncID [default: a random id per start].
    #[arg(long = "id", value_name = "ID")]
    pub id: Option<String>,

    /// YAML configuration file; its keys match the flag names.
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Directory for JSON log files (clustersync.log); logs also go to stderr.
    #[arg(long = "logPath", alias = "log-path", value_name = "DIR")]
    pub log_path: Option<PathBuf>,

    /// Log level: TRACE, DEBUG, INFO, WARN, ERROR, FATAL or PANIC [default: INFO].
    #[arg(long = "verbosity", value_name = "LEVEL")]
    pub verbosity: Option<String>,

    /// Accepts the embedded verifier disclaimer without prompting.
    #[arg(long = "acceptDisclaimer", alias = "accept-disclaimer")]
    pub accept_disclaimer: bool,

    /// Directory of the embedded coordination store (single-process mode)
    /// [default: ./clustersync-state/<migrationName>].
    #[arg(long = "stateDir", alias = "state-dir", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Name of the migration; several migrations can share one etcd [default: default].
    #[arg(long = "migrationName", alias = "migration-name", value_name = "NAME")]
    pub migration_name: Option<String>,
}

/// Which roles the process runs, as chosen on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The default command: coordinator and worker in one process.
    Single,
    /// `clustersync coordinator`.
    Coordinator,
    /// `clustersync worker`.
    Worker,
}

impl Mode {
    /// The name used in messages (`single-process`, `coordinator`, `worker`).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Single => "single-process",
            Mode::Coordinator => "coordinator",
            Mode::Worker => "worker",
        }
    }

    /// Whether this mode runs the control plane (and so serves the REST API).
    pub fn runs_coordinator(self) -> bool {
        matches!(self, Mode::Single | Mode::Coordinator)
    }

    /// Whether this mode runs data-plane tasks.
    pub fn runs_worker(self) -> bool {
        matches!(self, Mode::Single | Mode::Worker)
    }
}

impl Cli {
    /// The mode, the shared flags and the etcd endpoints given with `--etcd`.
    ///
    /// `ctl` runs no role and is dispatched before this is asked; for it this returns the
    /// default command with no flags set.
    pub fn parts(&self) -> (Mode, &RunArgs, &[String]) {
        match &self.command {
            None | Some(Command::Ctl(_)) => (Mode::Single, &self.run, &[]),
            Some(Command::Coordinator(args)) => (Mode::Coordinator, &args.run, &args.etcd),
            Some(Command::Worker(args)) => (Mode::Worker, &args.run, &args.etcd),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// clustersync ctl
// ---------------------------------------------------------------------------------------------

/// Default address of `clustersync ctl`: the gRPC API of a coordinator on this machine.
pub const DEFAULT_CTL_ADDRESS: &str = "http://127.0.0.1:27183";

/// Environment variable holding the address of `clustersync ctl`.
pub const CTL_ADDRESS_ENV: &str = "CLUSTERSYNC_CTL_ADDRESS";

/// Help text of `clustersync ctl`, shown after `--help`.
const CTL_HELP: &str = "\
Exit codes: 0 success; 1 the server refused or failed the command (its error name is printed, e.g.
InvalidState); 2 bad command line or --json body; 3 the gRPC API could not be reached; 4 the
migration FAILED (progress --watch); 130 interrupted.";

/// `clustersync ctl`: the command-line client of the gRPC API.
#[derive(Debug, Clone, Args)]
#[command(after_help = CTL_HELP)]
pub struct CtlArgs {
    /// gRPC address of a coordinator (`http://host:port`; `host:port` is accepted).
    #[arg(long = "address", value_name = "URL", env = CTL_ADDRESS_ENV, default_value = DEFAULT_CTL_ADDRESS, global = true)]
    pub address: String,

    /// Seconds to wait for the connection and for each reply (not for a watch).
    #[arg(long = "timeout", value_name = "SECONDS", default_value_t = 60, global = true)]
    pub timeout_seconds: u64,

    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The commands of `clustersync ctl`.
#[derive(Debug, Clone, Subcommand)]
pub enum CtlCommand {
    /// Starts the migration (REST: POST /api/v1/start), with options as flags or a JSON body.
    Start(CtlStartArgs),
    /// Shows the progress of the migration and its fleet (REST: GET /api/v1/progress).
    Progress(CtlProgressArgs),
    /// Pauses a RUNNING migration.
    Pause,
    /// Resumes a PAUSED migration.
    Resume,
    /// Commits a RUNNING migration once canCommit is true.
    Commit,
    /// Reverses a COMMITTED, reversible migration (not supported yet).
    Reverse,
}

/// Values of `--source` and `--destination`.
pub const CLUSTER_NAMES: [&str; 2] = ["cluster0", "cluster1"];

/// Options of `clustersync ctl start`; the flags build the same body REST `/start` takes.
#[derive(Debug, Clone, Default, Args)]
pub struct CtlStartArgs {
    /// The source cluster [default: cluster0, or the other one than --destination].
    #[arg(long = "source", value_name = "CLUSTER", value_parser = CLUSTER_NAMES)]
    pub source: Option<String>,

    /// The destination cluster [default: the other one than the source].
    #[arg(long = "destination", value_name = "CLUSTER", value_parser = CLUSTER_NAMES)]
    pub destination: Option<String>,

    /// When indexes are built: beforeDataCopy (default), afterDataCopy, excludeHashed,
    /// excludeHashedAfterCopy or never.
    #[arg(long = "build-indexes", value_name = "WHEN", value_parser = crate::api::body::BUILD_INDEXES_VALUES)]
    pub build_indexes: Option<String>,

    /// enableUserWriteBlocking: destinationOnly (default), sourceAndDestination or none.
    #[arg(long = "write-blocking", value_name = "MODE", value_parser = crate::api::body::WRITE_BLOCKING_VALUES)]
    pub write_blocking: Option<String>,

    /// Syncs only these namespaces (repeatable): `db`, `db.coll`, `db./regex/options` for
    /// collections matching a regex, `/regex/options` for databases matching a regex.
    #[arg(long = "include", value_name = "NAMESPACE")]
    pub include: Vec<String>,

    /// Does not sync these namespaces (repeatable; same forms as --include).
    #[arg(long = "exclude", value_name = "NAMESPACE")]
    pub exclude: Vec<String>,

    /// Allows /reverse after the commit (needs --write-blocking sourceAndDestination).
    #[arg(long = "reversible")]
    pub reversible: bool,

    /// Turns the embedded verifier off.
    #[arg(long = "no-verification")]
    pub no_verification: bool,

    /// The REST /start body, from a file or `-` for stdin, instead of the flags above (the
    /// only way to give `sharding`).
    #[arg(
        long = "json",
        value_name = "FILE|-",
        conflicts_with_all = ["source", "destination", "build_indexes", "write_blocking", "include", "exclude", "reversible", "no_verification"]
    )]
    pub json: Option<String>,
}

/// Options of `clustersync ctl progress`.
#[derive(Debug, Clone, Default, Args)]
pub struct CtlProgressArgs {
    /// Prints the report as JSON, exactly as REST /progress does (one line per report with
    /// --watch).
    #[arg(long = "json")]
    pub json: bool,

    /// Follows the migration with live progress bars until COMMITTED or FAILED (or Ctrl-C).
    #[arg(long = "watch")]
    pub watch: bool,

    /// With --watch: refresh at least this often, in milliseconds.
    #[arg(long = "interval", value_name = "MS", default_value_t = 1000, requires = "watch")]
    pub interval_ms: u32,
}

/// The embedded verifier disclaimer, shown at start-up unless accepted with `--acceptDisclaimer`.
pub const DISCLAIMER: &str = "\
Embedded verification is enabled by default. During /commit, once the change streams have \
drained and before canWrite turns true, clustersync compares every copied collection on the \
source and the destination, and fails the migration instead of committing if anything differs. \
It works range by range, hashing each _id range on both sides in _id order, so its memory use \
stays constant whatever the size of the data, and a difference is reported with the exact \
namespace and _id range. It checks document contents and counts, and each collection's indexes \
and options. It does not check users and roles (they are never synced), internal and system \
collections, or writes made to the destination by others. To skip this prompt, start with \
--acceptDisclaimer (or acceptDisclaimer: true in the config file). To disable verification, \
start the sync with \"verification\": {\"enabled\": false} in the body of /api/v1/start and \
check the data by other means.";

/// Why the disclaimer was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DisclaimerError {
    /// stdin is not a terminal, so nobody can answer the prompt.
    #[error(
        "the verifier disclaimer needs an answer but stdin is not a terminal: pass --acceptDisclaimer \
         (or set acceptDisclaimer: true in the config file) to accept it"
    )]
    NotInteractive,
    /// The user answered no (or closed stdin).
    #[error("the verifier disclaimer was declined")]
    Declined,
    /// Reading the answer failed.
    #[error("cannot read the answer to the verifier disclaimer: {0}")]
    Io(String),
}

/// Shows [`DISCLAIMER`] on `output` and asks `(y/n)` on `input` until it gets an answer.
///
/// # Errors
///
/// [`DisclaimerError::NotInteractive`] when `interactive` is false (stdin is not a terminal),
/// [`DisclaimerError::Declined`] on "n" or end of input.
pub fn confirm_disclaimer(
    input: &mut dyn BufRead,
    output: &mut dyn Write,
    interactive: bool,
) -> Result<(), DisclaimerError> {
    let io = |error: std::io::Error| DisclaimerError::Io(error.to_string());
    writeln!(output, "{DISCLAIMER}").map_err(io)?;
    if !interactive {
        return Err(DisclaimerError::NotInteractive);
    }
    loop {
        write!(output, "Do you want to continue? (y/n): ").map_err(io)?;
        output.flush().map_err(io)?;
        let mut answer = String::new();
        if input.read_line(&mut answer).map_err(io)? == 0 {
            return Err(DisclaimerError::Declined);
        }
        match answer.trim().to_ascii_lowercase().as_str() {
            "y" | "yes" => return Ok(()),
            "n" | "no" => return Err(DisclaimerError::Declined),
            _ => writeln!(output, "please answer y or n").map_err(io)?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("clustersync").chain(args.iter().copied()))
    }

    #[test]
    fn default_command_takes_mongosync_flag_names() {
        let cli = parse(&[
            "--cluster0",
            "mongodb://a",
            "--cluster1",
            "mongodb://b",
            "--port",
            "27183",
            "--logPath",
            "/tmp/logs",
            "--verbosity",
            "debug",
            "--acceptDisclaimer",
            "--migrationName",
            "m1",
            "--id",
            "node-1",
        ])
        .unwrap();
        let (mode, run, etcd) = cli.parts();
        assert_eq!(mode, Mode::Single);
        assert!(etcd.is_empty());
        assert_eq!(run.cluster0.as_deref(), Some("mongodb://a"));
        assert_eq!(run.port, Some(27183));
        assert_eq!(run.log_path, Some(PathBuf::from("/tmp/logs")));
        assert!(run.accept_disclaimer);
        assert_eq!(run.migration_name.as_deref(), Some("m1"));
    }

    #[test]
    fn state_dir_accepts_both_spellings() {
        for flag in ["--stateDir", "--state-dir"] {
            let cli = parse(&[flag, "/var/lib/cs"]).unwrap();
            assert_eq!(cli.run.state_dir, Some(PathBuf::from("/var/lib/cs")), "{flag}");
        }
    }

    #[test]
    fn subcommands_take_etcd_endpoints_and_the_shared_flags() {
        let cli =
            parse(&["coordinator", "--etcd", "http://e1:2379,http://e2:2379", "--cluster0", "mongodb://a"]).unwrap();
        let (mode, run, etcd) = cli.parts();
        assert_eq!(mode, Mode::Coordinator);
        assert_eq!(etcd, ["http://e1:2379", "http://e2:2379"]);
        assert_eq!(run.cluster0.as_deref(), Some("mongodb://a"));
        assert!(mode.runs_coordinator() && !mode.runs_worker());

        let cli = parse(&["worker", "--etcd", "e1:2379"]).unwrap();
        assert_eq!(cli.parts().0, Mode::Worker);
        assert!(cli.parts().0.runs_worker());
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        let error = parse(&["--bogus"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("--bogus"), "{error}");
        let error = parse(&["--port", "70000"]).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("70000"), "{error}");
        // `--etcd` belongs to the distributed subcommands only.
        assert!(parse(&["--etcd", "e1:2379"]).is_err());
    }

    fn ctl_of(cli: &Cli) -> &CtlArgs {
        match &cli.command {
            Some(Command::Ctl(args)) => args,
            other => panic!("not a ctl command: {other:?}"),
        }
    }

    #[test]
    fn ctl_takes_its_own_commands_and_no_cluster_flags() {
        let cli = parse(&["ctl", "progress", "--watch", "--interval", "250"]).unwrap();
        let ctl = ctl_of(&cli);
        assert_eq!(ctl.timeout_seconds, 60);
        match &ctl.command {
            CtlCommand::Progress(progress) => assert!(progress.watch && !progress.json && progress.interval_ms == 250),
            other => panic!("{other:?}"),
        }
        assert_eq!(cli.parts().0, Mode::Single, "ctl runs no role");

        // --address is global: before or after the command.
        let cli = parse(&["ctl", "pause", "--address", "10.0.0.1:27183"]).unwrap();
        assert_eq!(ctl_of(&cli).address, "10.0.0.1:27183");
        assert!(matches!(ctl_of(&cli).command, CtlCommand::Pause));
        let cli = parse(&["ctl", "--address", "http://h:1", "commit"]).unwrap();
        assert_eq!(ctl_of(&cli).address, "http://h:1");

        let cli = parse(&[
            "ctl",
            "start",
            "--source",
            "cluster1",
            "--build-indexes",
            "never",
            "--write-blocking",
            "none",
            "--include",
            "a.b",
            "--include",
            "c",
            "--exclude",
            "c.tmp",
            "--no-verification",
        ])
        .unwrap();
        match &ctl_of(&cli).command {
            CtlCommand::Start(start) => {
                assert_eq!(start.source.as_deref(), Some("cluster1"));
                assert_eq!(start.include, ["a.b", "c"]);
                assert!(start.no_verification && !start.reversible && start.json.is_none());
            }
            other => panic!("{other:?}"),
        }

        for bad in [
            &["ctl", "start", "--json", "-", "--reversible"][..],
            &["ctl", "start", "--build-indexes", "later"],
            &["ctl", "start", "--source", "cluster2"],
            &["ctl", "progress", "--interval", "5"],
            &["ctl", "--cluster0", "mongodb://a", "progress"],
            &["ctl"],
        ] {
            let error = parse(bad).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{bad:?}: {error}");
        }
    }

    #[test]
    fn disclaimer_needs_a_terminal_or_the_flag() {
        let mut output = Vec::new();
        let error = confirm_disclaimer(&mut std::io::empty(), &mut output, false).unwrap_err();
        assert_eq!(error, DisclaimerError::NotInteractive);
        assert!(error.to_string().contains("--acceptDisclaimer"));
        assert!(String::from_utf8(output).unwrap().contains("stays constant whatever the size"));
    }

    #[test]
    fn disclaimer_asks_until_it_gets_an_answer() {
        let mut output = Vec::new();
        let mut input = std::io::Cursor::new(b"maybe\nY\n".to_vec());
        confirm_disclaimer(&mut input, &mut output, true).unwrap();
        let shown = String::from_utf8(output).unwrap();
        assert_eq!(shown.matches("(y/n)").count(), 2, "{shown}");

        let mut input = std::io::Cursor::new(b"n\n".to_vec());
        assert_eq!(confirm_disclaimer(&mut input, &mut Vec::new(), true), Err(DisclaimerError::Declined));
        let mut input = std::io::Cursor::new(Vec::new());
        assert_eq!(confirm_disclaimer(&mut input, &mut Vec::new(), true), Err(DisclaimerError::Declined));
    }
}
