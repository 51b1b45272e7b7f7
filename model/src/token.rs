//! API tokens: bearer credentials for the HTTPS API and the dashboard, made with
//! `paddock token create NAME --role R`. Only a SHA-256 of the secret is replicated; the
//! secret is shown once, to its creator.

use serde::{Deserialize, Serialize};

use crate::command::Rejection;

/// Most tokens the cluster keeps.
pub const MAX_TOKENS: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub role: String,
    /// Hex SHA-256 of the secret.
    pub sha256: String,
    pub created_ms: u64,
    /// None: never expires.
    pub expires_ms: Option<u64>,
    /// Who made it.
    pub created_by: String,
    /// Only VMs with this label, for the VM actions its role allows.
    pub scope: Option<crate::access::Scope>,
}

impl ApiToken {
    pub fn valid_at(&self, now_ms: u64) -> bool {
        self.expires_ms.is_none_or(|end| now_ms < end)
    }
}

pub fn validate_token(name: &str, role: &str, sha256: &str) -> Result<(), Rejection> {
    crate::ids::validate_node_name(name).map_err(|reason| Rejection::Invalid {
        reason: format!("token name: {reason}"),
    })?;
    // Whether the role exists is for apply to say (custom roles live in the state).
    crate::ids::validate_node_name(role).map_err(|reason| Rejection::Invalid {
        reason: format!("token role: {reason}"),
    })?;
    crate::image::validate_sha256(sha256).map_err(|reason| Rejection::Invalid { reason })
}
