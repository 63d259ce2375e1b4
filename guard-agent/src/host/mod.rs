//! The host side: the two ways to run the agent ([`run`] for one command, [`daemon`] for the
//! host), their sockets ([`admin`], [`reasons`], bound by [`socket`]), starting a command that
//! is watched from its first instruction ([`spawn`]) and the CLI's screens ([`render`]).

pub mod admin;
pub mod daemon;
pub mod health;
pub mod protect;
pub mod reasons;
pub mod registered;
pub mod render;
pub mod run;
pub mod socket;
pub mod spawn;

/// This host's name, as records and requests carry it.
pub fn hostname() -> String {
    nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_else(|_| "unknown".into())
}
