//! When a member may start a Raft election, and when a leader must stand back: drover's guard
//! around openraft 0.9, which has neither pre-vote nor check-quorum.
//!
//! openraft's own election timer is off (`enable_elect = false`); the election loop of the
//! runtime ticks an [`ElectionGuard`] and carries out its [`GuardCommand`]s:
//!
//! ```text
//!  follower: no AppendEntries from a leader for leader_lease + heartbeat + jitter
//!            ──▶ PreVote to every voter ──▶ a majority grants ──▶ openraft elect()
//!  voter asked for a pre-vote: grant only if it has not heard a leader for
//!            leader_lease + heartbeat and the asker's log is at least as up to date
//!  leader:   no quorum acknowledged for leader_lease ──▶ stand back: heartbeats off, a
//!            stand-back notice (PreVote with `stood_back`) to every other voter; one probe
//!            round every probe_every to find out whether a quorum is back
//!  voter with a notice from the leader it follows: refuses that leader's AppendEntries for
//!            notice_refusal (openraft retries unacknowledged entries, and accepting them would
//!            refresh the very lease that keeps this voter from electing anyone else); asks for
//!            pre-votes itself after 2 × heartbeat + jitter (≤ heartbeat), once per heartbeat
//!            while the notice holds (grant_after)
//! ```
//!
//! The notice is what makes the bridge fast: a member that still hears the old leader (a
//! witness on a "bridge") cannot grant anyone else's vote before openraft's lease runs out
//! after that leader's last AppendEntries, but it can campaign itself at once, and the members
//! cut from the old leader have been silent since the cut. It does not grant others' pre-votes
//! any earlier than without a notice (their votes would meet its openraft lease).
//!
//! Why: without pre-vote, a member back from a stall or a cut raises its term and deposes a
//! leader that a majority still follows (leader ping-pong); without check-quorum, a leader cut
//! from the majority but still reaching one member (a "bridge") keeps that member from voting
//! for anyone, and a connected majority stays leaderless (openraft issue 2080). The grant rule
//! uses openraft's own leader lease (`election_timeout_max` since the vote was last refreshed)
//! plus one heartbeat, so a granted pre-vote is followed by votes openraft will not refuse for
//! the lease.
//!
//! Pure: time and randomness are arguments.

use std::time::Duration;

use super::time::MonoTime;

/// Period of the election loop's tick (the runtime ticks the guard this often).
pub const TICK: Duration = Duration::from_millis(50);
/// The shortest interval between two probe rounds of a leader that stood back (see
/// [`ElectionTimings::probe_every`]).
pub const PROBE_EVERY_MIN: Duration = Duration::from_secs(5);
/// How long such a probe round lasts (heartbeats on).
/// Long enough for openraft's replication to get past its 500 ms back-off after a failed
/// send and reach a member that came back.
pub const PROBE_FOR: Duration = Duration::from_secs(1);
/// A gap between two ticks at least this long means this process was paused (SIGSTOP, a VM
/// freeze, swapping): ten ticks.
pub const PAUSED_AFTER: Duration = Duration::from_millis(500);
/// Allowance for the RPC rounds of a leader change: the stand-back notice, the pre-vote round,
/// the vote round and the first commit of the new leader.
const ELECTION_ROUNDS: Duration = Duration::from_millis(500);

/// The Raft timings the guard works with (from node.toml `[raft]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionTimings {
    /// Leader heartbeat period.
    pub heartbeat: Duration,
    /// Lower bound of the randomized election timeout.
    pub election_min: Duration,
    /// Upper bound of the randomized election timeout; also openraft 0.9's leader lease.
    pub election_max: Duration,
}

impl ElectionTimings {
    /// openraft 0.9's leader lease: a voter refuses votes for this long after it last heard
    /// from a leader (or voted).
    pub fn leader_lease(&self) -> Duration {
        self.election_max
    }

    /// A voter grants a pre-vote only after this long without a leader's AppendEntries.
    pub fn grant_after(&self) -> Duration {
        self.leader_lease() + self.heartbeat
    }

    /// The longest random extra wait before a member asks for pre-votes.
    pub fn max_jitter(&self) -> Duration {
        self.election_max.saturating_sub(self.election_min)
    }

