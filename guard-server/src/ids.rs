//! Request ids: short enough to type in `guardctl approve ID`, unguessable so that knowing
//! one request does not reveal others.
use ring::rand::{SecureRandom, SystemRandom};

/// RFC 4648 base32 alphabet in lower case, without padding: no 0/1/8/9, so no confusion
/// between 0/o, 1/l when read aloud or retyped.
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// 10 characters of 5 bits each: 50 bits from the system CSPRNG.
pub const REQUEST_ID_LEN: usize = 10;

pub fn new_request_id() -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; REQUEST_ID_LEN];
    SystemRandom::new().fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| ALPHABET[usize::from(b & 31)] as char).collect())
}

/// Cheap shape check before touching the database, so garbage ids get NOT_FOUND quickly.
pub fn looks_like_request_id(id: &str) -> bool {
    id.len() == REQUEST_ID_LEN && id.bytes().all(|b| ALPHABET.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_distinct_and_typable() {
        let a = new_request_id().expect("rng");
        let b = new_request_id().expect("rng");
        assert_eq!(a.len(), REQUEST_ID_LEN);
        assert!(looks_like_request_id(&a));
        assert_ne!(a, b);
        assert!(!looks_like_request_id("ABCDEFGHIJ"));
    }
}
