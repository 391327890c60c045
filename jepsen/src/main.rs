//! `ordo-jepsen`: run workloads against a real Ordo cluster under faults, and check histories.
//!
//! `ordo-jepsen check --workload register --history FILE` checks a saved history and exits
//! 0 (valid), 1 (anomalies found) or 2 (could not check). A `watch` history is checked with
//! the consumers' feed records of its run directory (`watch/*.jsonl` beside it).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ordo_jepsen::checks::{self, UNKNOWN};
use ordo_jepsen::history;

#[derive(Parser)]
#[command(
    name = "ordo-jepsen",
    version,
    about = "Ordo's fault-test runner and history checkers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a workload against a real cluster under faults, then check the history.
    Run {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Seconds of workload.
        #[arg(long, default_value_t = 30)]
        time_limit: u64,
        /// inventory, bank, append, register or watch (the inventory workload with change-feed
        /// consumers following Watch through the faults).
        #[arg(long)]
        workload: String,
        /// Comma-separated, any of: partition, kill, pause, clock, membership. `partition` needs
        /// root, iproute2 and iptables; without them the run is refused.
        #[arg(long, value_delimiter = ',', default_value = "kill")]
        nemesis: Vec<String>,
        /// Operations per second, all processes together.
        #[arg(long, default_value_t = 50.0)]
        rate: f64,
        /// Logical client processes.
        #[arg(long, default_value_t = 5)]
        concurrency: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value = "jepsen-results")]
        out: PathBuf,
        /// The `ordo` binary [default: next to this binary].
        #[arg(long)]
        ordo_bin: Option<PathBuf>,
        /// An extra argument for every `ordo server`, repeatable: `--server-arg=--snapshot-every
        /// --server-arg=100` (snapshots every 100 epochs, so a node that falls behind installs
        /// one and its change feed starts after it).
        #[arg(long = "server-arg", allow_hyphen_values = true)]
        server_args: Vec<String>,
        /// The CA (PEM) of the nodes' client-port certificates: clients use https:// and TLS.
        /// Give the nodes theirs with --server-arg=--tls-cert --server-arg=FILE and
        /// --tls-key likewise (`ordo certs generate --host 127.0.0.11 ...` for the
        /// partition nemesis' addresses).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// inventory and bank: before the workload, load this many more stock rows (1,000
        /// SKUs a DC, each DC one RestockDc, on DCs and SKUs the workload never touches), so
        /// that every snapshot, and every install a fault causes, carries a state this big.
        #[arg(long, default_value_t = 0)]
        stock_rows: u64,
    },
    /// Check a saved history (JSONL).
    Check {
        /// inventory, bank, append, register or watch.
        #[arg(long)]
        workload: String,
        #[arg(long)]
        history: PathBuf,
    },
}

fn read_history(path: &PathBuf) -> anyhow::Result<Vec<history::Event>> {
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    history::read_jsonl(std::io::BufReader::new(file))
}

/// `check`: prints the anomalies, then a verdict line; returns the exit code.
fn check(workload: &str, path: &PathBuf) -> anyhow::Result<u8> {
    let run_dir = path.parent().unwrap_or(std::path::Path::new("."));
    let verdict = checks::check_run(workload, &read_history(path)?, run_dir)?;
    for e in &verdict.examples {
        println!("{e}");
    }
    let word = match verdict.valid {
        Some(true) => "valid",
        Some(false) => "ANOMALIES",
        None => "unknown",
    };
    println!("{word}: {}", verdict.summary);
    Ok(verdict.exit_code())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { UNKNOWN } else { 0 });
        }
    };
    let result = match cli.command {
        Command::Check { workload, history } => check(&workload, &history),
        Command::Run {
            nodes,
            time_limit,
            workload,
            nemesis,
            rate,
            concurrency,
            seed,
            out,
            ordo_bin,
            server_args,
            ca,
            stock_rows,
        } => (|| {
            let ordo_bin = match ordo_bin {
                Some(b) => b,
                None => std::env::current_exe()?.with_file_name("ordo"),
            };
            anyhow::ensure!(
                ordo_bin.is_file(),
                "no ordo binary at {} (cargo build --bin ordo, or --ordo-bin)",
                ordo_bin.display()
            );
            anyhow::ensure!(
                nodes >= 1 && concurrency >= 1 && rate > 0.0,
                "--nodes, --concurrency and --rate must be positive"
            );
            anyhow::ensure!(
                stock_rows == 0 || matches!(workload.as_str(), "inventory" | "bank"),
                "--stock-rows is for the inventory and bank workloads"
            );
            let opts = ordo_jepsen::runner::RunOpts {
                nodes,
                time_limit: std::time::Duration::from_secs(time_limit),
                workload,
                nemesis,
                rate,
                concurrency,
                seed,
                out,
                ordo_bin,
                server_args,
                ca,
                stock_rows,
            };
            tokio::runtime::Runtime::new()?.block_on(ordo_jepsen::runner::run(opts))
        })(),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(UNKNOWN)
        }
    }
}
