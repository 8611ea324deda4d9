//! `dns` steps: one RFC 2136 dynamic update of a zone, signed with TSIG and fenced by the epoch.
//!
//! ```text
//!  run(step, timeout, ctx)                    all of it bounded by the step's timeout
//!   ├─ TSIG key  secret_file ──base64──▶ TSigner      (read at every run, never logged)
//!   ├─ server    host:port ──▶ address; one TCP connection (or UDP socket) for every exchange
//!   ├─ read      query TXT _drover.<first record name> ──▶ Expected: absent | epoch E
//!   │              E > ctx.epoch ──▶ StepError::Refused (a newer activation owns the records)
//!   ├─ update    ONE UPDATE message, applied atomically by the server:
//!   │              prerequisite  TXT RRset == { "E" }   (or: no TXT RRset)
//!   │              update        delete the TXT RRset, add TXT "ctx.epoch",
//!   │                            delete each (name, type) RRset of the step, add its records
//!   │              YXRRSET / NXRRSET (prerequisite failed) ──▶ StepError::Refused
//!   └─ read back the step's RRsets and the companion TXT, from the server (signed, within
//!                  PRIMARY_SETTLE) then from each of `verify_servers` (unsigned, until the
//!                  deadline: their serial catching up); each must answer exactly the step's
//!                  records and ctx.epoch, else StepError::Failed naming the server, the record
//!                  and what it still answers (a newer epoch there: StepError::Refused)
//! ```
//!
//! [`verify`] is the read-back alone, once, for drift checks after commit.
//!
//! # Read-back
//!
//! A server may answer NOERROR to an update and not apply it (an update-policy that silently
//! drops names, a zone reloaded from an old file), and a secondary may never get the new
//! serial. So the step succeeds only when every server it names answers the new records and
//! epoch. The deadline of the read-back is nine tenths of the step's timeout (the last tenth
//! leaves room to say what was found); raise the timeout when secondaries need longer.
//!
//! # The epoch as a fencing token
//!
//! Next to the records it sets, a step owns a companion TXT record, [`companion_name`]:
//! `_drover.` followed by the name of the step's first record (`_drover.www.example.` for
//! `www.example.`). Its one value is the decimal epoch of the last activation that wrote the
//! records. A replaced leader (it carries an older epoch) finds the newer epoch there and leaves
//! the records alone; and since the update carries the value it read as an RFC 2136
//! prerequisite, a newer leader writing between the read and the update makes the *server*
//! reject it (NXRRSET or YXRRSET). Running a step again with the same epoch is harmless.
//!
//! # Trust
//!
//! With a `tsig` key every message is signed (the query too) and every answer must carry a
//! valid signature of the same key; only an answer reporting a failure may come unsigned (an
//! answer carrying a TSIG error such as BADSIG is unsigned by design). Over UDP each exchange is
//! one datagram: a lost one shows as a timeout, and the step's retries send it again.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use hickory_net::proto::op::{
    Edns, Message, MessageType, OpCode, Query, ResponseCode, SerialMessage, UpdateMessage,
};
use hickory_net::proto::rr::rdata::tsig::{TsigAlgorithm, TsigError};
use hickory_net::proto::rr::rdata::{A, AAAA, CNAME, TXT};
use hickory_net::proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigVerifier, TSigner};
use hickory_net::runtime::iocompat::AsyncIoTokioAsStd;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpStream;
use hickory_net::udp::UdpStream;
use hickory_net::{BufDnsStreamHandle, DnsStreamHandle};
use tokio::io::AsyncReadExt;

use super::{StepContext, StepError, StepOutput, OUTPUT_TAIL_MAX};
use crate::edge;
use crate::spec::{DnsProtocol, DnsRecordType, DnsStep, Tsig, TSIG_ALGORITHMS};

/// First label of the companion TXT record (see [`companion_name`]).
pub const COMPANION_LABEL: &str = "_drover";
/// Seconds either side of a TSIG signature's time within which the peer accepts it.
const TSIG_FUDGE_SECS: u16 = 300;
/// UDP payload size advertised with EDNS (the DNS flag day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;
/// Largest secret file read, in bytes: a base64 HMAC key is well under 200.
const SECRET_FILE_MAX: u64 = 4096;
/// Messages that are not the answer (another source or ID) ignored before giving up.
const STRAY_MAX: usize = 64;
/// How long the updated server itself may take to answer what it accepted: servers apply an
/// update before answering it (RFC 2136 3.5-3.6), so this only absorbs a slow commit.
const PRIMARY_SETTLE: Duration = Duration::from_secs(2);
/// Pause between two read-backs of a server that does not answer the new records yet.
const READ_BACK_EVERY: Duration = Duration::from_millis(200);

/// What the companion TXT record holds before an update: the update's prerequisite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// There is no companion TXT record (no activation has written these records yet).
    Absent,
    /// The companion TXT record holds this epoch.
    Epoch(u64),
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Absent => f.write_str("none"),
            Expected::Epoch(e) => write!(f, "{e}"),
        }
    }
}

/// The companion TXT record of `step`: `_drover.<name of the first record>`, e.g.
/// `_drover.www.example.` (validation guarantees that a step has a record).
pub fn companion_name(step: &DnsStep) -> String {
    let first = step.records.first().map_or(step.zone.as_str(), |r| r.name.as_str());
    format!("{COMPANION_LABEL}.{first}")
}

/// Runs a `dns` step for `ctx`: reads the companion TXT record, refuses when it holds a newer
/// epoch, and otherwise sends the update with what it read as the prerequisite. Bounded by
/// `timeout`.
pub async fn run(
    step: &DnsStep,
    timeout: Duration,
    ctx: &StepContext,
) -> Result<StepOutput, StepError> {
    let waiting = Waiting::default();
    let started = Instant::now();
    let deadline = started + timeout.mul_f64(0.9);
    let work = async {
        let mut session = Session::open(step, &step.server, true, &waiting).await?;
        let found = session.read_epoch().await?;
        if let Expected::Epoch(e) = found {
            if e > ctx.epoch {
                return Err(StepError::Refused {
                    reason: format!(
                        "dns: {} at {} holds epoch {e}, newer than this step's epoch {}: a newer \
                         activation owns the records of zone {}, so this stale one leaves them \
                         as they are",
                        session.plan.companion, session.server, ctx.epoch, step.zone
                    ),
                });
            }
        }
        let mut out = session.update(ctx, found).await?;
        let primary_serial =
            session.confirm(ctx, deadline.min(Instant::now() + PRIMARY_SETTLE), None).await?;
        for server in &step.verify_servers {
            let mut other = Session::open(step, server, false, &waiting).await?;
            other.confirm(ctx, deadline, Some((session.server, primary_serial))).await?;
        }
        let servers = 1 + step.verify_servers.len();
        out.detail = format!(
            "{}, read back from {servers} server{}",
            out.detail,
            if servers == 1 { "" } else { "s" }
        );
        Ok(out)
    };
    within(timeout, &waiting, work).await
}

