//! A throwaway cluster CA and certificates for development and tests
//! (`droverctl certs init`).
//!
//! ```text
//! out/ca.pem, out/ca-key.pem              self-signed CA (path length 0)
//! out/<node>.pem, out/<node>-key.pem      server + client auth; SANs: name, localhost, hosts,
//!                                         URI drover://node/<node>
//! out/<admin>.pem, out/<admin>-key.pem    client auth only (droverctl); SANs: name,
//!                                         URI drover://role/<role>, URI drover://user/<admin>
//! ```
//!
//! Everything is generated in memory first and written only when all of it succeeded. Private
//! keys are written with mode 0600. Production clusters should use their own PKI; these files
//! only need to satisfy [`super::load`].

use std::collections::HashSet;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::identity::{AdminRole, NODE_URI_PREFIX, ROLE_URI_PREFIX, USER_URI_PREFIX};
use crate::config::check_name;

/// How long generated certificates are valid.
pub const VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// How far before "now" validity starts, to tolerate clock skew between machines.
const BACKDATE: Duration = Duration::from_secs(24 * 60 * 60);

/// A certificate to issue: its name (CN and first DNS SAN, also the file name) and extra hosts
/// it is reachable as (IP addresses become IP SANs, anything else DNS SANs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSubject {
    /// Member or admin name, `[a-z0-9-]`.
    pub name: String,
    /// Extra host names or IP addresses for the certificate.
    pub hosts: Vec<String>,
}

/// An admin certificate to issue: the person's name (CN, DNS SAN, `drover://user/` URI and
/// file name) and the role it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSubject {
    /// User name, `[a-z0-9-]`.
    pub name: String,
    /// The role the certificate grants.
    pub role: AdminRole,
}

/// Parses the command-line syntax `NAME` (with role `default_role`) or `NAME=ROLE`.
pub fn parse_admin(s: &str, default_role: AdminRole) -> Result<AdminSubject, CertError> {
    let bad = |reason: String| CertError::Subject { input: s.to_string(), reason };
    let (name, role) = match s.split_once('=') {
        None => (s, default_role),
        Some((name, role)) => (
            name,
            AdminRole::parse(role).ok_or_else(|| {
                bad(format!("role {role:?} is not one of viewer, operator, admin"))
            })?,
        ),
    };
    check_subject_name(name).map_err(bad)?;
    Ok(AdminSubject { name: name.to_string(), role })
}

/// Certificates that could not be generated or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The output directory already holds a CA.
    #[error("{} already holds a CA; pass --force to replace it or choose another --out", dir.display())]
    CaExists {
        /// The output directory.
        dir: PathBuf,
    },
    /// A subject given on the command line is not usable.
    #[error("invalid certificate subject {input:?}: {reason}")]
    Subject {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// rcgen refused to build a certificate.
    #[error("cannot generate the certificate for {name}: {source}")]
    Generate {
        /// Whose certificate.
        name: String,
        /// rcgen's reason.
        source: rcgen::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// Why writing failed.
        source: std::io::Error,
    },
}

/// Parses the command-line syntax `NAME` or `NAME=HOST[,HOST...]`.
pub fn parse_subject(s: &str) -> Result<CertSubject, CertError> {
    let bad = |reason: String| CertError::Subject { input: s.to_string(), reason };
    let (name, hosts) = match s.split_once('=') {
        None => (s, Vec::new()),
        Some((name, list)) => {
            let hosts: Vec<String> = list.split(',').map(|h| h.trim().to_string()).collect();
            if hosts.iter().any(String::is_empty) {
                return Err(bad(
                    "empty host; write NAME or NAME=HOST[,HOST...] (e.g. prod-1=10.0.0.1,ctl-1.prod.example)"
                        .into(),
                ));
            }
            for h in &hosts {
                check_host(h).map_err(&bad)?;
            }
            (name, hosts)
        }
    };
    check_subject_name(name).map_err(bad)?;
    Ok(CertSubject { name: name.to_string(), hosts })
}

fn check_subject_name(name: &str) -> Result<(), String> {
    check_name(name).map_err(|r| format!("name {r}"))?;
    if name == "ca" || name.ends_with("-key") {
        return Err(format!(
            "name {name:?} would clash with the CA or key file names; choose another"
        ));
    }
    Ok(())
}

fn check_host(h: &str) -> Result<(), String> {
    if h.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let ok = h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("host {h:?} is neither an IP address nor a DNS name"))
    }
}

/// A PEM certificate and its PEM private key.
struct Issued {
    name: String,
    cert_pem: String,
    key_pem: String,
}

