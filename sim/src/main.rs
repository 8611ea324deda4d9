//! `drover-sim`: runs drover's real node stack under simulated time, network and faults, and
//! checks the safety and liveness invariants of DESIGN.md 7. See the README's "Simulator"
//! section and `drover-sim --help`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use drover_sim::world::Mutation;
use drover_sim::{det, scenario, Outcome, RunConfig};

#[derive(Parser)]
#[command(
    name = "drover-sim",
    version,
    about = "Deterministic simulation of a drover cluster: real nodes, simulated time, network and faults",
    after_help = "Scenarios (--scenario):\n  mix                        one of the below, chosen by the seed (default)\n".to_string()
        + &scenario::SCENARIOS.iter().map(|(n, d)| format!("  {n:<26} {d}\n")).collect::<String>()
)]
struct Cli {
    /// Run one seed.
    #[arg(long, conflicts_with_all = ["seeds", "runs"])]
    seed: Option<u64>,
    /// Run a range of seeds, `A..B` (B excluded).
    #[arg(long, value_parser = parse_range, conflicts_with = "runs")]
    seeds: Option<(u64, u64)>,
    /// Run seeds 1..=K.
    #[arg(long)]
    runs: Option<u64>,
    /// Scenario name, or `mix`.
    #[arg(long, default_value = scenario::MIX)]
    scenario: String,
    /// Simulated length of each run, in minutes (at least 1).
    #[arg(long, default_value_t = 2.0)]
    minutes: f64,
    /// Cluster size: 3, 5 or 7 nodes (always one witness).
    #[arg(long, default_value_t = 5, value_parser = parse_size)]
    nodes: usize,
    /// Simulated time per step in milliseconds, 1 to 10: finer resolves faster races,
    /// coarser runs faster.
    #[arg(long, default_value_t = 10, value_parser = parse_tick)]
    tick_ms: u64,
    /// Print every event of the run (one seed; ignored with several).
    #[arg(long)]
    trace: bool,
    /// Run each seed twice and fail if the two traces differ.
    #[arg(long)]
    check_determinism: bool,
    /// Plant a defect the checkers must catch: lying-fence, clock-beyond-drift, lying-disk,
    /// no-lease-wait, no-reactivate, switchover-early-activate, repair-old-epoch or no-repair.
    #[arg(long, value_parser = parse_mutation)]
    mutate: Option<Mutation>,
    /// Run seeds in N worker processes at once (a fresh process per run: the clock overrides
    /// are process-wide, and a run is deterministic as the first in its process). Results are
    /// reported in seed order, as with one.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    jobs: u64,
    /// Internal: run the seed read from stdin, its JSON outcome on stdout.
    #[arg(long, hide = true)]
    worker: bool,
}