/// Reads back, once and changing nothing, whether the records of `step` and its companion TXT
/// record hold what a run for `ctx` set: on the step's server and on each of its
/// `verify_servers`. `Ok` when every one answers so; [`StepError::Failed`] listing, per server,
/// each record that differs and what it answers (drift); [`StepError::Refused`] when a server
/// holds an epoch newer than `ctx.epoch` (a newer activation owns the records). Bounded by
/// `timeout`.
pub async fn verify(
    step: &DnsStep,
    timeout: Duration,
    ctx: &StepContext,
) -> Result<StepOutput, StepError> {
    let waiting = Waiting::default();
    let work = async {
        let mut drift = Vec::new();
        let mut session = Session::open(step, &step.server, true, &waiting).await?;
        let primary = session.read_back(ctx).await?;
        if !primary.differences.is_empty() {
            drift.push(format!("{}: {}", session.server, primary.differences.join("; ")));
        }
        for server in &step.verify_servers {
            let mut other = Session::open(step, server, false, &waiting).await?;
            let found = other.read_back(ctx).await?;
            if !found.differences.is_empty() {
                drift.push(format!(
                    "{} (serial {}, the primary's {}): {}",
                    other.server,
                    serial_text(found.serial),
                    serial_text(primary.serial),
                    found.differences.join("; ")
                ));
            }
        }
        if drift.is_empty() {
            let servers = 1 + step.verify_servers.len();
            Ok(StepOutput {
                detail: format!(
                    "zone {}: {} record{} and epoch {} as set, on {servers} server{}",
                    step.zone,
                    step.records.len(),
                    if step.records.len() == 1 { "" } else { "s" },
                    ctx.epoch,
                    if servers == 1 { "" } else { "s" }
                ),
                output_tail: String::new(),
            })
        } else {
            Err(failed(
                format!(
                    "dns: zone {} no longer holds what epoch {} set: {}",
                    step.zone,
                    ctx.epoch,
                    drift.join(" | ")
                ),
                String::new(),
            ))
        }
    };
    within(timeout, &waiting, work).await
}

fn serial_text(serial: Option<u32>) -> String {
    serial.map_or_else(|| "unknown".to_string(), |s| s.to_string())
}

/// Sends the update of `step` for `ctx.epoch` with `expected` as the prerequisite on the
/// companion TXT record, without reading the record first: the server refuses the update when
/// the record does not hold `expected`. [`run`] is a read followed by this. Bounded by
/// `timeout`.
pub async fn update(
    step: &DnsStep,
    timeout: Duration,
    ctx: &StepContext,
    expected: Expected,
) -> Result<StepOutput, StepError> {
    let waiting = Waiting::default();
    let work = async {
        let mut session = Session::open(step, &step.server, true, &waiting).await?;
        session.update(ctx, expected).await
    };
    within(timeout, &waiting, work).await
}

/// What the companion TXT record of `step` holds now, read from the step's server (signed
/// when the step has a key). Bounded by `timeout`.
pub async fn read_epoch(step: &DnsStep, timeout: Duration) -> Result<Expected, StepError> {
    let waiting = Waiting::default();
    let work = async {
        let mut session = Session::open(step, &step.server, true, &waiting).await?;
        session.read_epoch().await
    };
    within(timeout, &waiting, work).await
}

/// `work`, or [`StepError::Timeout`] (saying what was awaited) when it takes over `timeout`.
async fn within<T>(
    timeout: Duration,
    waiting: &Waiting,
    work: impl std::future::Future<Output = Result<T, StepError>>,
) -> Result<T, StepError> {
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(StepError::Timeout { after: timeout, output_tail: waiting.describe() }),
    }
}

/// What a step is waiting for, for the message of a timeout.
#[derive(Debug, Default)]
struct Waiting(Mutex<String>);

impl Waiting {
    fn set(&self, what: String) {
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = what;
    }

    fn describe(&self) -> String {
        let what = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        format!("dns: gave up {what}")
    }
}

/// The messages of a step, built from its spec; pure (no I/O), so it is unit-tested.
#[derive(Debug, Clone)]
struct Plan {
    zone: Name,
    companion: Name,
    /// TTL of the companion TXT record: that of the step's first record.
    companion_ttl: u32,
    /// The records to set, in the step's order.
    records: Vec<Record>,
}

impl Plan {
    /// The plan of `step`, or why its names or values do not parse.
    fn new(step: &DnsStep) -> Result<Plan, String> {
        let zone = parse_name(&step.zone, "zone")?;
        let companion = parse_name(&companion_name(step), "companion TXT name")?;
        let mut records = Vec::with_capacity(step.records.len());
        for r in &step.records {
            let name = parse_name(&r.name, "record name")?;
            if !zone.zone_of(&name) {
                return Err(format!("record {} is not inside zone {}", r.name, step.zone));
            }
            let data = match r.rtype {
                DnsRecordType::A => r.value.parse().map(|ip| RData::A(A(ip))).ok(),
                DnsRecordType::AAAA => r.value.parse().map(|ip| RData::AAAA(AAAA(ip))).ok(),
                DnsRecordType::CNAME => Name::from_ascii(&r.value).ok().map(|n| {
                    let mut n = n;
                    n.set_fqdn(true);
                    RData::CNAME(CNAME(n))
                }),
            };
            let Some(data) = data else {
                return Err(format!("{:?} is not a valid {:?} value", r.value, r.rtype));
            };
            records.push(Record::from_rdata(name, r.ttl_secs, data));
        }
        let companion_ttl = step.records.first().map_or(0, |r| r.ttl_secs);
        Ok(Plan { zone, companion, companion_ttl, records })
    }

    /// The query of the companion TXT record.
    fn query(&self) -> Message {
        query_of(&self.companion, RecordType::TXT)
    }

    /// The (name, type) RRsets the step sets, each once, in the step's order, with the values
    /// it sets in them (as [`rdata_text`] writes them, sorted).
    fn rrsets(&self) -> Vec<(Name, RecordType, Vec<String>)> {
        let mut sets: Vec<(Name, RecordType, Vec<String>)> = Vec::new();
        for r in &self.records {
            let value = rdata_text(&r.data);
            match sets.iter_mut().find(|(n, t, _)| *n == r.name && *t == r.record_type()) {
                Some((_, _, values)) => values.push(value),
                None => sets.push((r.name.clone(), r.record_type(), vec![value])),
            }
        }
        for (_, _, values) in &mut sets {
            values.sort();
            values.dedup();
        }
        sets
    }

