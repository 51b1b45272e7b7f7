//! API tokens: bearer credentials for the HTTPS API and the dashboard, made with
//! `paddock token create NAME --role R`. Only a SHA-256 of the secret is replicated; the
//! secret is shown once, to its creator.

use serde::{Deserialize, Serialize};

use crate::command::Rejection;

/// The roles a token may carry (a cluster member's `node` role is for certificates only).
pub const TOKEN_ROLES: &[&str] = &["admin", "operator", "viewer"];

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
    if !TOKEN_ROLES.contains(&role) {
        return Err(Rejection::Invalid {
            reason: format!("token role {role:?} is not one of admin, operator, viewer"),
        });
    }
    crate::image::validate_sha256(sha256).map_err(|reason| Rejection::Invalid { reason })
}
