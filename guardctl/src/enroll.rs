//! `guardctl enroll`: makes an approver's key and a certificate signing request on the
//! approver's own machine. The key never leaves it; the CSR goes to an admin, who signs it
//! with `guard-server cert sign` and sends back the certificate.
use anyhow::{bail, Context, Result};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The files `enroll` wrote.
pub struct Enrolled {
    pub key: PathBuf,
    pub csr: PathBuf,
}

/// Writes `approver-NAME.key` (0600) and `approver-NAME.csr` into `dir`; never over an
/// existing key (a second enrollment needs the old key moved away first, on purpose).
pub fn enroll(name: &str, dir: &Path) -> Result<Enrolled> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !ok {
        bail!("invalid name {name:?}: use 1 to 64 of [A-Za-z0-9._-], not starting with . or -");
    }
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key_path = dir.join(format!("approver-{name}.key"));
    let csr_path = dir.join(format!("approver-{name}.csr"));
    let key = KeyPair::generate().context("generating the key")?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    // Only the CN matters to the signer: the role is the admin's choice, not the CSR's.
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).context("making the CSR")?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&csr_path, csr.pem()?.as_bytes(), 0o644)?;
    Ok(Enrolled { key: key_path, csr: csr_path })
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))
}