    /// What differs between what a server answers and what a run for `epoch` sets: one line
    /// per record set or companion, e.g. `www.example. A answers 192.0.2.1 (the step sets
    /// 198.18.0.5)`; empty when the server holds exactly the step's records and epoch.
    fn differences(&self, epoch: u64, answered: &Answered) -> Vec<String> {
        let mut out = Vec::new();
        for ((name, rtype, want), got) in self.rrsets().iter().zip(&answered.rrsets) {
            if want != got {
                let got = if got.is_empty() { "nothing".to_string() } else { got.join(", ") };
                out.push(format!(
                    "{name} {rtype} answers {got} (the step sets {})",
                    want.join(", ")
                ));
            }
        }
        match &answered.epoch {
            Ok(Expected::Epoch(e)) if *e == epoch => {}
            Ok(found) => out.push(format!(
                "{} TXT holds epoch {found} (the step's epoch is {epoch})",
                self.companion
            )),
            Err(why) => out.push(format!("{} TXT {why}", self.companion)),
        }
        out
    }

    /// The update of the records for `epoch`, on condition that the companion TXT record holds
    /// `expected` (RFC 2136 2.4.2 "RRset exists (value dependent)", or 2.4.3 "RRset does not
    /// exist"). Deletes come before adds so that two records of one name and type both stay.
    fn update(&self, expected: Expected, epoch: u64) -> Message {
        let mut message = Message::query();
        message.metadata.op_code = OpCode::Update;
        message.metadata.recursion_desired = false;
        let mut zone = Query::query(self.zone.clone(), RecordType::SOA);
        zone.set_query_class(DNSClass::IN);
        message.add_zone(zone);

        message.add_pre_requisite(match expected {
            Expected::Absent => rrset_marker(&self.companion, RecordType::TXT, DNSClass::NONE),
            Expected::Epoch(e) => Record::from_rdata(self.companion.clone(), 0, epoch_txt(e)),
        });

        message.add_update(rrset_marker(&self.companion, RecordType::TXT, DNSClass::ANY));
        message.add_update(Record::from_rdata(
            self.companion.clone(),
            self.companion_ttl,
            epoch_txt(epoch),
        ));
        let mut deleted: Vec<(&Name, RecordType)> = Vec::new();
        for r in &self.records {
            let key = (&r.name, r.record_type());
            if !deleted.contains(&key) {
                deleted.push(key);
                message.add_update(rrset_marker(&r.name, r.record_type(), DNSClass::ANY));
            }
        }
        message.add_updates(self.records.iter().cloned());
        message.edns = Some(edns());
        message
    }
}

/// An RDATA-less record naming an RRset: with class ANY, "delete this RRset" in the update
/// section (RFC 2136 2.5.2); with class NONE, "this RRset does not exist" as a prerequisite
/// (2.4.3).
fn rrset_marker(name: &Name, rtype: RecordType, class: DNSClass) -> Record {
    let mut record = Record::update0(name.clone(), 0, rtype);
    record.dns_class = class;
    record
}

/// A query of (`name`, `rtype`) in class IN, with EDNS.
fn query_of(name: &Name, rtype: RecordType) -> Message {
    let mut message = Message::query();
    let mut query = Query::query(name.clone(), rtype);
    query.set_query_class(DNSClass::IN);
    message.add_query(query);
    message.edns = Some(edns());
    message
}

/// Record data as zone files and dig print it: `192.0.2.1`, `2001:db8::1`, `www.example.`.
fn rdata_text(data: &RData) -> String {
    data.to_string()
}

/// What a server answered for a step's record sets and companion, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answered {
    /// Per RRset of [`Plan::rrsets`], in its order: the values answered, sorted.
    rrsets: Vec<Vec<String>>,
    /// The companion's epoch, or why it is not one.
    epoch: Result<Expected, String>,
}

/// A read-back of one server: what differs from what the step sets, and the zone's serial.
struct ReadBack {
    differences: Vec<String>,
    serial: Option<u32>,
}

fn epoch_txt(epoch: u64) -> RData {
    RData::TXT(TXT::new(vec![epoch.to_string()]))
}

fn edns() -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_PAYLOAD).set_version(0);
    edns
}

fn parse_name(text: &str, what: &str) -> Result<Name, String> {
    let mut name =
        Name::from_ascii(text).map_err(|e| format!("{what} {text:?} is not a DNS name ({e})"))?;
    name.set_fqdn(true);
    Ok(name)
}

/// What the companion TXT records of an answer say: the epoch, or why they are not drover's.
fn epoch_of(records: &[Record], companion: &Name) -> Result<Expected, String> {
    let values: Vec<String> = records
        .iter()
        .filter(|r| r.name == *companion)
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => {
                Some(txt.txt_data.iter().map(|s| String::from_utf8_lossy(s)).collect())
            }
            _ => None,
        })
        .collect();
    match values.as_slice() {
        [] => Ok(Expected::Absent),
        [one] => one
            .parse()
            .map(Expected::Epoch)
            .map_err(|_| format!("holds {:?}, which is not an epoch", edge::shorten(one, 40))),
        _ => Err(format!("holds {} TXT records instead of one epoch", values.len())),
    }
}

/// The answer to one request, its signature checked.
pub(crate) struct Answer {
    message: Message,
    /// The TSIG error the server reported (its answer is then unsigned).
    tsig_error: Option<TsigError>,
}

impl Answer {
    fn rcode(&self) -> ResponseCode {
        self.message.metadata.response_code
    }

    /// The answer as text, for the output tail of an error.
    fn text(&self) -> String {
        edge::text_tail(self.message.to_string().as_bytes(), OUTPUT_TAIL_MAX)
    }
}

