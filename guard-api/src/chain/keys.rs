//! The ed25519 keys that sign checkpoints: one per agent host (its audit key), one for
//! guard-server. A key file holds the PKCS#8 document ring generates, nothing else; it is
//! created once, mode 0600, written aside and renamed into place so a crash never leaves half a
//! key. The public half is registered with the server and pinned by auditors.

use super::{hex, sha256_hex, unhex, SignedHead};
use ring::{
    rand::SystemRandom,
    signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519},
};
use std::{io::Write, path::Path};

/// The bytes a checkpoint signs. Domain-separated, so a signature can never be replayed as
/// anything else.
pub fn head_message(chain: &str, seq: u64, hash: &str) -> Vec<u8> {
    format!("guard audit checkpoint v1\n{chain}\n{seq}\n{hash}").into_bytes()
}

/// A public key's id: "ed25519:" and the first 16 hex digits of SHA-256 of the key.
pub fn key_id(public_hex: &str) -> String {
    let digest = match unhex(public_hex) {
        Some(bytes) => sha256_hex(&bytes),
        None => sha256_hex(public_hex.as_bytes()),
    };
    format!("ed25519:{}", &digest[..16])
}

/// A key that signs checkpoints.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// A new key and its PKCS#8 document (what the key file holds).
    pub fn generate() -> Result<(Self, Vec<u8>), String> {
        let doc =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| "generating an ed25519 key failed")?;
        let pkcs8 = doc.as_ref().to_vec();
        Ok((Self::from_pkcs8(&pkcs8)?, pkcs8))
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, String> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| format!("not an ed25519 PKCS#8 key: {e}"))?;
        Ok(SigningKey { pair })
    }

    /// Reads the key at `path`, or creates it there when the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, String> {
        match std::fs::read(path) {
            Ok(bytes) => Self::from_pkcs8(&bytes).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (key, pkcs8) = Self::generate()?;
                write_private(path, &pkcs8).map_err(|e| format!("writing the key {}: {e}", path.display()))?;
                Ok(key)
            }
            Err(e) => Err(format!("reading the key {}: {e}", path.display())),
        }
    }

    pub fn public_hex(&self) -> String {
        hex(self.pair.public_key().as_ref())
    }

    pub fn key_id(&self) -> String {
        key_id(&self.public_hex())
    }

    /// Signs that `chain`'s record at `seq` has hash `hash`.
    pub fn sign_head(&self, chain: &str, seq: u64, hash: &str) -> SignedHead {
        let signature = self.pair.sign(&head_message(chain, seq, hash));
        SignedHead {
            chain: chain.into(),
            seq,
            hash: hash.into(),
            key_id: self.key_id(),
            signature: hex(signature.as_ref()),
        }
    }
}

/// Whether `head` is signed by the key `public_hex` (and names that key).
pub fn verify_head(head: &SignedHead, public_hex: &str) -> Result<(), String> {
    if head.key_id != key_id(public_hex) {
        return Err(format!("signed by key {} but checked against {}", head.key_id, key_id(public_hex)));
    }
    let public = unhex(public_hex).ok_or_else(|| format!("public key {public_hex:?} is not hex"))?;
    let signature = unhex(&head.signature).ok_or("the signature is not hex")?;
    UnparsedPublicKey::new(&ED25519, public)
        .verify(&head_message(&head.chain, head.seq, &head.hash), &signature)
        .map_err(|_| format!("the signature does not verify with key {}", head.key_id))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let aside = path.with_extension("new");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&aside)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&aside, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_verifies_only_unchanged_and_with_its_key() {
        let (key, _) = SigningKey::generate().unwrap();
        let head = key.sign_head("web1/s1", 7, "ab");
        verify_head(&head, &key.public_hex()).unwrap();
        for change in [
            |h: &mut SignedHead| h.seq = 8,
            |h: &mut SignedHead| h.hash = "ac".into(),
            |h: &mut SignedHead| h.chain = "web2/s1".into(),
        ] {
            let mut h = head.clone();
            change(&mut h);
            assert!(verify_head(&h, &key.public_hex()).unwrap_err().contains("does not verify"));
        }
        let (other, _) = SigningKey::generate().unwrap();
        assert!(verify_head(&head, &other.public_hex()).unwrap_err().contains("signed by key"));
    }

    #[test]
    fn a_key_file_is_created_once_and_read_back() {
        let dir = std::env::temp_dir().join(format!("guard-key-{}", std::process::id()));
        let path = dir.join("audit.key");
        let a = SigningKey::load_or_create(&path).unwrap();
        let b = SigningKey::load_or_create(&path).unwrap();
        assert_eq!(a.public_hex(), b.public_hex());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&path, b"junk").unwrap();
        let e = SigningKey::load_or_create(&path).err().unwrap();
        assert!(e.contains("audit.key") && e.contains("PKCS#8"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
