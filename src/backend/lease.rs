//! What a backend says of a credential it issued rather than stored: a lease (Vault's
//! `lease_id`, renewable or not, with its duration) or a certificate's validity. The supervisor
//! keeps these alive, replaces them before they end, and revokes them when no child uses them.
//!
//! A lease id is a capability (with a token allowed `sys/leases/revoke`, it ends the credential),
//! so it is kept as a secret and shown only as its path and a short fingerprint.

use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};

/// A lease id, e.g. `database/creds/app/3Ld8…`.
#[derive(Debug, Clone)]
pub struct LeaseId(SecretString);

impl LeaseId {
    pub fn new(id: &str) -> LeaseId {
        LeaseId(SecretString::from(id))
    }

    /// For the backend's renew and revoke calls only.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// What logs and the audit show: the path that issued it and a fingerprint of the rest,
    /// enough to tell two leases of one path apart, useless to revoke one.
    pub fn shown(&self) -> String {
        let id = self.0.expose_secret();
        let (path, _) = id.rsplit_once('/').unwrap_or(("", id));
        format!("{path}/…{:08x}", fingerprint(id))
    }
}

/// FNV-1a, 32 bits: a label, not a protection (the id's random part is not recoverable from it).
fn fingerprint(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// How long an issued credential lasts, and whether it can be extended.
#[derive(Debug, Clone)]
pub struct Lease {
    /// `None`: nothing to renew or revoke (a certificate without a lease): it is replaced.
    pub id: Option<LeaseId>,
    pub renewable: bool,
    /// Where its life is measured from: when it was issued or last renewed, or a
    /// certificate's notBefore.
    pub starts: SystemTime,
    /// When it stops working.
    pub ends: SystemTime,
    /// The login whose token issued it, and that token's end: Vault revokes a token's leases
    /// when the token ends, whatever their own TTL. `None`: not known to end (a given token).
    pub bound: Option<(u64, SystemTime)>,
}

impl Lease {
    /// A lease of `duration` granted now.
    pub fn granted(id: Option<LeaseId>, renewable: bool, duration: Duration) -> Lease {
        let now = SystemTime::now();
        Lease {
            id,
            renewable,
            starts: now,
            ends: now + duration,
            bound: None,
        }
    }

    /// Its whole duration.
    pub fn duration(&self) -> Duration {
        self.ends.duration_since(self.starts).unwrap_or_default()
    }

    /// Two thirds of the way: renew then (or replace, when it cannot be renewed), leaving a
    /// third of its life for a slow or failing backend.
    pub fn act_at(&self) -> SystemTime {
        self.starts + self.duration() * 2 / 3
    }

    /// For `check` and logs: `lease 1h, renewable` / `certificate valid until …`.
    pub fn about(&self) -> String {
        let ends = humantime::format_rfc3339_seconds(self.ends);
        match &self.id {
            Some(_) => format!(
                "lease {}, {}, ends {ends}",
                humantime::format_duration(round_secs(self.duration())),
                if self.renewable {
                    "renewable"
                } else {
                    "not renewable"
                }
            ),
            None => format!("valid until {ends}, re-issued at two thirds"),
        }
    }
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs_f64().round() as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_id_is_shown_by_its_path_and_a_fingerprint_only() {
        let id = LeaseId::new("database/creds/app/Xk2PqRsTuVwXyZ012345abcd");
        let shown = id.shown();
        assert!(shown.starts_with("database/creds/app/…"), "{shown}");
        assert!(!shown.contains("Xk2P"), "{shown}");
        assert_ne!(
            shown,
            LeaseId::new("database/creds/app/Other0123456789abcdefgh").shown()
        );
    }

    #[test]
    fn two_thirds_of_the_way_is_when_it_is_renewed_or_replaced() {
        let lease = Lease::granted(None, false, Duration::from_secs(30));
        let at = lease.act_at().duration_since(lease.starts).unwrap();
        assert_eq!(at, Duration::from_secs(20));
    }
}
