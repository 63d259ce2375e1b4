//! Decoding the kernel's events: the raw struct from a ring buffer item, and its object and
//! argv as people read them.

use guard_common::{Event, Hook, ARG_LEN};
use std::net::{IpAddr, Ipv6Addr};

/// Copies an event out of a ring buffer item; None if the item is too short.
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < std::mem::size_of::<Event>() {
        return None;
    }
    // SAFETY: Event is plain old data and the length was checked.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const Event) })
}

fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The object of an event, as people read it: a path, "addr:port", "@abstract" or a label.
pub fn object_text(e: &Event) -> String {
    let o = &e.object;
    let is_connect = e.hook == Hook::Connect as u8 || e.hook == Hook::SocketSendmsg as u8;
    if is_connect && (o[0] == 2 || o[0] == 10) {
        let port = u16::from_be_bytes([o[2], o[3]]);
        let mut a = [0u8; 16];
        a.copy_from_slice(&o[4..20]);
        let ip = Ipv6Addr::from(a);
        return match ip.to_ipv4_mapped() {
            Some(v4) => format!("{}:{port}", IpAddr::V4(v4)),
            None => format!("[{ip}]:{port}"),
        };
    }
    let mut s = c_str(o);
    if e.hook == Hook::Capable as u8 {
        s = crate::policy::CAPABILITIES
            .get(e.aux as usize)
            .map(|c| c.to_string())
            .unwrap_or(format!("capability {}", e.aux));
    } else if e.hook == Hook::Ptrace as u8 {
        // The kernel labels the mode: "ptrace attach" or "ptrace read".
        let mode = if s.starts_with("ptrace ") { s.as_str() } else { "ptrace" };
        s = format!("{mode} pid {}", e.aux);
    }
    if e.truncated != 0 {
        s.push_str("...");
    }
    s
}

pub fn argv_of(e: &Event) -> Vec<String> {
    e.argv.iter().take(e.argc as usize).map(|a| c_str(&a[..ARG_LEN])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank() -> Event {
        // SAFETY: all-zero is a valid Event.
        unsafe { std::mem::zeroed() }
    }

    #[test]
    fn formats_addresses() {
        let mut e = blank();
        e.hook = Hook::Connect as u8;
        e.object[0] = 2;
        e.object[2..4].copy_from_slice(&443u16.to_be_bytes());
        e.object[14] = 0xff;
        e.object[15] = 0xff;
        e.object[16..20].copy_from_slice(&[169, 254, 169, 254]);
        assert_eq!(object_text(&e), "169.254.169.254:443");
        e.object[0] = 10;
        e.object[4..20].copy_from_slice(&"::1".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!(object_text(&e), "[::1]:443");
    }

    #[test]
    fn formats_paths_and_argv() {
        let mut e = blank();
        e.hook = Hook::Exec as u8;
        e.object[..9].copy_from_slice(b"/bin/true");
        e.argc = 2;
        e.argv[0][..4].copy_from_slice(b"true");
        e.argv[1][..2].copy_from_slice(b"-x");
        assert_eq!(object_text(&e), "/bin/true");
        assert_eq!(argv_of(&e), vec!["true", "-x"]);
        e.truncated = 1;
        assert_eq!(object_text(&e), "/bin/true...");
        assert!(decode(&[0u8; 10]).is_none());
    }
}