    /// How long a member with a stand-back notice waits before it asks for pre-votes:
    /// `2 × heartbeat`. The members cut from the old leader answered its last acknowledged
    /// AppendEntries at most a heartbeat before the one it stood back for, so by then they
    /// have been silent for `grant_after` and grant.
    pub fn notice_wait(&self) -> Duration {
        self.heartbeat * 2
    }

    /// Worst case from the last AppendEntries of a leader that died to a new leader able to
    /// answer a linearizable read, when a majority is connected and no vote splits:
    /// `grant_after + max_jitter + 500 ms`, i.e. `2 × election_max − election_min + heartbeat
    /// + 500 ms`. 4.5 s at the defaults (250 ms, 1.25–2.5 s).
    pub fn change_after_death(&self) -> Duration {
        self.grant_after() + self.max_jitter() + ELECTION_ROUNDS
    }

    /// Worst case from a cut that leaves a live leader on a "bridge" (cut from a connected
    /// majority, still reaching some of its members) to a new leader of that majority able to
    /// answer a linearizable read: the leader stands back `leader_lease` (plus a tick) after
    /// its last quorum acknowledgement, which came no later than the cut; a member it still
    /// reaches gets the notice and campaigns after `notice_wait` plus at most a heartbeat of
    /// jitter; then the rounds: `election_max + 3 × heartbeat + 50 ms + 500 ms`. 3.8 s at the
    /// defaults.
    pub fn change_on_bridge(&self) -> Duration {
        self.leader_lease() + TICK + self.notice_wait() + self.heartbeat + ELECTION_ROUNDS
    }

    /// How long a voter refuses the AppendEntries of a leader that told it it stood back,
    /// counted from the notice: [`Self::change_after_death`], the time the members that got
    /// the notice need to elect without it (a leader whose inbound traffic is cut keeps
    /// sending, and every member got its notice). After that, a leader that is still there
    /// (nobody could elect) is followed again, and its next probe finds its quorum.
    pub fn notice_refusal(&self) -> Duration {
        self.change_after_death()
    }

    /// The longest leader change with a connected majority and no split vote: the larger of
    /// [`Self::change_after_death`] and [`Self::change_on_bridge`]. 4.5 s at the defaults;
    /// 5.15 s with 150 ms heartbeats and 1.5–3 s election timeouts.
    pub fn max_leader_change(&self) -> Duration {
        self.change_after_death().max(self.change_on_bridge())
    }

    /// How often a leader that stood back probes for a quorum: [`PROBE_EVERY_MIN`], or longer
    /// when the timings need it, so that between two probes (whose AppendEntries refresh the
    /// followers' silence) a connected majority has the time of a whole leader change plus
    /// 500 ms. 5 s at the defaults.
    pub fn probe_every(&self) -> Duration {
        PROBE_EVERY_MIN.max(self.max_leader_change() + Duration::from_millis(500))
    }

    /// Whether a member that is asking for pre-votes still has no leader: it has heard none for
    /// `grant_after` (counted from its start when it never did), or the leader it follows sent
    /// a stand-back notice that still holds (see [`GuardInput::stood_back_notice`]).
    pub fn leaderless(
        &self,
        since_leader: Option<Duration>,
        uptime: Duration,
        stood_back_notice: Option<Duration>,
    ) -> bool {
        since_leader.unwrap_or(uptime) >= self.grant_after()
            || self.valid_notice(since_leader, stood_back_notice).is_some()
    }

    /// The age of a stand-back notice that still holds: younger than `grant_after` (after that
    /// the plain silence rule applies) and no AppendEntries accepted more than a heartbeat after
    /// it (one the leader sent just before it stood back may arrive just after the notice; a
    /// later one comes from a leader that leads again, or a new one).
    fn valid_notice(
        &self,
        since_leader: Option<Duration>,
        stood_back_notice: Option<Duration>,
    ) -> Option<Duration> {
        let age = stood_back_notice?;
        let heard_after = since_leader.is_some_and(|s| s + self.heartbeat < age);
        (age < self.grant_after() && !heard_after).then_some(age)
    }

