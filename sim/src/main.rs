//! `drover-sim`: runs drover's real node stack under simulated time, network and faults, and
//! checks the safety and liveness invariants of DESIGN.md 7. See the README's "Simulator"
//! section and `drover-sim --help`.

use std::io::Write;
use std::process::ExitCode;
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
    /// Print every event of the run (one seed).
    #[arg(long)]
    trace: bool,
    /// Run each seed twice and fail if the two traces differ.
    #[arg(long)]
    check_determinism: bool,
    /// Plant a defect the checkers must catch: lying-fence, clock-beyond-drift or lying-disk.
    #[arg(long, value_parser = parse_mutation)]
    mutate: Option<Mutation>,
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
    Mutation::parse(s)
        .ok_or_else(|| format!("{s:?} is not lying-fence, clock-beyond-drift or lying-disk"))
}

fn replay(cli: &Cli, o: &Outcome) -> String {
    let mut cmd = format!(
        "drover-sim --seed {} --scenario {} --minutes {} --nodes {}",
        o.seed, o.scenario, cli.minutes, cli.nodes
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
    let config = |seed| RunConfig {
        seed,
        scenario: cli.scenario.clone(),
        length: Duration::from_secs_f64(cli.minutes * 60.0),
        nodes: cli.nodes,
        tick: Duration::from_millis(cli.tick_ms),
        mutation: cli.mutate,
        print_trace: cli.trace && single,
    };
    let started = det::wall_now();
    let mut outcomes = Vec::new();
    let mut nondeterministic = Vec::new();
    for (i, seed) in seeds.iter().enumerate() {
        let o = drover_sim::run(&config(*seed));
        if cli.check_determinism {
            let again = drover_sim::run(&RunConfig { print_trace: false, ..config(*seed) });
            if again.trace_hash != o.trace_hash {
                nondeterministic.push(*seed);
                println!(
                    "NONDETERMINISTIC seed {}: trace hashes {:016x} and {:016x} ({} and {} events)",
                    seed, o.trace_hash, again.trace_hash, o.events, again.events
                );
            }
        }
        if !o.violations.is_empty() {
            if !single {
                eprintln!();
            }
            report_violation(&cli, &o);
        }
        if single {
            println!(
                "seed {} scenario {}: {} violation(s), {} failover(s), recovery {}, {:.0}s simulated in {:.1}s ({:.0}x), trace {:016x}",
                o.seed,
                o.scenario,
                o.violations.len(),
                o.failovers,
                o.recovery.map_or("-".into(), |r| format!("{:.1}s", r.as_secs_f64())),
                o.simulated.as_secs_f64(),
                o.wall.as_secs_f64(),
                o.simulated.as_secs_f64() / o.wall.as_secs_f64().max(1e-9),
                o.trace_hash
            );
        } else {
            let bad = outcomes.iter().filter(|o: &&Outcome| !o.violations.is_empty()).count()
                + usize::from(!o.violations.is_empty());
            eprint!("\r{}/{} runs, {} with violations", i + 1, seeds.len(), bad);
            let _ = std::io::stderr().flush();
        }
        outcomes.push(o);
    }
    if !single {
        eprintln!();
        summary(&outcomes, det::wall_now().saturating_sub(started));
    }
    let violations = outcomes.iter().filter(|o| !o.violations.is_empty()).count();
    if violations > 0 || !nondeterministic.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn summary(outcomes: &[Outcome], wall: Duration) {
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
        "runs per hour        {:.0}",
        outcomes.len() as f64 * 3600.0 / wall.as_secs_f64().max(1e-9)
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
