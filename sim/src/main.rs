fn main() {
    let cfg = drover_sim::RunConfig {
        seed: std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1),
        scenario: std::env::args().nth(2).unwrap_or_else(|| "app-crash".into()),
        length: std::time::Duration::from_secs(120),
        nodes: 5,
        mutation: None,
        print_trace: true,
    };
    let o = drover_sim::run(&cfg);
    println!("{:?} {:?} wall {:?} hash {:x}", o.violations, o.recovery, o.wall, o.trace_hash);
}