    /// The shortest `lease_ttl` that outlasts a leader change. Renewals go out every
    /// `lease_ttl / 3`, so the newest confirmed one may be a third of the lease old when the
    /// leader dies; the remaining two thirds must cover [`Self::max_leader_change`] plus one
    /// quick renewal retry (250 ms), its round trip and the lease loop's early check (together
    /// 500 ms): `lease_ttl >= 3/2 × (max_leader_change + 500 ms)`. 7.5 s at the defaults;
    /// 8.48 s with 150 ms heartbeats and 1.5–3 s election timeouts.
    pub fn min_lease_ttl(&self) -> Duration {
        (self.max_leader_change() + Duration::from_millis(500)) * 3 / 2
    }
}

/// This member's Raft role as the guard needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftRole {
    /// Leads; `quorum_ack_age` is how long ago a quorum last acknowledged it (None: never).
    Leader { quorum_ack_age: Option<Duration> },
    /// A voter that does not lead (follower or candidate).
    Voter,
    /// A learner, or Raft not running: never campaigns.
    Passive,
}

/// What the guard sees at a tick.
#[derive(Debug, Clone, Copy)]
pub struct GuardInput {
    /// Now, on the node's monotonic clock.
    pub now: MonoTime,
    /// The member's role.
    pub role: RaftRole,
    /// Time since this member last accepted AppendEntries (or a snapshot) from a leader;
    /// `None` if it never did since it started.
    pub since_leader: Option<Duration>,
    /// How long this process has been running: a fresh member counts its silence from start.
    pub uptime: Duration,
    /// Number of voters in the membership.
    pub voters: usize,
    /// Age of the last stand-back notice from the leader this member follows, in the term it
    /// follows it (`None`: none received).
    pub stood_back_notice: Option<Duration>,
}

/// What the guard asks the runtime to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardCommand {
    /// Ask every other voter for a pre-vote, then report with [`ElectionGuard::pre_vote_result`].
    PreVote,
    /// Start an election (openraft `trigger().elect()`).
    Elect,
    /// Turn the leader's heartbeats on or off.
    Heartbeats(bool),
    /// Tell every other voter that this leader stood back (PreVote with `stood_back`).
    AnnounceStandBack,
}

/// The election guard of one member.
#[derive(Debug, Clone)]
pub struct ElectionGuard {
    timings: ElectionTimings,
    /// The random extra wait of the current round, in [0, max_jitter].
    jitter: Duration,
    /// The random extra wait after a stand-back notice, in [0, heartbeat].
    notice_jitter: Duration,
    /// When the last pre-vote round started.
    last_round: Option<MonoTime>,
    /// A pre-vote round is waiting for its result.
    in_flight: bool,
    /// The leader stood back (heartbeats off) at this time.
    stood_back: Option<MonoTime>,
    /// Heartbeats are on for a probe round that started at this time.
    probing: Option<MonoTime>,
    /// When this member was first seen leading in its current leadership.
    leading_since: Option<MonoTime>,
    /// The last tick.
    last_tick: Option<MonoTime>,
    /// When this process last came back from a pause (see [`PAUSED_AFTER`]).
    resumed: Option<MonoTime>,
}

impl ElectionGuard {
    /// A guard with the given timings; `random` seeds the first round's jitter.
    pub fn new(timings: ElectionTimings, random: u64) -> ElectionGuard {
        let mut g = ElectionGuard {
            timings,
            jitter: Duration::ZERO,
            notice_jitter: Duration::ZERO,
            last_round: None,
            in_flight: false,
            stood_back: None,
            probing: None,
            leading_since: None,
            last_tick: None,
            resumed: None,
        };
        g.draw_jitter(random);
        g
    }

    /// The timings.
    pub fn timings(&self) -> &ElectionTimings {
        &self.timings
    }

    /// True while a leader stands back for lack of a quorum.
    pub fn standing_back(&self) -> bool {
        self.stood_back.is_some()
    }

    fn draw_jitter(&mut self, random: u64) {
        let pick = |span: Duration| {
            let span = span.as_millis() as u64;
            Duration::from_millis(if span == 0 { 0 } else { random % (span + 1) })
        };
        self.jitter = pick(self.timings.max_jitter());
        self.notice_jitter = pick(self.timings.heartbeat);
    }

    /// One tick; `random` is a fresh random number (drawn by the caller).
    pub fn tick(&mut self, input: &GuardInput, random: u64) -> Vec<GuardCommand> {
        if self.last_tick.is_some_and(|t| input.now.saturating_duration_since(t) >= PAUSED_AFTER) {
            self.resumed = Some(input.now);
        }
        self.last_tick = Some(input.now);
        match input.role {
            RaftRole::Leader { quorum_ack_age } => self.tick_leader(input, quorum_ack_age),
            RaftRole::Voter => {
                let mut out = self.leave_leadership();
                out.extend(self.tick_voter(input, random));
                out
            }
            RaftRole::Passive => self.leave_leadership(),
        }
    }