/// Parses `bytes` and, when the request was signed, checks the answer's signature: a valid
/// signature of the key, or no signature on an answer that reports a failure.
pub(crate) fn check_answer(
    bytes: &[u8],
    verifier: Option<&mut TSigVerifier>,
) -> Result<Answer, String> {
    let message =
        Message::from_vec(bytes).map_err(|e| format!("its answer is not a DNS message ({e})"))?;
    if message.metadata.message_type != MessageType::Response {
        return Err("its answer is not a DNS response".into());
    }
    let Some(verifier) = verifier else {
        return Ok(Answer { message, tsig_error: None });
    };
    let tsig_error = message.signature().and_then(|s| s.data.error);
    if message.signature().is_none() || tsig_error.is_some() {
        if message.metadata.response_code == ResponseCode::NoError {
            return Err("its answer to a signed request is not signed, so it cannot be trusted; \
                        check that the server knows the key"
                .into());
        }
        return Ok(Answer { message, tsig_error });
    }
    let verified = verifier.verify(bytes).map_err(|e| {
        format!(
            "its answer failed TSIG verification ({e}); check that the server has the same \
             secret for the key"
        )
    })?;
    Ok(Answer { message: verified.into_message(), tsig_error: None })
}

/// The standard mnemonic of a response code (`NOTAUTH`), as servers and dig print it.
fn mnemonic(rcode: ResponseCode) -> String {
    let name = match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::YXDomain => "YXDOMAIN",
        ResponseCode::YXRRSet => "YXRRSET",
        ResponseCode::NXRRSet => "NXRRSET",
        ResponseCode::NotAuth => "NOTAUTH",
        ResponseCode::NotZone => "NOTZONE",
        other => return format!("rcode {}", u16::from(other)),
    };
    name.to_string()
}

fn tsig_mnemonic(error: TsigError) -> String {
    match error {
        TsigError::BadSig => "BADSIG".into(),
        TsigError::BadKey => "BADKEY".into(),
        TsigError::BadTime => "BADTIME".into(),
        TsigError::BadTrunc => "BADTRUNC".into(),
        TsigError::Unknown(code) => format!("error {code}"),
    }
}

/// The transport of a session: hickory's framing over one TCP connection or UDP socket.
enum Conn {
    Tcp(TcpStream<AsyncIoTokioAsStd<tokio::net::TcpStream>>),
    Udp(UdpStream<TokioRuntimeProvider>),
}

/// One step's conversation with its server.
struct Session<'a> {
    step: &'a DnsStep,
    plan: Plan,
    server: SocketAddr,
    signer: Option<TSigner>,
    conn: Conn,
    handle: BufDnsStreamHandle,
    waiting: &'a Waiting,
    started: Instant,
}

