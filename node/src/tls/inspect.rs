//! The certificate checks `check-config` runs on loaded [`TlsMaterial`], beyond what loading
//! already checks (PEM kinds, the key fitting the certificate): what a peer or the node itself
//! would otherwise only find out at the first handshake.
//!
//! ```text
//!   tls.ca   ── every certificate is a CA (basicConstraints CA:TRUE), inside its validity
//!   tls.cert ── inside its validity, names this node (SAN dNSName = `name`), chains to tls.ca
//! ```
//!
//! Each problem is one line naming the key, the file, what is wrong and what to do.

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::RootCertStore;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::{provider, TlsMaterial};

/// What `check-config` says about the certificates, one line per problem; empty when they are
/// fit for a node named `node_name` at `now_unix_s` (seconds since the Unix epoch).
pub fn check_node_certificates(tls: &TlsMaterial, node_name: &str, now_unix_s: i64) -> Vec<String> {
    let mut problems = Vec::new();
    let ca_file = tls.files.ca.display().to_string();
    let cert_file = tls.files.cert.display().to_string();
    for (i, der) in tls.ca_certs.iter().enumerate() {
        let Ok((_, ca)) = X509Certificate::from_der(der.as_ref()) else {
            problems.push(format!(
                "tls.ca: certificate {} in {ca_file} is not valid X.509; point tls.ca at the \
                 cluster CA certificate",
                i + 1
            ));
            continue;
        };
        if !ca.is_ca() {
            problems.push(format!(
                "tls.ca: {ca_file} holds \"{}\", a leaf certificate (no basicConstraints \
                 CA:TRUE), not a CA; point tls.ca at the cluster CA certificate (ca.pem from \
                 'droverctl certs init'), not at a node's certificate",
                ca.subject()
            ));
        }
        if let Some(p) = validity_problem(&ca, now_unix_s) {
            problems.push(format!(
                "tls.ca: the CA certificate \"{}\" in {ca_file} {p}; every member refuses \
                 certificates it signed: renew the CA and reissue the members' certificates",
                ca.subject()
            ));
        }
    }
    let Some(leaf_der) = tls.cert_chain.first() else {
        return problems;
    };
    let Ok((_, leaf)) = X509Certificate::from_der(leaf_der.as_ref()) else {
        problems.push(format!("tls.cert: {cert_file} is not valid X.509"));
        return problems;
    };
    if let Some(p) = validity_problem(&leaf, now_unix_s) {
        problems.push(format!(
            "tls.cert: {cert_file} {p}; peers will refuse this node: issue it a new \
             certificate (droverctl certs init, or your CA) and point tls.cert at it"
        ));
    }
    let names = dns_names(&leaf);
    if !names.iter().any(|n| n.eq_ignore_ascii_case(node_name)) {
        let shown = if names.is_empty() { "no DNS name".to_owned() } else { names.join(", ") };
        problems.push(format!(
            "tls.cert: {cert_file} is issued to {shown} but this node is \"{node_name}\" \
             (key name): peers connect to it by that name and would refuse the handshake; use \
             the certificate issued for {node_name} (its SAN must include DNS:{node_name})"
        ));
    }
    // The names and dates were reported above; what is left is the chain to the CA.
    if problems.is_empty() {
        if let Err(e) = verify_chain(tls, leaf_der, node_name, now_unix_s) {
            problems.push(format!(
                "tls.cert: {cert_file} does not verify against the CA in {ca_file} ({e}); use \
                 a certificate signed by the cluster CA, or point tls.ca at the CA that signed it"
            ));
        }
    }
    problems
}

/// "expired on ..." or "is not valid before ..." when `now_unix_s` is outside the validity.
fn validity_problem(cert: &X509Certificate<'_>, now_unix_s: i64) -> Option<String> {
    let v = cert.validity();
    if now_unix_s > v.not_after.timestamp() {
        Some(format!("expired on {}", v.not_after))
    } else if now_unix_s < v.not_before.timestamp() {
        Some(format!("is not valid before {}", v.not_before))
    } else {
        None
    }
}

fn dns_names(cert: &X509Certificate<'_>) -> Vec<String> {
    match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Verifies the chain the way a peer will (webpki, the cluster CA as the only root).
fn verify_chain(
    tls: &TlsMaterial,
    leaf: &CertificateDer<'static>,
    node_name: &str,
    now_unix_s: i64,
) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    for ca in &tls.ca_certs {
        roots.add(ca.clone()).map_err(|e| e.to_string())?;
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(roots.into(), provider())
        .build()
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(node_name.to_owned()).map_err(|e| e.to_string())?;
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(now_unix_s).unwrap_or(0),
    ));
    verifier
        .verify_server_cert(leaf, &tls.cert_chain[1..], &name, &[], now)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
