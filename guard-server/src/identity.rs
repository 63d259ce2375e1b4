//! Who is calling, from the peer's mTLS certificate only: CN is the name (host or
//! approver), OU the role. No message field can claim an identity.
use crate::error::GuardError;
use crate::pki::{ROLE_AGENT, ROLE_APPROVER};
use tonic::Request;
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Agent,
    Approver,
}

impl Role {
    pub fn label(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Approver => "approver",
        }
    }

    fn ou(self) -> &'static str {
        match self {
            Role::Agent => ROLE_AGENT,
            Role::Approver => ROLE_APPROVER,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

/// The caller's identity, whatever its role.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, GuardError> {
    let certs = request
        .peer_certs()
        .ok_or_else(|| GuardError::Unauthenticated("no client certificate: mTLS is required".into()))?;
    // The first certificate is the peer's own; the rest is its chain.
    let leaf = certs.first().ok_or_else(|| GuardError::Unauthenticated("empty client certificate chain".into()))?;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| GuardError::Unauthenticated(format!("unreadable client certificate: {e}")))?;
    let subject = cert.subject();
    let first = |mut it: Box<dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>> + '_>| {
        it.next().and_then(|a| a.as_str().ok()).map(str::to_string)
    };
    let name = first(Box::new(subject.iter_common_name()))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| GuardError::PermissionDenied("client certificate has no subject CN".into()))?;
    let ou = first(Box::new(subject.iter_organizational_unit())).unwrap_or_default();
    let role = match ou.as_str() {
        ROLE_AGENT => Role::Agent,
        ROLE_APPROVER => Role::Approver,
        other => {
            return Err(GuardError::PermissionDenied(format!(
                "certificate of {name:?} has role (OU) {other:?}, which is neither {ROLE_AGENT} nor {ROLE_APPROVER}"
            )))
        }
    };
    Ok(Caller { name, role })
}

/// The caller, who must have `role`.
pub fn require<T>(request: &Request<T>, role: Role) -> Result<Caller, GuardError> {
    let caller = caller(request)?;
    if caller.role != role {
        return Err(GuardError::PermissionDenied(format!(
            "this call needs a {} certificate (OU {}); {:?} has a {} certificate (OU {})",
            role.label(),
            role.ou(),
            caller.name,
            caller.role.label(),
            caller.role.ou()
        )));
    }
    Ok(caller)
}
