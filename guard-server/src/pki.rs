//! `guard-server init-pki`: a private CA and the certificates of the server, the agents
//! (one per host) and the approvers. The role is in the certificate (Subject OU), the name
//! in its CN: the server trusts nothing else to say who is calling.
//!
//! File layout (**contract**): `ca.crt ca.key server.crt server.key agent-<H>.crt/.key
//! approver-<A>.crt/.key`, PEM, keys 0600. Re-running keeps what exists and adds what is
//! missing; an existing key is never overwritten.
use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const ROLE_AGENT: &str = "guard-agent";
pub const ROLE_APPROVER: &str = "guard-approver";
const ROLE_SERVER: &str = "guard-server";

/// What to create.
#[derive(Debug, Default, Clone)]
pub struct PkiSpec {
    pub server_names: Vec<String>,
    pub hosts: Vec<String>,
    pub approvers: Vec<String>,
}

/// One line of what init-pki did, for the operator.
#[derive(Debug, PartialEq, Eq)]
pub enum PkiAction {
    Created(PathBuf),
    Kept(PathBuf),
}

pub fn init_pki(dir: &Path, spec: &PkiSpec) -> Result<Vec<PkiAction>> {
    for name in spec.hosts.iter().chain(&spec.approvers) {
        check_name(name)?;
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut actions = Vec::new();
    let issuer = ca(dir, &mut actions)?;

    let mut sans: Vec<String> = spec.server_names.clone();
    for always in ["localhost", "127.0.0.1"] {
        if !sans.iter().any(|s| s == always) {
            sans.push(always.to_string());
        }
    }
    leaf(dir, "server", "guard-server", ROLE_SERVER, &sans, &issuer, &mut actions)?;
    for host in &spec.hosts {
        leaf(dir, &format!("agent-{host}"), host, ROLE_AGENT, &[], &issuer, &mut actions)?;
    }
    for approver in &spec.approvers {
        leaf(dir, &format!("approver-{approver}"), approver, ROLE_APPROVER, &[], &issuer, &mut actions)?;
    }
    Ok(actions)
}

/// Names become file names and certificate CNs: keep them to a safe, printable set.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !ok {
        bail!("invalid name {name:?}: use 1 to 64 of [A-Za-z0-9._-], not starting with . or -");
    }
    Ok(())
}

/// The CA of an existing PKI directory, to sign with.
pub fn load_ca(dir: &Path) -> Result<Issuer<'static, KeyPair>> {
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    let key_pem = fs::read_to_string(&key).with_context(|| format!("cannot read {}", key.display()))?;
    let crt_pem = fs::read_to_string(&crt).with_context(|| format!("cannot read {}", crt.display()))?;
    let key_pair = KeyPair::from_pem(&key_pem).with_context(|| format!("bad key in {}", key.display()))?;
    Issuer::from_ca_cert_pem(&crt_pem, key_pair).with_context(|| format!("bad certificate in {}", crt.display()))
}

fn ca(dir: &Path, actions: &mut Vec<PkiAction>) -> Result<Issuer<'static, KeyPair>> {
    let (crt, key) = (dir.join("ca.crt"), dir.join("ca.key"));
    match (crt.exists(), key.exists()) {
        (true, true) => {
            let issuer = load_ca(dir)?;
            actions.push(PkiAction::Kept(crt));
            Ok(issuer)
        }
        (false, false) => {
            let key_pair = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.distinguished_name = dn("guard CA", "guard-ca");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            validity(&mut params, 20 * 365);
            let cert = params.self_signed(&key_pair)?;
            write_new(&key, key_pair.serialize_pem().as_bytes(), 0o600)?;
            write_new(&crt, cert.pem().as_bytes(), 0o644)?;
            actions.push(PkiAction::Created(crt));
            Ok(Issuer::new(params, key_pair))
        }
        _ => bail!("{} has only one of ca.crt and ca.key: refusing to replace a CA half", dir.display()),
    }
}

fn leaf(
    dir: &Path,
    stem: &str,
    cn: &str,
    role: &str,
    sans: &[String],
    issuer: &Issuer<'_, KeyPair>,
    actions: &mut Vec<PkiAction>,
) -> Result<()> {
    let (crt, key) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
    if crt.exists() {
        actions.push(PkiAction::Kept(crt));
        return Ok(());
    }
    // A key without its certificate (e.g. the certificate was deleted to re-issue it) is
    // reused, never replaced.
    let key_pair = if key.exists() {
        let pem = fs::read_to_string(&key).with_context(|| format!("cannot read {}", key.display()))?;
        KeyPair::from_pem(&pem).with_context(|| format!("bad key in {}", key.display()))?
    } else {
        let key_pair = KeyPair::generate()?;
        write_new(&key, key_pair.serialize_pem().as_bytes(), 0o600)?;
        key_pair
    };
    let params = leaf_params(cn, role, sans, 10 * 365)?;
    let cert = params.signed_by(&key_pair, issuer)?;
    write_new(&crt, cert.pem().as_bytes(), 0o644)?;
    actions.push(PkiAction::Created(crt));
    Ok(())
}

/// A leaf certificate's parameters: CN `cn`, role (OU) `role`, `sans` (server only), valid
/// `days`; client roles get ClientAuth, the server ServerAuth.
pub fn leaf_params(cn: &str, role: &str, sans: &[String], days: i64) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn(cn, role);
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(s.as_str().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![if role == ROLE_SERVER {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    Ok(params)
}

fn dn(cn: &str, ou: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationalUnitName, ou);
    dn.push(DnType::OrganizationName, "guard");
    dn
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // An hour back so that a clock slightly behind on another host still accepts it.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

/// Creates `path` with `mode`; fails if it exists so nothing is ever overwritten.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