/// `DROVER_SIM_LOG=<filter>` (tracing's env-filter syntax, e.g. `info` or
/// `drover::runtime::election=debug`) prints the nodes' log lines to stderr, each with the
/// simulated time and its host: for reading one seed's run next to its `--trace`.
fn log_from_env() {
    let Ok(filter) = std::env::var("DROVER_SIM_LOG") else { return };
    struct SimTime;
    impl tracing_subscriber::fmt::time::FormatTime for SimTime {
        fn format_time(
            &self,
            w: &mut tracing_subscriber::fmt::format::Writer<'_>,
        ) -> std::fmt::Result {
            let t = if turmoil::in_simulation() { turmoil::sim_elapsed() } else { None };
            write!(w, "{:>10.3}s", t.unwrap_or_default().as_secs_f64())
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_timer(SimTime)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
}

fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once("..").ok_or("expected A..B, e.g. 1..200")?;
    let a: u64 = a.trim().parse().map_err(|_| format!("{a:?} is not a seed"))?;
    let b: u64 = b.trim().parse().map_err(|_| format!("{b:?} is not a seed"))?;
    if b <= a {
        return Err(format!("the range {a}..{b} is empty"));
    }
    Ok((a, b))
}

fn parse_size(s: &str) -> Result<usize, String> {
    match s.parse() {
        Ok(n @ (3 | 5 | 7)) => Ok(n),
        _ => Err(format!("{s:?} is not 3, 5 or 7")),
    }
}

fn parse_tick(s: &str) -> Result<u64, String> {
    match s.parse() {
        Ok(n) if drover_sim::run::TICK_RANGE.contains(&n) => Ok(n),
        _ => Err(format!("{s:?} is not a whole number of milliseconds from 1 to 10")),
    }
}

fn parse_mutation(s: &str) -> Result<Mutation, String> {
    Mutation::parse(s).ok_or_else(|| format!("{s:?} is not {}", Mutation::NAMES))
}

/// The command that replays `o`. The scenario is the one asked for: under `mix` the seed's
/// first draw picks the scenario, so naming the picked one instead would replay another run.
fn replay(cli: &Cli, o: &Outcome) -> String {
    let mut cmd = format!(
        "drover-sim --seed {} --scenario {} --minutes {} --nodes {}",
        o.seed, cli.scenario, cli.minutes, cli.nodes
    );
    if Duration::from_millis(cli.tick_ms) != drover_sim::run::DEFAULT_TICK {
        cmd += &format!(" --tick-ms {}", cli.tick_ms);
    }
    if let Some(m) = cli.mutate {
        cmd += &format!(" --mutate {}", m.name());
    }
    cmd + " --trace"
}

fn report_violation(cli: &Cli, o: &Outcome) {
    for v in &o.violations {
        println!(
            "VIOLATION {} at {:.3}s: {}\n  seed {} scenario {}",
            v.invariant,
            v.at.as_secs_f64(),
            v.detail,
            o.seed,
            o.scenario
        );
    }
    println!("  last {} events:", o.tail.len());
    for line in &o.tail {
        println!("    {line}");
    }
    println!("  replay: {}", replay(cli, o));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    log_from_env();
    if cli.scenario != scenario::MIX && !scenario::names().any(|n| n == cli.scenario) {
        eprintln!(
            "error: unknown scenario {:?}; choose mix or one of: {}",
            cli.scenario,
            scenario::names().collect::<Vec<_>>().join(", ")
        );
        return ExitCode::from(2);
    }
    if !(1.0..=600.0).contains(&cli.minutes) {
        eprintln!("error: --minutes must be between 1 and 600");
        return ExitCode::from(2);
    }
    let seeds: Vec<u64> = match (cli.seed, cli.seeds, cli.runs) {
        (Some(s), _, _) => vec![s],
        (_, Some((a, b)), _) => (a..b).collect(),
        (_, _, Some(k)) => (1..=k).collect(),
        _ => vec![1],
    };
    let single = seeds.len() == 1;
    if cli.worker {
        return worker(&cli);
    }
    let started = det::wall_now();
    let mut outcomes = Vec::new();
    let mut nondeterministic = Vec::new();
    if !single {
        let done = parallel(&cli, &seeds);
        for (o, twin) in done {
            if twin.is_some_and(|(h, _)| h != o.trace_hash) {
                nondeterministic.push(o.seed);
                report_nondeterminism(&o, twin);
            }
            if !o.violations.is_empty() {
                eprintln!();
                report_violation(&cli, &o);
            }
            outcomes.push(o);
        }
    } else {
        let (o, twin) = run_seed(&cli, seeds[0]);
        if twin.is_some_and(|(h, _)| h != o.trace_hash) {
            nondeterministic.push(o.seed);
            report_nondeterminism(&o, twin);
        }
        if !o.violations.is_empty() {
            report_violation(&cli, &o);
        }
        println!(
            "seed {} scenario {}: {} violation(s), {} failover(s), {} switchover(s) ({} rolled back), recovery {}, {:.0}s simulated in {:.1}s ({:.0}x), trace {:016x}",
            o.seed,
            o.scenario,
            o.violations.len(),
            o.failovers,
            o.switchovers,
            o.rolled_back,
            o.recovery.map_or("-".into(), |r| format!("{:.1}s", r.as_secs_f64())),
            o.simulated.as_secs_f64(),
            o.wall.as_secs_f64(),
            o.simulated.as_secs_f64() / o.wall.as_secs_f64().max(1e-9),
            o.trace_hash
        );
        outcomes.push(o);
    }
    if !single {
        eprintln!();
        summary(&outcomes, det::wall_now().saturating_sub(started), cli.jobs);
    }
    let violations = outcomes.iter().filter(|o| !o.violations.is_empty()).count();
    if violations > 0 || !nondeterministic.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn config(cli: &Cli, seed: u64, print_trace: bool) -> RunConfig {
    RunConfig {
        seed,
        scenario: cli.scenario.clone(),
        length: Duration::from_secs_f64(cli.minutes * 60.0),
        nodes: cli.nodes,
        tick: Duration::from_millis(cli.tick_ms),
        mutation: cli.mutate,
        print_trace,
    }
}

/// One seed, in this process; with `--check-determinism`, the (trace hash, events) of a second
/// run in a fresh process.
fn run_seed(cli: &Cli, seed: u64) -> (Outcome, Option<(u64, u64)>) {
    let o = drover_sim::run(&config(cli, seed, cli.trace));
    let twin = cli.check_determinism.then(|| {
        let exe = std::env::current_exe().expect("the simulator's own path");
        run_in_process(cli, &exe, seed).map_or((0, 0), |again| (again.trace_hash, again.events))
    });
    (o, twin)
}

fn report_nondeterminism(o: &Outcome, twin: Option<(u64, u64)>) {
    let (hash, events) = twin.unwrap_or_default();
    println!(
        "NONDETERMINISTIC seed {}: trace hashes {:016x} and {:016x} ({} and {} events)",
        o.seed, o.trace_hash, hash, o.events, events
    );
}

/// `--worker`: the seed read from stdin, its JSON outcome on stdout. One run per process: a run
/// is deterministic as the first in its process (tokio numbers its runtimes process-wide and
/// seeds their schedulers from that count), so every run of `--runs` starts a process of its
/// own and replays exactly with `--seed`.
fn worker(cli: &Cli) -> ExitCode {
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return ExitCode::FAILURE;
    }
    let Ok(seed) = line.trim().parse::<u64>() else { return ExitCode::FAILURE };
    let o = drover_sim::run(&config(cli, seed, false));
    let json = outcome_to_json(&o, None);
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{json}").and_then(|_| out.flush()).is_err() {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Runs `seed` in a fresh worker process; `None` when the worker died or answered nonsense.
fn run_in_process(cli: &Cli, exe: &std::path::Path, seed: u64) -> Option<Outcome> {
    let mut cmd = Command::new(exe);
    cmd.arg("--worker")
        .args(["--scenario", &cli.scenario])
        .args(["--minutes", &cli.minutes.to_string()])
        .args(["--nodes", &cli.nodes.to_string()])
        .args(["--tick-ms", &cli.tick_ms.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(m) = cli.mutate {
        cmd.args(["--mutate", m.name()]);
    }
    let mut child = cmd.spawn().ok()?;
    let mut stdin = child.stdin.take()?;
    let asked = writeln!(stdin, "{seed}").and_then(|_| stdin.flush()).is_ok();
    drop(stdin);
    let mut line = String::new();
    let answered =
        asked && BufReader::new(child.stdout.take()?).read_line(&mut line).is_ok_and(|n| n > 0);
    let _ = child.wait();
    if answered {
        outcome_from_json(&line).map(|(o, _)| o)
    } else {
        None
    }
}

/// Runs `seeds` in `--jobs` worker processes at once, a fresh one per run (two with
/// `--check-determinism`, whose hashes must agree); returns the outcomes in seed order.
fn parallel(cli: &Cli, seeds: &[u64]) -> Vec<(Outcome, Option<(u64, u64)>)> {
    let exe = std::env::current_exe().expect("the simulator's own path");
    let queue =
        Arc::new(Mutex::new(seeds.iter().copied().collect::<std::collections::VecDeque<u64>>()));
    let results = Arc::new(Mutex::new(BTreeMap::new()));
    let total = seeds.len();
    std::thread::scope(|scope| {
        for _ in 0..cli.jobs.min(seeds.len() as u64) {
            let (queue, results, exe) = (queue.clone(), results.clone(), exe.clone());
            scope.spawn(move || loop {
                let Some(seed) = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front() else {
                    break;
                };
                let o = run_in_process(cli, &exe, seed).unwrap_or_else(|| crashed_worker(seed));
                let twin = cli.check_determinism.then(|| {
                    run_in_process(cli, &exe, seed)
                        .map_or((0, 0), |again| (again.trace_hash, again.events))
                });
                let mut r = results.lock().unwrap_or_else(|p| p.into_inner());
                r.insert(seed, (o, twin));
                let bad =
                    r.values().filter(|(o, _): &&(Outcome, _)| !o.violations.is_empty()).count();
                eprint!("\r{}/{} runs, {} with violations", r.len(), total, bad);
                let _ = std::io::stderr().flush();
            });
        }
    });
    let mut results = results.lock().unwrap_or_else(|p| p.into_inner());
    std::mem::take(&mut *results).into_values().collect()
}

fn crashed_worker(seed: u64) -> Outcome {
    Outcome {
        seed,
        scenario: "?",
        violations: vec![drover_sim::check::Violation {
            invariant: "PANIC",
            at: Duration::ZERO,
            detail: "the worker process running this seed died".into(),
        }],
        failovers: 0,
        switchovers: 0,
        rolled_back: 0,
        recovery: None,
        simulated: Duration::ZERO,
        wall: Duration::ZERO,
        trace_hash: 0,
        events: 0,
        tail: Vec::new(),
        lost_writes: 0,
    }
}

fn outcome_to_json(o: &Outcome, twin: Option<(u64, u64)>) -> String {
    serde_json::json!({
        "seed": o.seed,
        "scenario": o.scenario,
        "violations": o.violations.iter().map(|v| serde_json::json!({
            "invariant": v.invariant, "at_ns": v.at.as_nanos() as u64, "detail": v.detail,
        })).collect::<Vec<_>>(),
        "failovers": o.failovers,
        "switchovers": o.switchovers,
        "rolled_back": o.rolled_back,
        "recovery_ns": o.recovery.map(|r| r.as_nanos() as u64),
        "simulated_ns": o.simulated.as_nanos() as u64,
        "wall_ns": o.wall.as_nanos() as u64,
        "trace_hash": o.trace_hash,
        "events": o.events,
        "tail": o.tail,
        "lost_writes": o.lost_writes,
        "twin": twin.map(|(h, e)| [h, e]),
    })
    .to_string()
}

fn outcome_from_json(line: &str) -> Option<(Outcome, Option<(u64, u64)>)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let name = v["scenario"].as_str()?;
    let scenario = scenario::names().find(|n| *n == name).unwrap_or("?");
    let ns = |x: &serde_json::Value| x.as_u64().map(Duration::from_nanos);
    let violations = v["violations"]
        .as_array()?
        .iter()
        .map(|x| {
            let inv = x["invariant"].as_str().unwrap_or("PANIC");
            drover_sim::check::Violation {
                invariant: drover_sim::check::INVARIANTS
                    .iter()
                    .copied()
                    .find(|i| *i == inv)
                    .unwrap_or("PANIC"),
                at: ns(&x["at_ns"]).unwrap_or_default(),
                detail: x["detail"].as_str().unwrap_or_default().to_string(),
            }
        })
        .collect();
    let twin = v["twin"].as_array().and_then(|a| Some((a.first()?.as_u64()?, a.get(1)?.as_u64()?)));
    Some((
        Outcome {
            seed: v["seed"].as_u64()?,
            scenario,
            violations,
            failovers: v["failovers"].as_u64()? as u32,
            switchovers: v["switchovers"].as_u64()? as u32,
            rolled_back: v["rolled_back"].as_u64()? as u32,
            recovery: ns(&v["recovery_ns"]),
            simulated: ns(&v["simulated_ns"])?,
            wall: ns(&v["wall_ns"])?,
            trace_hash: v["trace_hash"].as_u64()?,
            events: v["events"].as_u64()?,
            tail: v["tail"]
                .as_array()?
                .iter()
                .filter_map(|l| l.as_str().map(String::from))
                .collect(),
            lost_writes: v["lost_writes"].as_u64()?,
        },
        twin,
    ))
}

fn summary(outcomes: &[Outcome], wall: Duration, jobs: u64) {
    let mut recoveries: Vec<Duration> = outcomes.iter().filter_map(|o| o.recovery).collect();
    recoveries.sort();
    let simulated: Duration = outcomes.iter().map(|o| o.simulated).sum();
    let cpu: Duration = outcomes.iter().map(|o| o.wall).sum();
    let fmt =
        |d: Option<&Duration>| d.map_or("-".to_string(), |d| format!("{:.1}s", d.as_secs_f64()));
    println!("runs                 {}", outcomes.len());
    println!(
        "violations           {}",
        outcomes.iter().filter(|o| !o.violations.is_empty()).count()
    );
    println!("failovers performed  {}", outcomes.iter().map(|o| o.failovers).sum::<u32>());
    println!(
        "switchovers          {} committed, {} rolled back",
        outcomes.iter().map(|o| o.switchovers).sum::<u32>(),
        outcomes.iter().map(|o| o.rolled_back).sum::<u32>()
    );
    println!(
        "time to recovery     median {} max {} (simulated, {} runs with a loss)",
        fmt(recoveries.get(recoveries.len() / 2)),
        fmt(recoveries.last()),
        recoveries.len()
    );
    println!("writes lost to crash {}", outcomes.iter().map(|o| o.lost_writes).sum::<u64>());
    println!(
        "simulated / wall     {:.0}s / {:.1}s = {:.0}x",
        simulated.as_secs_f64(),
        cpu.as_secs_f64(),
        simulated.as_secs_f64() / cpu.as_secs_f64().max(1e-9)
    );
    println!(
        "runs per hour        {:.0} ({} job{}, {:.1}s wall)",
        outcomes.len() as f64 * 3600.0 / wall.as_secs_f64().max(1e-9),
        jobs,
        if jobs == 1 { "" } else { "s" },
        wall.as_secs_f64()
    );
    let mut by_invariant: BTreeMap<&str, u32> = BTreeMap::new();
    for o in outcomes {
        if let Some(v) = o.violations.first() {
            *by_invariant.entry(v.invariant).or_default() += 1;
        }
    }
    println!(
        "violations by check  {}",
        if by_invariant.is_empty() {
            "-".to_string()
        } else {
            by_invariant.iter().map(|(i, n)| format!("{i} {n}")).collect::<Vec<_>>().join(", ")
        }
    );
    let mut by_scenario: std::collections::BTreeMap<&str, (u32, u32)> = Default::default();
    for o in outcomes {
        let e = by_scenario.entry(o.scenario).or_default();
        e.0 += 1;
        e.1 += u32::from(!o.violations.is_empty());
    }
    println!(
        "by scenario          {}",
        by_scenario.iter().map(|(s, (n, v))| format!("{s} {n}/{v}")).collect::<Vec<_>>().join(", ")
    );
}
