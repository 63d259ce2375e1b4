//! Revoked client certificates. `guard-server cert revoke` lists a certificate's serial in the
//! database; every replica reloads the list every `REFRESH_EVERY` and refuses, before any
//! service sees it, a call whose client certificate is listed (`interceptor`). The TLS
//! handshake still succeeds (rustls checks the chain, not our list), so the refusal can say
//! which certificate was revoked and why instead of a bare handshake failure.
use crate::error::GuardResult;
use crate::lifecycle::now_ms;
use crate::store::Store;
use guard_api::{AuditRecord, RecordKind, Timestamp};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tonic::Status;
use x509_parser::prelude::{FromDer, X509Certificate};

/// How soon a revocation reaches every replica.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Lower-case hex of the certificate's serial number.
    pub serial: String,
    /// The certificate's CN.
    pub name: String,
    pub reason: String,
    /// Who revoked it (`cli:uid=N` for the command line).
    pub revoked_by: String,
    pub revoked_ms: i64,
}

impl Revoked {
    /// The audit record of this revocation (an entity change, as a policy change is).
    pub fn record(&self) -> AuditRecord {
        let mut r = AuditRecord::at(Timestamp::from_unix_ms(self.revoked_ms), RecordKind::Policy, "");
        r.object = Some(format!("certificate serial {}", self.serial));
        r.state = Some("revoked".into());
        r.user = Some(self.name.clone());
        r.approver = Some(self.revoked_by.clone());
        r.comment = Some(self.reason.clone());
        r
    }
}

/// The serials this replica refuses, by serial, and what to say about each.
#[derive(Clone, Default)]
pub struct Revocations {
    by_serial: Arc<RwLock<HashMap<String, Revoked>>>,
}

impl Revocations {
    /// The list as the store has it now.
    pub async fn load(store: &dyn Store) -> GuardResult<Self> {
        let me = Self::default();
        me.reload(store).await?;
        Ok(me)
    }

    async fn reload(&self, store: &dyn Store) -> GuardResult<()> {
        let fresh: HashMap<String, Revoked> =
            store.revoked_certificates().await?.into_iter().map(|r| (r.serial.clone(), r)).collect();
        *self.by_serial.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// Reloads the list every `REFRESH_EVERY` until the task is aborted. A failed reload keeps
    /// the list it had (a revocation is never forgotten because the database blinked).
    pub fn spawn_refresh(&self, store: Arc<dyn Store>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = me.reload(store.as_ref()).await {
                    tracing::warn!("reloading revoked certificates (keeping the last list): {e}");
                }
            }
        })
    }

    /// Why the certificate `der` is refused, if it is revoked.
    pub fn refusal(&self, der: &[u8]) -> Option<String> {
        let serial = serial_hex(der).ok()?;
        let list = self.by_serial.read().unwrap_or_else(|p| p.into_inner());
        list.get(&serial).map(|r| {
            format!(
                "certificate of {:?} (serial {}) was revoked by {} at {}: {}",
                r.name,
                r.serial,
                r.revoked_by,
                Timestamp::from_unix_ms(r.revoked_ms),
                r.reason
            )
        })
    }

    /// A tonic interceptor that refuses calls made with a revoked client certificate
    /// (UNAUTHENTICATED, saying which and why); calls without one are left to the services,
    /// which refuse them too.
    pub fn interceptor(&self) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, Status> + Clone {
        let me = self.clone();
        move |request: tonic::Request<()>| {
            let refusal = request.peer_certs().and_then(|certs| certs.first().and_then(|leaf| me.refusal(leaf)));
            match refusal {
                Some(why) => Err(Status::unauthenticated(why)),
                None => Ok(request),
            }
        }
    }
}

/// Lower-case hex of a DER certificate's serial number.
pub fn serial_hex(der: &[u8]) -> Result<String, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("unreadable certificate: {e}"))?;
    Ok(cert.raw_serial().iter().map(|b| format!("{b:02x}")).collect())
}

/// The serial and CN of the PEM certificate `pem`.
pub fn serial_and_name(pem: &str) -> Result<(String, String), String> {
    let (_, block) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| format!("not a PEM certificate: {e}"))?;
    let serial = serial_hex(&block.contents)?;
    let (_, cert) = X509Certificate::from_der(&block.contents).map_err(|e| format!("unreadable certificate: {e}"))?;
    let name = cert.subject().iter_common_name().next().and_then(|a| a.as_str().ok()).unwrap_or_default().to_string();
    Ok((serial, name))
}

/// Records `revoked` in the store (and its audit record); false when it was revoked already.
pub async fn revoke(store: &dyn Store, mut revoked: Revoked) -> GuardResult<bool> {
    revoked.serial = revoked.serial.to_ascii_lowercase();
    if revoked.revoked_ms == 0 {
        revoked.revoked_ms = now_ms();
    }
    store.revoke_certificate(&revoked).await
}