impl<'a> Session<'a> {
    /// Loads the key (when `sign` and the step has one), resolves `server` (the step's own or
    /// one of its `verify_servers`) and connects (TCP) or binds a socket (UDP).
    async fn open(
        step: &'a DnsStep,
        server: &str,
        sign: bool,
        waiting: &'a Waiting,
    ) -> Result<Session<'a>, StepError> {
        let started = Instant::now();
        let plan = Plan::new(step).map_err(|why| failed(format!("dns: {why}"), String::new()))?;
        let signer = match &step.tsig {
            Some(tsig) if sign => {
                waiting.set(format!("reading the TSIG secret file {}", tsig.secret_file));
                Some(load_signer(tsig).await?)
            }
            _ => None,
        };
        waiting.set(format!("resolving DNS server {server}"));
        let server = resolve(server).await?;
        let proto = protocol_name(step.protocol);
        waiting.set(format!("connecting to DNS server {server} over {proto}"));
        let (conn, handle) = match step.protocol {
            DnsProtocol::Tcp => {
                let tcp = tokio::net::TcpStream::connect(server)
                    .await
                    .map_err(|e| connect_error(server, proto, &e))?;
                let (stream, handle) = TcpStream::from_stream(AsyncIoTokioAsStd(tcp), server);
                (Conn::Tcp(stream), handle)
            }
            DnsProtocol::Udp => {
                let (socket, handle) =
                    UdpStream::new(server, None, None, false, TokioRuntimeProvider::new());
                let stream = socket.await.map_err(|e| {
                    failed(
                        format!("dns: cannot open a UDP socket towards {server}: {e}"),
                        String::new(),
                    )
                })?;
                (Conn::Udp(stream), handle)
            }
        };
        Ok(Session { step, plan, server, signer, conn, handle, waiting, started })
    }

    /// Reads back the step's record sets, the companion and the zone's SOA serial, and says
    /// what differs from what a run for `ctx` sets. A newer epoch than `ctx.epoch` in the
    /// companion is [`StepError::Refused`].
    async fn read_back(&mut self, ctx: &StepContext) -> Result<ReadBack, StepError> {
        let mut rrsets = Vec::new();
        for (name, rtype, _) in self.plan.rrsets() {
            let what = format!("read-back of {name} {rtype}");
            let answer = self.exchange(query_of(&name, rtype), &what).await?;
            self.authoritative(&answer, &what)?;
            let mut values: Vec<String> = match answer.rcode() {
                ResponseCode::NoError | ResponseCode::NXDomain => answer
                    .message
                    .answers
                    .iter()
                    .filter(|r| r.name == name && r.record_type() == rtype)
                    .map(|r| rdata_text(&r.data))
                    .collect(),
                _ => return Err(self.rejected(&what, &answer)),
            };
            values.sort();
            values.dedup();
            rrsets.push(values);
        }
        let epoch = self.read_companion().await?.map_err(|(why, _)| why);
        if let Ok(Expected::Epoch(e)) = epoch {
            if e > ctx.epoch {
                return Err(StepError::Refused {
                    reason: format!(
                        "dns: {} at {} holds epoch {e}, newer than this step's epoch {}: a newer \
                         activation owns the records of zone {}",
                        self.plan.companion, self.server, ctx.epoch, self.step.zone
                    ),
                });
            }
        }
        let serial = self.serial().await;
        let answered = Answered { rrsets, epoch };
        Ok(ReadBack { differences: self.plan.differences(ctx.epoch, &answered), serial })
    }

    /// The zone's SOA serial as this server answers it; `None` when it does not say.
    async fn serial(&mut self) -> Option<u32> {
        let what = format!("query of SOA {}", self.plan.zone);
        let answer = self.exchange(query_of(&self.plan.zone, RecordType::SOA), &what).await.ok()?;
        answer.message.answers.iter().find_map(|r| match &r.data {
            RData::SOA(soa) => Some(soa.serial),
            _ => None,
        })
    }

    /// Fails unless `answer` carries the AA flag: only an authoritative server's answer tells
    /// what the zone holds (a resolver's may come from its cache).
    fn authoritative(&self, answer: &Answer, what: &str) -> Result<(), StepError> {
        if answer.message.metadata.authoritative
            || !matches!(answer.rcode(), ResponseCode::NoError | ResponseCode::NXDomain)
        {
            return Ok(());
        }
        Err(failed(
            format!(
                "dns: {} is not authoritative for zone {} (its answer to the {what} lacks the \
                 AA flag); the step's server and verify_servers must be servers of the zone, \
                 not resolvers",
                self.server, self.step.zone
            ),
            answer.text(),
        ))
    }

    /// Reads back until this server answers exactly what the update for `ctx` set, or
    /// `deadline`. `primary`: when this is one of `verify_servers`, the updated server and
    /// the serial it answered, for the message. Returns this server's serial.
    async fn confirm(
        &mut self,
        ctx: &StepContext,
        deadline: Instant,
        primary: Option<(SocketAddr, Option<u32>)>,
    ) -> Result<Option<u32>, StepError> {
        loop {
            self.waiting.set(format!("reading back zone {} from {}", self.step.zone, self.server));
            let found = self.read_back(ctx).await?;
            if found.differences.is_empty() {
                return Ok(found.serial);
            }
            if Instant::now() + READ_BACK_EVERY >= deadline {
                let still = found.differences.join("; ");
                let waited = edge::fmt_ms(self.started.elapsed());
                let reason = match primary {
                    None => format!(
                        "dns: {} answered NOERROR to the update of zone {} but {waited} later \
                         still answers: {still}; it did not apply the update: check its \
                         update-policy (a rule may drop these names silently), whether \
                         something reloads the zone from an old file, and its log",
                        self.server, self.step.zone
                    ),
                    Some((updated, serial)) => format!(
                        "dns: {} (in verify_servers) still answers, {waited} after the update of \
                         zone {} at {updated}: {still} (its serial {}, the updated server's \
                         {}); check that it is a secondary of the zone that gets NOTIFY from \
                         {updated} and can transfer the zone, or raise the step's timeout if \
                         it needs longer",
                        self.server,
                        self.step.zone,
                        serial_text(found.serial),
                        serial_text(serial)
                    ),
                };
                return Err(failed(reason, String::new()));
            }
            tokio::time::sleep(READ_BACK_EVERY).await;
        }
    }

    /// Reads the companion TXT record; an error when it holds something else than one epoch.
    async fn read_epoch(&mut self) -> Result<Expected, StepError> {
        let text = self.read_companion().await?;
        text.map_err(|(why, answer)| {
            failed(
                format!(
                    "dns: {} at {} {why}; this record is drover's fencing token for zone {}: \
                     delete it (e.g. with nsupdate or knsupdate) unless something else owns the \
                     name",
                    self.plan.companion, self.server, self.step.zone
                ),
                answer,
            )
        })
    }

    /// Reads the companion TXT record: the epoch, or why it is not one (with the answer's
    /// text). Errors are those of the exchange itself.
    async fn read_companion(&mut self) -> Result<Result<Expected, (String, String)>, StepError> {
        let what = format!("query of TXT {}", self.plan.companion);
        let answer = self.exchange(self.plan.query(), &what).await?;
        let authoritative = answer.message.metadata.authoritative;
        match answer.rcode() {
            ResponseCode::NoError | ResponseCode::NXDomain if !authoritative => Err(failed(
                format!(
                    "dns: {} is not authoritative for {} (its answer to the {what} lacks the AA \
                     flag); set the step's server to the primary of zone {}",
                    self.server, self.plan.companion, self.step.zone
                ),
                answer.text(),
            )),
            ResponseCode::NXDomain => Ok(Ok(Expected::Absent)),
            ResponseCode::NoError => Ok(epoch_of(&answer.message.answers, &self.plan.companion)
                .map_err(|why| (why, answer.text()))),
            _ => Err(self.rejected(&what, &answer)),
        }
    }

    /// Sends the update for `ctx.epoch` with `expected` as the prerequisite.
    async fn update(
        &mut self,
        ctx: &StepContext,
        expected: Expected,
    ) -> Result<StepOutput, StepError> {
        let what = format!("update of zone {}", self.step.zone);
        let answer = self.exchange(self.plan.update(expected, ctx.epoch), &what).await?;
        match answer.rcode() {
            ResponseCode::NoError => Ok(StepOutput {
                detail: format!(
                    "updated {} record{} in zone {} at {} over {} (epoch {}, was {expected}) \
                     after {}",
                    self.plan.records.len(),
                    if self.plan.records.len() == 1 { "" } else { "s" },
                    self.step.zone,
                    self.server,
                    protocol_name(self.step.protocol),
                    ctx.epoch,
                    edge::fmt_ms(self.started.elapsed()),
                ),
                output_tail: String::new(),
            }),
            ResponseCode::NXRRSet | ResponseCode::YXRRSet => {
                Err(self.prerequisite_failed(&answer, ctx, expected).await)
            }
            _ => Err(self.rejected(&what, &answer)),
        }
    }

    /// The error for an update whose prerequisite failed: the companion record no longer holds
    /// what was read. Always [`StepError::Refused`]: another writer changed the records between
    /// the read and the update, so a retry must not overwrite them blindly; the workflow
    /// decides. Reads the record again to say who owns the records now.
    async fn prerequisite_failed(
        &mut self,
        answer: &Answer,
        ctx: &StepContext,
        expected: Expected,
    ) -> StepError {
        let prerequisite = match expected {
            Expected::Absent => format!("{} does not exist", self.plan.companion),
            Expected::Epoch(e) => format!("{} holds epoch {e}", self.plan.companion),
        };
        let head = format!(
            "dns: {} answered {} to the update of zone {}: its prerequisite that {prerequisite} \
             failed, so nothing was changed",
            self.server,
            mnemonic(answer.rcode()),
            self.step.zone
        );
        match self.read_epoch().await {
            Ok(Expected::Epoch(now)) if now > ctx.epoch => StepError::Refused {
                reason: format!(
                    "{head}; it now holds epoch {now}, newer than this step's epoch {}: a newer \
                     activation owns the records",
                    ctx.epoch
                ),
            },
            Ok(now) => StepError::Refused {
                reason: format!(
                    "{head}; it now holds epoch {now}: another writer changed it since it was \
                     read (this step's epoch is {}); find out who writes these records, then \
                     resume the workflow",
                    ctx.epoch
                ),
            },
            Err(err) => StepError::Refused {
                reason: format!(
                    "{head}; reading it again did not work either ({err}); find out who writes \
                     these records, then resume the workflow"
                ),
            },
        }
    }

    /// The error for an answer that refuses a request, saying what to check.
    fn rejected(&self, what: &str, answer: &Answer) -> StepError {
        let server = self.server;
        let zone = &self.step.zone;
        let rcode = answer.rcode();
        let code = match answer.tsig_error {
            Some(e) => format!("{} (TSIG {})", mnemonic(rcode), tsig_mnemonic(e)),
            None => mnemonic(rcode),
        };
        let key = self.step.tsig.as_ref().map(|t| format!("key {} ({})", t.name, t.algorithm));
        let same = "check that the key name, secret and algorithm are the same on both sides";
        let acl = format!(
            "the zone's ACL lets the key update the step's records and the TXT record {} (Knot: \
             an acl with action update; BIND: update-policy or allow-update)",
            self.plan.companion
        );
        let advice = match (rcode, answer.tsig_error, &key) {
            (_, Some(TsigError::BadTime), _) => format!(
                "the clocks of this node and the server differ by more than {TSIG_FUDGE_SECS}s; \
                 synchronise them (NTP)"
            ),
            (ResponseCode::NotAuth, Some(TsigError::BadSig), Some(key)) => {
                format!("the server has another secret for {key}; {same}")
            }
            (ResponseCode::NotAuth, Some(TsigError::BadKey), Some(key)) => format!(
                "the server does not know {key} or does not let it make this update of zone \
                 {zone}; {same}, and that {acl}"
            ),
            (ResponseCode::NotAuth, _, Some(key)) => format!(
                "the server did not accept {key} for zone {zone}, or is not authoritative for \
                 it; {same}, that {acl}, and that the server is the zone's primary"
            ),
            (ResponseCode::NotAuth, _, None) => format!(
                "the server wants a TSIG key to update zone {zone}, or is not authoritative for \
                 it; give the step a tsig key and check that {acl}"
            ),
            (ResponseCode::Refused, _, _) => format!(
                "the server's policy does not allow it: allow {} to update the step's records \
                 and the TXT record {} in zone {zone} (Knot: an acl with action update for the \
                 key, in the zone's acl list; BIND: update-policy or allow-update), and check \
                 that the server serves the zone",
                key.as_deref().unwrap_or("this node"),
                self.plan.companion
            ),
            (ResponseCode::NotZone, _, _) => format!(
                "a record name is outside zone {zone} as the server sees it; check the step's \
                 zone and record names"
            ),
            (ResponseCode::ServFail, _, _) => format!(
                "the server could not process it (zone {zone} not loaded, or a storage error); \
                 see the server's log"
            ),
            (ResponseCode::FormErr, _, _) => {
                "the server could not parse it; check that it supports \
                 RFC 2136 updates and the TSIG algorithm, and see its log"
                    .to_string()
            }
            (ResponseCode::NotImp, _, _) => "the server does not implement dynamic updates; point \
                 the step's server at a primary that does"
                .to_string(),
            _ => "see the server's log".to_string(),
        };
        failed(format!("dns: {server} answered {code} to the {what}: {advice}"), answer.text())
    }

    /// Signs `message` (with a key), sends it and waits for its answer.
    async fn exchange(&mut self, mut message: Message, what: &str) -> Result<Answer, StepError> {
        let proto = protocol_name(self.step.protocol);
        let server = self.server;
        let io_failed =
            |why: String| failed(format!("dns: {what} to {server}: {why}"), String::new());
        let mut verifier = match &self.signer {
            Some(signer) => message
                .finalize(signer, unix_now())
                .map_err(|e| io_failed(format!("cannot sign it: {e}")))?,
            None => None,
        };
        let id = message.metadata.id;
        let bytes = message.to_vec().map_err(|e| io_failed(format!("cannot encode it: {e}")))?;
        self.handle
            .send(SerialMessage::new(bytes, server))
            .map_err(|e| io_failed(format!("cannot send it: {e}")))?;
        self.waiting.set(format!("waiting for the answer of {server} over {proto} to the {what}"));
        for _ in 0..STRAY_MAX {
            let received = match &mut self.conn {
                Conn::Tcp(stream) => stream.next().await,
                Conn::Udp(stream) => stream.next().await,
            };
            let (bytes, from) = match received {
                Some(Ok(message)) => message.into_parts(),
                Some(Err(e)) => return Err(io_failed(format!("{e}"))),
                None => {
                    return Err(io_failed(
                        "the server closed the connection without answering".into(),
                    ))
                }
            };
            let from_server = from.ip().to_canonical() == server.ip().to_canonical()
                && from.port() == server.port();
            if !from_server || bytes.get(..2) != Some(&id.to_be_bytes()[..]) {
                continue;
            }
            let answer = check_answer(&bytes, verifier.as_mut()).map_err(io_failed)?;
            if answer.message.metadata.truncation {
                return Err(io_failed(
                    "its answer came truncated; set the step's protocol to tcp".into(),
                ));
            }
            return Ok(answer);
        }
        Err(io_failed(format!("{STRAY_MAX} messages came that were not its answer")))
    }
}