    /// No longer leading: heartbeats back on for whenever it leads again.
    fn leave_leadership(&mut self) -> Vec<GuardCommand> {
        self.probing = None;
        self.leading_since = None;
        if self.stood_back.take().is_some() {
            vec![GuardCommand::Heartbeats(true)]
        } else {
            Vec::new()
        }
    }

    /// The commands that make a leader stand back (again).
    fn stand_back(&mut self, now: MonoTime) -> Vec<GuardCommand> {
        self.stood_back = Some(now);
        self.probing = None;
        vec![GuardCommand::Heartbeats(false), GuardCommand::AnnounceStandBack]
    }

    fn tick_leader(&mut self, input: &GuardInput, ack_age: Option<Duration>) -> Vec<GuardCommand> {
        self.in_flight = false;
        let lease = self.timings.leader_lease();
        // A single voter is its own quorum; openraft reports no acks for it.
        let has_quorum = input.voters <= 1 || ack_age.is_some_and(|a| a <= lease);
        let now = input.now;
        let leading_for = now.saturating_duration_since(*self.leading_since.get_or_insert(now));
        match (self.stood_back, has_quorum) {
            (None, true) => Vec::new(),
            (None, false) => {
                // A new leader gets the lease to gather its first acknowledgements.
                if ack_age.is_none() && leading_for < lease {
                    return Vec::new();
                }
                // A leader that was itself paused measured its followers' silence across its
                // own pause: their answers are still on their way. It waits PROBE_FOR (past
                // openraft's 500 ms back-off) for fresh ones before judging.
                if self.resumed.is_some_and(|r| now.saturating_duration_since(r) < PROBE_FOR) {
                    return Vec::new();
                }
                self.stand_back(now)
            }
            (Some(_), true) => {
                // A quorum answered (a probe round): lead again.
                self.stood_back = None;
                match self.probing.take() {
                    Some(_) => Vec::new(),
                    None => vec![GuardCommand::Heartbeats(true)],
                }
            }
            (Some(since), _) => match self.probing {
                Some(p) if now.saturating_duration_since(p) >= PROBE_FOR => self.stand_back(now),
                Some(_) => Vec::new(),
                None if now.saturating_duration_since(since) >= self.timings.probe_every() => {
                    self.probing = Some(now);
                    vec![GuardCommand::Heartbeats(true)]
                }
                None => Vec::new(),
            },
        }
    }

    fn tick_voter(&mut self, input: &GuardInput, random: u64) -> Vec<GuardCommand> {
        if self.in_flight {
            return Vec::new();
        }
        let since_last = self.last_round.map(|last| input.now.saturating_duration_since(last));
        let t = self.timings;
        let noticed = t.valid_notice(input.since_leader, input.stood_back_notice);
        if let Some(age) = noticed {
            // The leader stood back: campaign soon, and retry each heartbeat while the members
            // cut from it are not yet silent for long enough to grant.
            if age < t.notice_wait() + self.notice_jitter
                || since_last.is_some_and(|d| d < t.heartbeat)
            {
                return Vec::new();
            }
        } else {
            let silent = input.since_leader.unwrap_or(input.uptime);
            if silent < t.grant_after() + self.jitter {
                return Vec::new();
            }
            // One round per election_min at most, each with a fresh jitter (no lock-step).
            if since_last.is_some_and(|d| d < t.election_min + self.jitter) {
                return Vec::new();
            }
        }
        self.last_round = Some(input.now);
        self.in_flight = true;
        self.draw_jitter(random);
        vec![GuardCommand::PreVote]
    }

    /// The pre-vote round ended: `granted` voters (this member included) said yes out of
    /// `voters`. Returns [`GuardCommand::Elect`] when that is a majority.
    pub fn pre_vote_result(&mut self, granted: usize, voters: usize) -> Option<GuardCommand> {
        self.in_flight = false;
        (granted > voters / 2).then_some(GuardCommand::Elect)
    }
}

