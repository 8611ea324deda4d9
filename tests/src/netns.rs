//! Sites as Linux network namespaces: a real partition is a veth link taken down.
//!
//! ```text
//!   drv-<id>-prod          drv-<id>-net             drv-<id>-dr
//!  ┌─────────────┐        ┌──────────────┐        ┌─────────────┐
//!  │ eth0 .11 .12│◄─veth─►│ v-prod       │◄─veth─►│ eth0 .41 .42│
//!  │      .21 ...│        │   br0        │        │      .51 ...│
//!  └─────────────┘        │ v-dr  v-wit  │        └─────────────┘
//!                         │ v-ops        │
//!   drv-<id>-wit  ◄─veth─►│              │◄─veth─►  drv-<id>-ops (the harness's droverctl
//!   eth0 .71              └──────────────┘          and HTTP client, never cut)
//! ```
//!
//! Every site namespace has loopback up and one `eth0` holding all of the site's addresses
//! (198.18.N.x/24, one /24 per fixture; nothing outside 198.18.0.0/15 or loopback is ever
//! configured). All links are created inside the fixture's own namespaces, so the machine's
//! own network is never touched, and deleting the namespaces deletes every link.
//!
//! [`Sites::cut`] takes the bridge end of a site's veth down: the site keeps its addresses and
//! its processes still reach each other (and the site's own application) over the site's
//! local routes, but nothing crosses to or from any other site. [`Sites::heal`] brings it up.
//!
//! Namespaces are named `drv-<pid>x<n>-<site>` after the test process; a fixture deletes, on
//! creation, namespaces left by test processes that no longer exist (killed before `Drop`).
//! `Drop` kills every process still inside the fixture's namespaces, then deletes them; it
//! runs on panics too.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use crate::process::{run_with_deadline, CmdOutput};

/// Set by `.ci/run`: the namespace tests must run, a machine that cannot run them is an error.
pub const STRICT_ENV: &str = "DROVER_TEST_STRICT";

/// Upper bound for one `ip` / `nft` invocation.
const IP_DEADLINE: Duration = Duration::from_secs(10);

/// Site name -> (namespace suffix, first host octet of its addresses). The order is the order
/// of creation; `ops` is the harness's own vantage point (droverctl, HTTP probes of the test).
const LAYOUT: [(&str, &str, u8); 4] =
    [("prod", "prod", 11), ("dr", "dr", 41), ("witness", "wit", 71), ("ops", "ops", 101)];
/// Addresses given to each site's eth0: host octets base..base+ADDRS_PER_SITE.
const ADDRS_PER_SITE: u8 = 16;

/// True when this machine can run the network-namespace tests (root and iproute2's `ip`).
/// Otherwise prints `skipped: <test> needs root ...` and returns false, or panics with that
/// message when `DROVER_TEST_STRICT=1` (CI must not silently skip them).
pub fn require_netns(test_name: &str) -> bool {
    let root = unsafe { libc::geteuid() } == 0; // SAFETY: geteuid cannot fail.
    let ip = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if root && ip {
        return true;
    }
    crate::require::skip(&format!(
        "skipped: {test_name} needs root and iproute2 (ip netns); run as root"
    ))
}