/// The TSIG signer of `tsig`, its secret read from its file now.
async fn load_signer(tsig: &Tsig) -> Result<TSigner, StepError> {
    let key = format!("key {}", tsig.name);
    let path = &tsig.secret_file;
    let no = |why: String| failed(format!("dns: {why}"), String::new());
    let algorithm = match tsig.algorithm.as_str() {
        "hmac-sha256" => TsigAlgorithm::HmacSha256,
        "hmac-sha384" => TsigAlgorithm::HmacSha384,
        "hmac-sha512" => TsigAlgorithm::HmacSha512,
        other => {
            return Err(no(format!(
                "TSIG algorithm {other:?} of {key} cannot be used; use one of {} on both sides",
                TSIG_ALGORITHMS.join(", ")
            )))
        }
    };
    let put_secret = "it must hold only the key's base64 secret (the secret value that \
                      tsig-keygen or keymgr -t prints), readable by drover alone";
    let file = tokio::fs::File::open(path).await.map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => no(format!(
            "the TSIG secret file {path} of {key} does not exist; create it: {put_secret}"
        )),
        _ => no(format!("cannot open the TSIG secret file {path} of {key} ({e}); {put_secret}")),
    })?;
    let mut text = Vec::new();
    file.take(SECRET_FILE_MAX + 1)
        .read_to_end(&mut text)
        .await
        .map_err(|e| no(format!("cannot read the TSIG secret file {path} of {key} ({e})")))?;
    if text.len() as u64 > SECRET_FILE_MAX {
        return Err(no(format!(
            "the TSIG secret file {path} of {key} is larger than {SECRET_FILE_MAX} bytes; \
             {put_secret}"
        )));
    }
    // The text is a secret: no part of it goes into a message.
    let secret = std::str::from_utf8(&text)
        .ok()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .and_then(|s| data_encoding::BASE64.decode(s.as_bytes()).ok())
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            no(format!(
                "the TSIG secret file {path} of {key} does not hold a base64 secret; {put_secret}"
            ))
        })?;
    let name = parse_name(&tsig.name, "TSIG key name").map_err(no)?;
    TSigner::new(secret, algorithm, name, TSIG_FUDGE_SECS)
        .map_err(|e| no(format!("cannot use {key}: {e}")))
}