/// Why a voter refuses a pre-vote, if it does.
///
/// `since_leader`: time since this voter last accepted a leader's AppendEntries (`None`:
/// never since it started, then `uptime` counts). `leading_with_quorum`: this voter is a
/// leader a quorum acknowledged within the lease. `candidate_log` and `own_log` are the last
/// log ids as (term, index), compared as Raft does (§5.4.1).
pub fn pre_vote_refusal(
    timings: &ElectionTimings,
    since_leader: Option<Duration>,
    uptime: Duration,
    leading_with_quorum: bool,
    candidate_log: (u64, u64),
    own_log: (u64, u64),
) -> Option<String> {
    if leading_with_quorum {
        return Some("this member leads and a quorum follows it".to_string());
    }
    let silent = since_leader.unwrap_or(uptime);
    if silent < timings.grant_after() {
        return Some(format!(
            "this member heard from a leader {} ago (grants only after {})",
            humantime::format_duration(Duration::from_millis(silent.as_millis() as u64)),
            humantime::format_duration(timings.grant_after())
        ));
    }
    if candidate_log < own_log {
        return Some(format!(
            "the candidate's log ends at {}-{}, behind this member's {}-{}",
            candidate_log.0, candidate_log.1, own_log.0, own_log.1
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings() -> ElectionTimings {
        ElectionTimings {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(1000),
            election_max: Duration::from_millis(2000),
        }
    }

    fn at(ms: u64) -> MonoTime {
        MonoTime::from_ms(ms)
    }

    fn voter(now: u64, since_leader: Option<u64>) -> GuardInput {
        GuardInput {
            now: at(now),
            role: RaftRole::Voter,
            since_leader: since_leader.map(Duration::from_millis),
            uptime: Duration::from_millis(now),
            voters: 5,
            stood_back_notice: None,
        }
    }

    fn noticed(now: u64, since_leader: u64, notice_age: u64) -> GuardInput {
        GuardInput {
            stood_back_notice: Some(Duration::from_millis(notice_age)),
            ..voter(now, Some(since_leader))
        }
    }

    const STAND_BACK: [GuardCommand; 2] =
        [GuardCommand::Heartbeats(false), GuardCommand::AnnounceStandBack];
    const LEAD_AGAIN: [GuardCommand; 1] = [GuardCommand::Heartbeats(true)];

    fn leader(now: u64, ack: Option<u64>) -> GuardInput {
        GuardInput {
            now: at(now),
            role: RaftRole::Leader { quorum_ack_age: ack.map(Duration::from_millis) },
            since_leader: None,
            uptime: Duration::from_millis(now + 10_000),
            voters: 5,
            stood_back_notice: None,
        }
    }

    #[test]
    fn bounds() {
        let t = timings();
        assert_eq!(t.grant_after(), Duration::from_millis(2100));
        assert_eq!(t.change_after_death(), Duration::from_millis(3600));
        // lease 2000 + tick 50 + notice wait 200 + jitter 100 + rounds 500
        assert_eq!(t.change_on_bridge(), Duration::from_millis(2850));
        assert_eq!(t.max_leader_change(), Duration::from_millis(3600));
        assert_eq!(t.min_lease_ttl(), Duration::from_millis(6150));
        assert_eq!(t.probe_every(), PROBE_EVERY_MIN);
        assert_eq!(t.notice_refusal(), Duration::from_millis(3600));
        let defaults = ElectionTimings {
            heartbeat: Duration::from_millis(250),
            election_min: Duration::from_millis(1250),
            election_max: Duration::from_millis(2500),
        };
        assert_eq!(defaults.change_after_death(), Duration::from_millis(4500));
        assert_eq!(defaults.change_on_bridge(), Duration::from_millis(3800));
        assert_eq!(defaults.min_lease_ttl(), Duration::from_millis(7500));
        assert_eq!(defaults.probe_every(), Duration::from_secs(5));
        // Timeouts close together: the bridge is the longer change, and sets the floor.
        let narrow = ElectionTimings { election_min: Duration::from_millis(2400), ..defaults };
        assert_eq!(narrow.change_after_death(), Duration::from_millis(3350));
        assert_eq!(narrow.max_leader_change(), Duration::from_millis(3800));
        // Slow timings: probes wait for a whole leader change.
        let slow = ElectionTimings {
            heartbeat: Duration::from_secs(1),
            election_min: Duration::from_secs(5),
            election_max: Duration::from_secs(10),
        };
        assert_eq!(slow.max_leader_change(), Duration::from_millis(16_500));
        assert_eq!(slow.probe_every(), Duration::from_secs(17));
    }

    #[test]
    fn a_stand_back_notice_campaigns_after_two_heartbeats_and_retries_each_heartbeat() {
        // jitter 0 (random 0): notice wait 200 ms
        let mut g = ElectionGuard::new(timings(), 0);
        assert!(g.tick(&noticed(10_000, 150, 150), 0).is_empty());
        assert_eq!(g.tick(&noticed(10_050, 200, 200), 7), vec![GuardCommand::PreVote]);
        assert!(g.tick(&noticed(10_100, 250, 250), 0).is_empty(), "in flight");
        assert_eq!(g.pre_vote_result(2, 5), None);
        // the next round a heartbeat after the last one, not election_min later
        assert!(g.tick(&noticed(10_140, 290, 290), 0).is_empty());
        assert_eq!(g.tick(&noticed(10_150, 300, 300), 0), vec![GuardCommand::PreVote]);
        assert_eq!(g.pre_vote_result(3, 5), Some(GuardCommand::Elect));
    }

    #[test]
    fn a_notice_does_not_hold_once_a_leader_is_heard_again_or_it_is_old() {
        let t = timings();
        let long = Duration::from_secs(60);
        let ms = Duration::from_millis;
        assert!(t.leaderless(Some(ms(300)), long, Some(ms(300))));
        // an AppendEntries sent just before the notice, arriving just after it
        assert!(t.leaderless(Some(ms(250)), long, Some(ms(300))));
        // a heartbeat after the notice: the leader leads again (a probe), or a new one does
        assert!(!t.leaderless(Some(ms(150)), long, Some(ms(300))));
        // older than grant_after: plain silence decides (and it is long by then)
        assert!(!t.leaderless(Some(ms(2000)), long, Some(ms(2100))));
        assert!(t.leaderless(Some(ms(2100)), long, Some(ms(2100))));
        assert!(!t.leaderless(Some(ms(300)), long, None));
        let mut g = ElectionGuard::new(t, 0);
        assert!(g.tick(&noticed(10_000, 100, 1000), 0).is_empty());
    }

    #[test]
    fn a_notice_wait_has_its_own_jitter_of_at_most_a_heartbeat() {
        // random 75: notice jitter 75 ms (of 0..=100), round jitter 75 ms (of 0..=1000)
        let mut g = ElectionGuard::new(timings(), 75);
        assert!(g.tick(&noticed(10_000, 274, 274), 0).is_empty());
        assert_eq!(g.tick(&noticed(10_001, 275, 275), 0), vec![GuardCommand::PreVote]);
    }

    #[test]
    fn a_follower_that_hears_its_leader_never_asks() {
        let mut g = ElectionGuard::new(timings(), 0);
        for t in (0..60_000).step_by(50) {
            assert!(g.tick(&voter(t + 5000, Some(150)), t).is_empty());
        }
    }

    #[test]
    fn silence_past_the_lease_and_jitter_asks_for_pre_votes_once_per_round() {
        // jitter 0 for the first round
        let mut g = ElectionGuard::new(timings(), 0);
        assert!(g.tick(&voter(10_000, Some(2099)), 1).is_empty());
        assert_eq!(g.tick(&voter(10_001, Some(2100)), 1000), vec![GuardCommand::PreVote]);
        // in flight: nothing more until the result
        assert!(g.tick(&voter(10_500, Some(2600)), 0).is_empty());
        assert_eq!(g.pre_vote_result(2, 5), None, "2 of 5 is no majority");
        // next round only after election_min + the new jitter (1000 ms)
        assert!(g.tick(&voter(11_900, Some(4000)), 0).is_empty());
        assert_eq!(g.tick(&voter(12_001, Some(4100)), 0), vec![GuardCommand::PreVote]);
        assert_eq!(g.pre_vote_result(3, 5), Some(GuardCommand::Elect));
    }

    #[test]
    fn a_fresh_member_counts_silence_from_its_start() {
        let mut g = ElectionGuard::new(timings(), 0);
        assert!(g.tick(&voter(2000, None), 0).is_empty());
        assert_eq!(g.tick(&voter(2100, None), 0), vec![GuardCommand::PreVote]);
    }

    #[test]
    fn a_leader_without_a_quorum_stands_back_and_probes() {
        let mut g = ElectionGuard::new(timings(), 0);
        assert!(g.tick(&leader(0, None), 0).is_empty(), "a new leader gets the lease");
        assert!(g.tick(&leader(0, Some(100)), 0).is_empty());
        // Ticks closer than PAUSED_AFTER: this leader is not coming back from a pause.
        assert!(g.tick(&leader(400, Some(500)), 0).is_empty());
        assert!(g.tick(&leader(800, Some(900)), 0).is_empty());
        assert!(g.tick(&leader(1000, Some(2000)), 0).is_empty(), "within the lease");
        assert_eq!(g.tick(&leader(1100, Some(2001)), 0), STAND_BACK);
        assert!(g.standing_back());
        assert!(g.tick(&leader(3000, Some(4000)), 0).is_empty());
        assert_eq!(g.tick(&leader(6100, Some(7000)), 0), LEAD_AGAIN);
        assert!(g.standing_back(), "probing");
        // the probe finds no quorum: back off (and announce it) again after PROBE_FOR
        assert!(g.tick(&leader(6700, Some(7600)), 0).is_empty());
        assert_eq!(g.tick(&leader(7100, Some(8000)), 0), STAND_BACK);
        // next probe finds a quorum: leads again, heartbeats stay on
        assert_eq!(g.tick(&leader(12_100, Some(13_000)), 0), LEAD_AGAIN);
        assert!(g.tick(&leader(12_200, Some(50)), 0).is_empty());
        assert!(!g.standing_back());
        assert!(g.tick(&leader(20_000, Some(50)), 0).is_empty());
    }

    #[test]
    fn a_leader_back_from_a_pause_waits_for_fresh_acknowledgements() {
        let mut g = ElectionGuard::new(timings(), 0);
        assert_eq!(g.tick(&leader(1000, Some(0)), 0), vec![]);
        // Paused from 1000 to 3500 ms: every acknowledgement it holds is from before.
        for now in [3500, 3900, 4300, 4450] {
            assert_eq!(g.tick(&leader(now, Some(now)), 0), vec![], "at {now} ms");
        }
        // Still none a second after it resumed: it has no quorum, and stands back.
        assert_eq!(g.tick(&leader(4500, Some(4500)), 0), STAND_BACK);
    }

    #[test]
    fn a_deposed_leader_turns_heartbeats_back_on() {
        let mut g = ElectionGuard::new(timings(), 0);
        for now in (8_000..10_000).step_by(400) {
            assert!(g.tick(&leader(now, Some(100)), 0).is_empty());
        }
        assert_eq!(g.tick(&leader(10_000, Some(5000)), 0), STAND_BACK);
        assert_eq!(g.tick(&voter(10_100, Some(0)), 0), LEAD_AGAIN);
        assert!(g.tick(&voter(10_200, Some(0)), 0).is_empty());
    }

    #[test]
    fn a_single_voter_always_has_its_quorum() {
        let mut g = ElectionGuard::new(timings(), 0);
        let mut input = leader(100_000, None);
        input.voters = 1;
        assert!(g.tick(&input, 0).is_empty());
    }

    #[test]
    fn pre_vote_grant_rule() {
        let t = timings();
        let long = Duration::from_secs(60);
        let quiet = Some(Duration::from_millis(2100));
        assert_eq!(pre_vote_refusal(&t, quiet, long, false, (3, 10), (3, 10)), None);
        assert_eq!(pre_vote_refusal(&t, quiet, long, false, (4, 1), (3, 10)), None);
        assert!(pre_vote_refusal(&t, quiet, long, false, (3, 9), (3, 10)).is_some());
        assert!(pre_vote_refusal(&t, quiet, long, false, (2, 99), (3, 10)).is_some());
        let heard =
            pre_vote_refusal(&t, Some(Duration::from_millis(300)), long, false, (3, 10), (3, 10));
        assert!(heard.unwrap().contains("heard from a leader 300ms ago"));
        assert!(pre_vote_refusal(&t, quiet, long, true, (3, 10), (3, 10)).is_some());
        assert!(
            pre_vote_refusal(&t, None, Duration::from_secs(1), false, (3, 10), (3, 10)).is_some()
        );
    }
}
