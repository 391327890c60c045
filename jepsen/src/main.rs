//! `ordo-jepsen`: check histories (and, to come, run faults against a real cluster).
//!
//! `ordo-jepsen check --workload register --history FILE` checks a saved history and exits
//! 0 (valid), 1 (anomalies found) or 2 (could not check).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ordo_jepsen::{append, bank, history, inventory, register};

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
        /// register or append (inventory and bank come next).
        #[arg(long)]
        workload: String,
        /// Comma-separated: kill, pause (partition, clock and membership come next).
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
    },
    /// Check a saved history (JSONL).
    Check {
        /// inventory, bank, append or register.
        #[arg(long)]
        workload: String,
        #[arg(long)]
        history: PathBuf,
    },
}

const VALID: u8 = 0;
const ANOMALIES: u8 = 1;
const UNKNOWN: u8 = 2;

fn read_history(path: &PathBuf) -> anyhow::Result<Vec<history::Event>> {
    let file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
    history::read_jsonl(std::io::BufReader::new(file))
}

/// The history's client operations, invocations paired with completions.
fn read_ops(path: &PathBuf) -> anyhow::Result<Vec<history::Operation>> {
    history::pair(&read_history(path)?)
}

fn check_register(path: &PathBuf) -> anyhow::Result<u8> {
    let ops = read_ops(path)?;
    let verdicts = register::check(&ops).map_err(|e| anyhow::anyhow!(e))?;
    let mut code = VALID;
    for v in &verdicts {
        let key = v
            .key
            .as_ref()
            .map(|k| k.to_string())
            .unwrap_or_else(|| "-".into());
        match v.verdict {
            register::Verdict::Linearizable => {}
            register::Verdict::NotLinearizable { stuck_at } => {
                code = ANOMALIES;
                let op = &ops[stuck_at];
                println!(
                    "key {key}: NOT linearizable ({} operations); no order gets past {} {} by process {:?} (events {}..{})",
                    v.ops, op.f, op.invoke_value, op.process, op.invoke_index,
                    if op.complete_index == u64::MAX { "open".to_string() } else { op.complete_index.to_string() }
                );
            }
            register::Verdict::Unknown => {
                if code == VALID {
                    code = UNKNOWN;
                }
                println!(
                    "key {key}: unknown: the search passed {} states",
                    register::SEARCH_STATES_MAX
                );
            }
        }
    }
    if code == VALID {
        println!(
            "valid: {} keys, {} operations, every key linearizable",
            verdicts.len(),
            ops.len()
        );
    }
    Ok(code)
}

fn check_bank(path: &PathBuf) -> anyhow::Result<u8> {
    let events = read_history(path)?;
    let (report, count) = bank::check(&events).map_err(|e| anyhow::anyhow!(e))?;
    for a in &report.anomalies {
        println!("event {}: {}", a.event_index, a.message);
    }
    if count == 0 {
        println!(
            "valid: {} reads, every one totals {}",
            report.reads,
            report
                .total
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into())
        );
        Ok(VALID)
    } else {
        println!("{count} anomalies in {} reads", report.reads);
        Ok(ANOMALIES)
    }
}

fn check_append(path: &PathBuf) -> anyhow::Result<u8> {
    let ops = read_ops(path)?;
    let report = append::check(&ops).map_err(|e| anyhow::anyhow!(e))?;
    for a in &report.anomalies {
        println!("{}: {}", a.kind, a.explanation);
    }
    if report.counts.is_empty() {
        println!("valid: {} transactions, no anomalies", report.txns);
        Ok(VALID)
    } else {
        let counts: Vec<String> = report
            .counts
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!(
            "anomalies in {} transactions: {}",
            report.txns,
            counts.join(", ")
        );
        Ok(ANOMALIES)
    }
}

fn check_inventory(path: &PathBuf) -> anyhow::Result<u8> {
    let events = read_history(path)?;
    let ops = history::pair(&events)?;
    let report = inventory::check(&events, &ops).map_err(|e| anyhow::anyhow!(e))?;
    for a in &report.anomalies {
        println!("{a}");
    }
    println!(
        "{} keys, {} acknowledged and {} indeterminate orders: {}",
        report.keys,
        report.orders_ok,
        report.orders_indeterminate,
        if report.anomalies.is_empty() {
            "valid"
        } else {
            "ANOMALIES"
        }
    );
    Ok(if report.anomalies.is_empty() {
        VALID
    } else {
        ANOMALIES
    })
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { UNKNOWN } else { 0 });
        }
    };
    let (workload, history) = match cli.command {
        Command::Check { workload, history } => (workload, history),
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
        } => {
            let run = || -> anyhow::Result<u8> {
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
                };
                tokio::runtime::Runtime::new()?.block_on(ordo_jepsen::runner::run(opts))
            };
            return match run() {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(UNKNOWN)
                }
            };
        }
    };
    let result = match workload.as_str() {
        "register" => check_register(&history),
        "bank" => check_bank(&history),
        "append" => check_append(&history),
        "inventory" => check_inventory(&history),
        other => Err(anyhow::anyhow!(
            "unknown workload {other:?}: inventory, bank, append or register"
        )),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(UNKNOWN)
        }
    }
}
