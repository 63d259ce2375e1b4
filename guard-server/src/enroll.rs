//! `guard-server cert sign`: an admin turns an approver's (or a host's) certificate signing
//! request into a certificate from the guard CA. The key never leaves the machine it was made
//! on (`guardctl enroll` writes the key and the CSR there), so nobody else ever sees it.
//!
//! Only the CSR's CN (the name) and public key are taken from it: the role (Subject OU),
//! key usages and validity are the admin's choice here, so a CSR cannot ask its way into
//! another role. rcgen checks the CSR's self-signature, which proves its sender holds the key.
use crate::pki::{self, ROLE_AGENT, ROLE_APPROVER};
use anyhow::{bail, Context, Result};
use rcgen::{CertificateSigningRequestParams, DnType, DnValue, SerialNumber};
use ring::rand::{SecureRandom, SystemRandom};
use std::path::{Path, PathBuf};

/// What a signed certificate says and where it went.
#[derive(Debug)]
pub struct Signed {
    pub path: PathBuf,
    pub name: String,
    /// Lower-case hex, as `cert revoke --serial` takes it.
    pub serial: String,
}

/// Signs the CSR in `csr_pem` with the CA in `pki_dir` as `role` (ROLE_APPROVER or ROLE_AGENT)
/// for `days`, writing `<approver|agent>-<CN>.crt` into `out_dir` (never over an existing one).
pub fn sign_csr(pki_dir: &Path, csr_pem: &str, role: &str, days: u32, out_dir: &Path) -> Result<Signed> {
    if role != ROLE_APPROVER && role != ROLE_AGENT {
        bail!("role {role:?}: only {ROLE_APPROVER} and {ROLE_AGENT} certificates are signed from a CSR");
    }
    if !(1..=3650).contains(&days) {
        bail!("--days {days}: give 1 to 3650");
    }
    let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| anyhow::anyhow!("not a valid certificate signing request (PEM, self-signed): {e}"))?;
    let name = match csr.params.distinguished_name.get(&DnType::CommonName) {
        Some(DnValue::Utf8String(s)) => s.clone(),
        Some(DnValue::PrintableString(s)) => s.as_str().to_string(),
        Some(other) => bail!("the CSR's CN is not a plain string: {other:?}"),
        None => bail!("the CSR has no subject CN: the CN is the approver's or host's name"),
    };
    pki::check_name(&name)?;
    let issuer = pki::load_ca(pki_dir)?;
    let mut serial = [0u8; 16];
    SystemRandom::new().fill(&mut serial).map_err(|_| anyhow::anyhow!("no randomness for the serial number"))?;
    // Positive: the high bit clear (a DER INTEGER serial must not be negative).
    serial[0] &= 0x7f;
    csr.params = pki::leaf_params(&name, role, &[], i64::from(days))?;
    csr.params.serial_number = Some(SerialNumber::from_slice(&serial));
    let cert = csr.signed_by(&issuer).context("signing the certificate")?;
    let stem = if role == ROLE_APPROVER { "approver" } else { "agent" };
    let path = out_dir.join(format!("{stem}-{name}.crt"));
    pki::write_new(&path, cert.pem().as_bytes(), 0o644)?;
    Ok(Signed { path, name, serial: hex(&serial) })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