/// Creates `out_dir` (if needed) and writes a new CA plus a certificate and key for each node
/// (server and client auth, identity `drover://node/<name>`) and each admin (client auth only,
/// `drover://role/<role>` and `drover://user/<name>`). Returns the files written.
///
/// Refuses to overwrite an existing `ca.pem` unless `force`.
pub fn init(
    out_dir: &Path,
    nodes: &[CertSubject],
    admins: &[AdminSubject],
    force: bool,
) -> Result<Vec<PathBuf>, CertError> {
    if !force && out_dir.join("ca.pem").exists() {
        return Err(CertError::CaExists { dir: out_dir.to_path_buf() });
    }
    let mut seen = HashSet::new();
    let admin_subjects: Vec<CertSubject> =
        admins.iter().map(|a| CertSubject { name: a.name.clone(), hosts: Vec::new() }).collect();
    for s in nodes.iter().chain(&admin_subjects) {
        let bad = |reason: String| CertError::Subject { input: s.name.clone(), reason };
        check_subject_name(&s.name).map_err(bad)?;
        for h in &s.hosts {
            check_host(h).map_err(bad)?;
        }
        if !seen.insert(s.name.as_str()) {
            return Err(bad("name given twice; names must be unique".into()));
        }
    }

    let ca_key = KeyPair::generate()
        .map_err(|source| CertError::Generate { name: "the CA".into(), source })?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = dn("drover cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut ca_params);
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|source| CertError::Generate { name: "the CA".into(), source })?;
    let ca = Issued { name: "ca".into(), cert_pem: ca_cert.pem(), key_pem: ca_key.serialize_pem() };
    let issuer = Issuer::new(ca_params, ca_key);

    let mut issued = vec![ca];
    for node in nodes {
        issued.push(issue(&issuer, node, None)?);
    }
    for (subject, admin) in admin_subjects.iter().zip(admins) {
        issued.push(issue(&issuer, subject, Some(admin.role))?);
    }

    std::fs::create_dir_all(out_dir)
        .map_err(|source| CertError::Write { path: out_dir.to_path_buf(), source })?;
    let mut written = Vec::with_capacity(issued.len() * 2);
    for i in &issued {
        let cert_path = out_dir.join(format!("{}.pem", i.name));
        write_file(&cert_path, i.cert_pem.as_bytes(), 0o644)?;
        written.push(cert_path);
        let key_path = out_dir.join(format!("{}-key.pem", i.name));
        write_file(&key_path, i.key_pem.as_bytes(), 0o600)?;
        written.push(key_path);
    }
    Ok(written)
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Sets validity to (now - 1 day, now + 1 year), without naming the `time` crate.
fn set_validity(params: &mut CertificateParams) {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = now - BACKDATE;
    params.not_after = now + VALIDITY;
}

fn uri(s: String, generate: impl Fn(rcgen::Error) -> CertError) -> Result<SanType, CertError> {
    Ok(SanType::URI(s.try_into().map_err(generate)?))
}

/// Issues a node certificate (`admin_role` None) or an admin certificate with that role.
fn issue(
    issuer: &Issuer<'_, KeyPair>,
    subject: &CertSubject,
    admin_role: Option<AdminRole>,
) -> Result<Issued, CertError> {
    let generate = |source| CertError::Generate { name: subject.name.clone(), source };
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&subject.name);
    set_validity(&mut params);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if let Some(role) = admin_role {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.subject_alt_names = vec![
            SanType::DnsName(subject.name.as_str().try_into().map_err(generate)?),
            uri(format!("{ROLE_URI_PREFIX}{role}"), generate)?,
            uri(format!("{USER_URI_PREFIX}{}", subject.name), generate)?,
        ];
    } else {
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let mut names = vec![subject.name.clone(), "localhost".to_string()];
        for h in &subject.hosts {
            if !names.contains(h) {
                names.push(h.clone());
            }
        }
        for n in names {
            let san = match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(n.as_str().try_into().map_err(generate)?),
            };
            params.subject_alt_names.push(san);
        }
        params.subject_alt_names.push(uri(format!("{NODE_URI_PREFIX}{}", subject.name), generate)?);
    }
    let cert = params.signed_by(&key, issuer).map_err(generate)?;
    Ok(Issued { name: subject.name.clone(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Writes `contents` to `path` with permission `mode`, replacing any existing file (and its
/// permissions).
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let fail = |source| CertError::Write { path: path.to_path_buf(), source };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(fail)?;
    // `mode` only applies to new files; an existing key file may have been more permissive.
    file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    file.write_all(contents).map_err(fail)?;
    file.sync_all().map_err(fail)
}