/// The address of `server` (`host:port`); the first one when the name has several.
async fn resolve(server: &str) -> Result<SocketAddr, StepError> {
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let not = |why: String| {
        failed(
            format!("dns: cannot resolve the DNS server {server} ({why}); check the step's server"),
            String::new(),
        )
    };
    let mut addrs = tokio::net::lookup_host(server).await.map_err(|e| not(e.to_string()))?;
    addrs.next().ok_or_else(|| not("no address".into()))
}

fn connect_error(server: SocketAddr, proto: &str, err: &io::Error) -> StepError {
    let reason = match err.kind() {
        io::ErrorKind::ConnectionRefused => format!(
            "dns: DNS server {server} refused the {proto} connection (nothing listens there); \
             check the step's server address and port, and that the server runs"
        ),
        _ => format!(
            "dns: cannot connect to DNS server {server} over {proto} ({err}); check the step's \
             server address and the network path to it"
        ),
    };
    failed(reason, String::new())
}

fn failed(reason: String, output_tail: String) -> StepError {
    StepError::Failed { reason, output_tail }
}

fn protocol_name(protocol: DnsProtocol) -> &'static str {
    match protocol {
        DnsProtocol::Tcp => "tcp",
        DnsProtocol::Udp => "udp",
    }
}

/// Seconds since the Unix epoch: TSIG signatures carry wall-clock time.
fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DnsRecord;

    fn record(name: &str, rtype: DnsRecordType, ttl_secs: u32, value: &str) -> DnsRecord {
        DnsRecord { name: name.into(), rtype, ttl_secs, value: value.into() }
    }

    fn step(records: Vec<DnsRecord>) -> DnsStep {
        DnsStep {
            server: "127.0.0.1:53".into(),
            zone: "example.test.".into(),
            tsig: None,
            records,
            protocol: DnsProtocol::Tcp,
            verify_servers: Vec::new(),
        }
    }

    #[test]
    fn differences_name_each_record_set_and_the_epoch_that_differ() {
        let plan = Plan::new(&step(vec![
            record("www.example.test.", DnsRecordType::A, 60, "198.18.0.2"),
            record("www.example.test.", DnsRecordType::A, 60, "198.18.0.1"),
            record("db.example.test.", DnsRecordType::CNAME, 60, "www.example.test."),
        ]))
        .expect("plan");
        let sets = plan.rrsets();
        assert_eq!(sets.len(), 2, "one entry per (name, type)");
        assert_eq!(sets[0].2, vec!["198.18.0.1", "198.18.0.2"], "sorted");
        let exact = Answered {
            rrsets: vec![
                vec!["198.18.0.1".into(), "198.18.0.2".into()],
                vec!["www.example.test.".into()],
            ],
            epoch: Ok(Expected::Epoch(4)),
        };
        assert!(plan.differences(4, &exact).is_empty());
        assert_eq!(
            plan.differences(5, &exact),
            vec!["_drover.www.example.test. TXT holds epoch 4 (the step's epoch is 5)"]
        );
        let stale = Answered {
            rrsets: vec![vec!["192.0.2.9".into()], vec![]],
            epoch: Ok(Expected::Absent),
        };
        assert_eq!(
            plan.differences(5, &stale),
            vec![
                "www.example.test. A answers 192.0.2.9 (the step sets 198.18.0.1, 198.18.0.2)",
                "db.example.test. CNAME answers nothing (the step sets www.example.test.)",
                "_drover.www.example.test. TXT holds epoch none (the step's epoch is 5)",
            ]
        );
        let garbled =
            Answered { epoch: Err("holds 2 TXT records instead of one epoch".into()), ..exact };
        assert_eq!(
            plan.differences(4, &garbled),
            vec!["_drover.www.example.test. TXT holds 2 TXT records instead of one epoch"]
        );
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    /// (name, class, type, ttl, rdata as text) of each record, for comparisons.
    fn rows(records: &[Record]) -> Vec<(String, DNSClass, RecordType, u32, String)> {
        records
            .iter()
            .map(|r| {
                let data = match &r.data {
                    RData::Update0(_) => "-".to_string(),
                    other => other.to_string(),
                };
                (r.name.to_ascii(), r.dns_class, r.record_type(), r.ttl, data)
            })
            .collect()
    }

    fn failover_step() -> DnsStep {
        step(vec![
            record("www.example.test.", DnsRecordType::A, 30, "198.51.100.20"),
            record("www.example.test.", DnsRecordType::AAAA, 30, "2001:db8::20"),
            record("api.example.test.", DnsRecordType::CNAME, 60, "www.example.test."),
            record("www.example.test.", DnsRecordType::A, 30, "198.51.100.21"),
        ])
    }

    #[test]
    fn companion_is_named_after_the_first_record() {
        assert_eq!(companion_name(&failover_step()), "_drover.www.example.test.");
    }

    #[test]
    fn update_checks_the_epoch_read_and_replaces_every_rrset_in_one_message() {
        let plan = Plan::new(&failover_step()).unwrap();
        // Through the wire format, as the server sees it.
        let wire = plan.update(Expected::Epoch(2), 3).to_vec().unwrap();
        let m = Message::from_vec(&wire).unwrap();

        assert_eq!(m.metadata.op_code, OpCode::Update);
        assert_eq!(m.queries.len(), 1, "zone section");
        assert_eq!(m.queries[0].name(), &name("example.test."));
        assert_eq!(m.queries[0].query_type(), RecordType::SOA);
        assert_eq!(m.queries[0].query_class(), DNSClass::IN);

        let companion = "_drover.www.example.test.".to_string();
        // RRset exists (value dependent): class IN, TTL 0, the epoch read.
        assert_eq!(
            rows(&m.answers),
            vec![(companion.clone(), DNSClass::IN, RecordType::TXT, 0, "2".to_string())]
        );
        let www = "www.example.test.".to_string();
        let api = "api.example.test.".to_string();
        let del = |n: &str, t| (n.to_string(), DNSClass::ANY, t, 0, "-".to_string());
        assert_eq!(
            rows(&m.authorities),
            vec![
                del(&companion, RecordType::TXT),
                (companion.clone(), DNSClass::IN, RecordType::TXT, 30, "3".to_string()),
                // One delete per RRset, all before the adds: both A records stay.
                del(&www, RecordType::A),
                del(&www, RecordType::AAAA),
                del(&api, RecordType::CNAME),
                (www.clone(), DNSClass::IN, RecordType::A, 30, "198.51.100.20".to_string()),
                (www.clone(), DNSClass::IN, RecordType::AAAA, 30, "2001:db8::20".to_string()),
                (api.clone(), DNSClass::IN, RecordType::CNAME, 60, www.clone()),
                (www.clone(), DNSClass::IN, RecordType::A, 30, "198.51.100.21".to_string()),
            ]
        );
        assert!(m.signature().is_none());
    }

    #[test]
    fn first_update_requires_that_no_epoch_exists() {
        let plan = Plan::new(&failover_step()).unwrap();
        let wire = plan.update(Expected::Absent, 1).to_vec().unwrap();
        let m = Message::from_vec(&wire).unwrap();
        // RRset does not exist: class NONE, TTL 0, no data.
        assert_eq!(
            rows(&m.answers),
            vec![(
                "_drover.www.example.test.".to_string(),
                DNSClass::NONE,
                RecordType::TXT,
                0,
                "-".to_string()
            )]
        );
        assert_eq!(rows(&m.authorities)[1].4, "1");
    }

    #[test]
    fn query_asks_for_the_companion_txt() {
        let plan = Plan::new(&failover_step()).unwrap();
        let m = Message::from_vec(&plan.query().to_vec().unwrap()).unwrap();
        assert_eq!(m.metadata.op_code, OpCode::Query);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(m.queries[0].name(), &name("_drover.www.example.test."));
        assert_eq!(m.queries[0].query_type(), RecordType::TXT);
    }

    #[test]
    fn plan_rejects_records_outside_the_zone() {
        let s = step(vec![record("www.other.test.", DnsRecordType::A, 30, "192.0.2.1")]);
        assert!(Plan::new(&s).unwrap_err().contains("not inside zone example.test."));
        let s = step(vec![record("www.example.test.", DnsRecordType::A, 30, "nope")]);
        assert!(Plan::new(&s).unwrap_err().contains("\"nope\" is not a valid A value"));
    }

    #[test]
    fn epoch_is_read_from_one_txt_record() {
        let c = name("_drover.www.example.test.");
        let txt = |n: &Name, v: &[&str]| {
            Record::from_rdata(
                n.clone(),
                30,
                RData::TXT(TXT::new(v.iter().map(|s| s.to_string()).collect())),
            )
        };
        assert_eq!(epoch_of(&[], &c), Ok(Expected::Absent));
        assert_eq!(
            epoch_of(&[txt(&name("other.example.test."), &["9"])], &c),
            Ok(Expected::Absent)
        );
        assert_eq!(epoch_of(&[txt(&c, &["17"])], &c), Ok(Expected::Epoch(17)));
        assert!(epoch_of(&[txt(&c, &["v=spf1"])], &c).unwrap_err().contains("not an epoch"));
        assert!(epoch_of(&[txt(&c, &["1"]), txt(&c, &["2"])], &c)
            .unwrap_err()
            .contains("2 TXT records"));
    }

    fn signer() -> TSigner {
        TSigner::new(b"0123456789abcdef".to_vec(), TsigAlgorithm::HmacSha256, name("k."), 300)
            .unwrap()
    }

    #[test]
    fn unsigned_answers_to_signed_requests_are_only_believed_when_they_report_a_failure() {
        let plan = Plan::new(&failover_step()).unwrap();
        let mut request = plan.update(Expected::Absent, 1);
        let mut verifier = request.finalize(&signer(), unix_now()).unwrap();
        assert!(verifier.is_some());
        let mut reply = Message::response(request.metadata.id, OpCode::Update);
        let ok = reply.to_vec().unwrap();
        let why = check_answer(&ok, verifier.as_mut()).err().unwrap();
        assert!(why.contains("not signed"), "{why}");

        reply.metadata.response_code = ResponseCode::Refused;
        let refused = reply.to_vec().unwrap();
        let answer = check_answer(&refused, verifier.as_mut()).unwrap();
        assert_eq!(answer.rcode(), ResponseCode::Refused);

        // Without a key, nothing is checked.
        assert_eq!(check_answer(&ok, None).unwrap().rcode(), ResponseCode::NoError);
        assert!(check_answer(&request.to_vec().unwrap(), None).is_err(), "a query is no answer");
    }

    fn tsig(dir: &std::path::Path, algorithm: &str, content: Option<&[u8]>) -> Tsig {
        let path = dir.join("tsig.key");
        if let Some(content) = content {
            std::fs::write(&path, content).unwrap();
        }
        Tsig {
            name: "drover".into(),
            algorithm: algorithm.into(),
            secret_file: path.to_string_lossy().into_owned(),
        }
    }

    fn load_error(t: &Tsig) -> String {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        match rt.block_on(load_signer(t)) {
            Ok(_) => panic!("loaded a key from {t:?}"),
            Err(StepError::Failed { reason, .. }) => reason,
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn secret_file_problems_name_the_file_and_never_show_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let missing = tsig(dir.path(), "hmac-sha256", None);
        let why = load_error(&missing);
        assert!(why.contains(&missing.secret_file) && why.contains("does not exist"), "{why}");

        let secret = "key \"drover\" { algorithm hmac-sha256; secret \"c2VjcmV0\"; };";
        let why = load_error(&tsig(dir.path(), "hmac-sha256", Some(secret.as_bytes())));
        assert!(why.contains("does not hold a base64 secret"), "{why}");
        assert!(!why.contains("c2VjcmV0"), "the secret leaked: {why}");

        let why = load_error(&tsig(dir.path(), "hmac-sha256", Some(b"  \n")));
        assert!(why.contains("does not hold a base64 secret"), "{why}");

        let why = load_error(&tsig(dir.path(), "hmac-sha1", Some(b"c2VjcmV0\n")));
        assert!(why.contains("hmac-sha256, hmac-sha384, hmac-sha512"), "{why}");
    }

    #[test]
    fn secret_file_holds_the_base64_secret() {
        let dir = tempfile::tempdir().unwrap();
        let t = tsig(dir.path(), "hmac-sha512", Some(b"c2VjcmV0c2VjcmV0\n"));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let signer = rt.block_on(load_signer(&t)).unwrap();
        assert_eq!(signer.key(), b"secretsecret");
        assert_eq!(signer.algorithm(), &TsigAlgorithm::HmacSha512);
        assert_eq!(signer.signer_name(), &name("drover."));
    }
}