/// Whether `nft` is available (for one-way cuts).
pub fn have_nft() -> bool {
    Command::new("nft").arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

/// A `Command` for `program`, run inside network namespace `netns` (through `ip netns exec`,
/// which execs in place: the pid, process group and PDEATHSIG of the command are its own),
/// or as is when `netns` is `None`.
pub fn command_in(netns: Option<&str>, program: impl AsRef<OsStr>) -> Command {
    match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Runs `f` on a fresh thread that has entered network namespace `netns` (sockets it opens
/// live there). `setns` affects only the calling thread, hence the thread.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let path = Path::new("/var/run/netns").join(netns);
    let file = File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
    thread::spawn(move || {
        // SAFETY: setns on an fd we own; it only changes this thread's network namespace.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!(
                "setns into {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| "the thread running in the namespace panicked".to_string())?
}

/// Runs `ip args..` (or `ip -n NS args..`); panics with the command and its output on failure.
fn ip(netns: Option<&str>, args: &[&str]) {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(args);
    let out = run_with_deadline(&mut cmd, IP_DEADLINE);
    assert!(out.success(), "`{cmd:?}` failed: {}", out.describe());
}

fn try_cmd(program: &str, args: &[&str]) -> CmdOutput {
    run_with_deadline(Command::new(program).args(args), IP_DEADLINE)
}

/// One fixture's namespaces and links (see the module docs).
pub struct Sites {
    id: String,
    /// The /24 of this fixture: 198.<.0>.<.1>.0/24 with .0 in 18..=19.
    net: (u8, u8),
    /// site -> namespace, in creation order (bridge namespace not included).
    namespaces: BTreeMap<String, String>,
    bridge_ns: String,
    /// Namespaces created so far (for Drop, even when new() panics half way).
    created: Vec<String>,
    /// site -> one-way cuts installed with nft (destination sites).
    nft_tables: Vec<String>,
}

impl Sites {
    /// Creates the namespaces `drv-<id>-{net,prod,dr,wit,ops}`, the bridge and the links.
    /// Call [`require_netns`] first.
    pub fn new(test_name: &str) -> Sites {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        sweep_stale();
        let pid = std::process::id();
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("{pid}x{n}");
        // One /24 out of the 512 in 198.18.0.0/15, per test process and fixture. Namespaces
        // isolate fixtures anyway; distinct nets only make captures and logs unambiguous.
        let k = (pid.wrapping_mul(31).wrapping_add(n) % 512) as u16;
        let net = (18 + (k / 256) as u8, (k % 256) as u8);
        let bridge_ns = format!("drv-{id}-net");
        let mut sites = Sites {
            id,
            net,
            namespaces: BTreeMap::new(),
            bridge_ns: bridge_ns.clone(),
            created: Vec::new(),
            nft_tables: Vec::new(),
        };
        eprintln!(
            "{test_name}: sites in namespaces drv-{}-{{net,prod,dr,wit,ops}}, 198.{}.{}.0/24",
            sites.id, net.0, net.1
        );
        sites.add_ns(&bridge_ns);
        ip(Some(&bridge_ns), &["link", "set", "lo", "up"]);
        ip(Some(&bridge_ns), &["link", "add", "br0", "type", "bridge"]);
        ip(Some(&bridge_ns), &["link", "set", "br0", "up"]);
        for (site, suffix, base) in LAYOUT {
            let ns = format!("drv-{}-{suffix}", sites.id);
            sites.add_ns(&ns);
            ip(Some(&ns), &["link", "set", "lo", "up"]);
            let br_end = format!("v-{suffix}");
            // Both ends are created inside our namespaces: nothing appears in the host's.
            ip(
                Some(&bridge_ns),
                &["link", "add", &br_end, "type", "veth", "peer", "name", "eth0", "netns", &ns],
            );
            ip(Some(&bridge_ns), &["link", "set", &br_end, "master", "br0"]);
            ip(Some(&bridge_ns), &["link", "set", &br_end, "up"]);
            for host in base..base + ADDRS_PER_SITE {
                let addr = format!("{}/24", Ipv4Addr::new(198, net.0, net.1, host));
                ip(Some(&ns), &["addr", "add", &addr, "dev", "eth0"]);
            }
            ip(Some(&ns), &["link", "set", "eth0", "up"]);
            sites.namespaces.insert(site.to_owned(), ns);
        }
        sites
    }

    fn add_ns(&mut self, ns: &str) {
        ip(None, &["netns", "add", ns]);
        self.created.push(ns.to_owned());
    }

    /// The fixture's short id (`<pid>x<n>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The namespace of `site` (`prod`, `dr`, `witness` or `ops`).
    pub fn ns(&self, site: &str) -> &str {
        self.namespaces.get(site).unwrap_or_else(|| {
            panic!("no site namespace {site:?}; sites are prod, dr, witness, ops")
        })
    }

    /// The `k`-th address of `site` (k < 16), already on the site's eth0.
    pub fn ip(&self, site: &str, k: u8) -> Ipv4Addr {
        assert!(k < ADDRS_PER_SITE, "site {site} has only {ADDRS_PER_SITE} addresses");
        let base = LAYOUT
            .iter()
            .find(|(s, ..)| *s == site)
            .unwrap_or_else(|| panic!("no site {site:?}"))
            .2;
        Ipv4Addr::new(198, self.net.0, self.net.1, base + k)
    }

    /// A `Command` running `program` inside `site`'s namespace.
    pub fn command(&self, site: &str, program: impl AsRef<OsStr>) -> Command {
        command_in(Some(self.ns(site)), program)
    }

    /// Partitions `site` from every other site: the bridge end of its veth goes down.
    pub fn cut(&self, site: &str) {
        ip(Some(&self.bridge_ns), &["link", "set", &self.bridge_end(site), "down"]);
    }

    /// Undoes [`Sites::cut`].
    pub fn heal(&self, site: &str) {
        ip(Some(&self.bridge_ns), &["link", "set", &self.bridge_end(site), "up"]);
    }

    /// Drops every packet `from` sends to `to` (one-way), with nftables in `from`'s namespace.
    /// Returns false (and changes nothing) when `nft` is not installed.
    pub fn cut_one_way(&mut self, from: &str, to: &str) -> bool {
        if !have_nft() {
            return false;
        }
        let ns = self.ns(from).to_owned();
        let to_net = format!("{}-{}", self.ip(to, 0), self.ip(to, ADDRS_PER_SITE - 1));
        let table = format!("drover_cut_{}", to.replace('-', "_"));
        let rules = format!(
            "table inet {table} {{ chain out {{ type filter hook output priority 0; \
             ip daddr {to_net} drop; }}; }}"
        );
        let out = run_with_deadline(
            Command::new("ip").args(["netns", "exec", &ns, "nft", &rules]),
            IP_DEADLINE,
        );
        assert!(out.success(), "nft in {ns}: {}", out.describe());
        self.nft_tables.push(format!("{ns} {table}"));
        true
    }

    /// Removes every one-way cut.
    pub fn heal_one_way(&mut self) {
        for entry in std::mem::take(&mut self.nft_tables) {
            let (ns, table) = entry.split_once(' ').expect("ns table");
            let _ = try_cmd("ip", &["netns", "exec", ns, "nft", "delete", "table", "inet", table]);
        }
    }

    fn bridge_end(&self, site: &str) -> String {
        let suffix = LAYOUT
            .iter()
            .find(|(s, ..)| *s == site)
            .unwrap_or_else(|| panic!("no site {site:?}"))
            .1;
        format!("v-{suffix}")
    }

    /// Pids of the processes inside `ns` (per `ip netns pids`).
    pub fn pids_in(ns: &str) -> Vec<libc::pid_t> {
        let out = try_cmd("ip", &["netns", "pids", ns]);
        out.stdout.split_whitespace().filter_map(|p| p.parse().ok()).collect()
    }
}

impl Drop for Sites {
    fn drop(&mut self) {
        self.heal_one_way();
        for ns in self.created.iter().rev() {
            kill_all_in(ns);
            let out = try_cmd("ip", &["netns", "del", ns]);
            if !out.success() {
                eprintln!("warning: could not delete network namespace {ns}: {}", out.describe());
            }
        }
    }
}

/// SIGKILL to every process in `ns`, then waits (bounded) for them to be gone.
fn kill_all_in(ns: &str) {
    for _ in 0..50 {
        let pids = Sites::pids_in(ns);
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            // SAFETY: kill(2) on a pid that `ip netns pids` found inside our own namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        thread::sleep(Duration::from_millis(20));
    }
    eprintln!("warning: processes still in network namespace {ns} after SIGKILL");
}

/// Deletes namespaces `drv-<pid>x<n>-*` whose test process `<pid>` no longer exists.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("drv-") else { continue };
        let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_all_in(&name);
        let _ = try_cmd("ip", &["netns", "del", &name]);
    }
}
