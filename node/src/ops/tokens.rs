//! Bearer tokens: `pdk.NAME.SECRET`. The secret is 32 random bytes (hex); the replicated
//! state keeps only its SHA-256, so a leaked snapshot or log holds no usable token.

use paddock_model::ClusterState;

const PREFIX: &str = "pdk.";

/// A new secret and its hex SHA-256.
pub fn new_secret() -> Result<(String, String), String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system's random generator failed".to_string())?;
    let secret = hex(&bytes);
    let sha = sha256_hex(&secret);
    Ok((secret, sha))
}

pub fn token_text(name: &str, secret: &str) -> String {
    format!("{PREFIX}{name}.{secret}")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(text: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a bearer token was refused. The messages never echo the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the bearer token is malformed: tokens look like pdk.NAME.SECRET (from `paddock token create`)")]
    Malformed,
    #[error("no token {0} exists (revoked, or never made); make one with `paddock token create`")]
    Unknown(String),
    #[error("token {0} does not match its secret; copy the whole token printed by `paddock token create`")]
    Mismatch(String),
    #[error("token {0} has expired; make a new one with `paddock token create`")]
    Expired(String),
}

impl TokenError {
    /// The token's name, when the text named one.
    pub fn token_name(&self) -> Option<&str> {
        match self {
            TokenError::Malformed => None,
            TokenError::Unknown(name) | TokenError::Mismatch(name) | TokenError::Expired(name) => {
                Some(name)
            }
        }
    }
}

/// The token a bearer text stands for, checked against this replica's tokens: its name.
pub fn check(state: &ClusterState, bearer: &str, now_ms: u64) -> Result<String, TokenError> {
    let rest = bearer.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
    let (name, secret) = rest.rsplit_once('.').ok_or(TokenError::Malformed)?;
    if name.is_empty() || secret.len() != 64 {
        return Err(TokenError::Malformed);
    }
    let token = state
        .tokens
        .get(name)
        .ok_or_else(|| TokenError::Unknown(name.to_string()))?;
    let given = sha256_hex(secret);
    // Both are hashes of secrets: comparing them leaks nothing about a secret.
    if given != token.sha256 {
        return Err(TokenError::Mismatch(name.to_string()));
    }
    if !token.valid_at(now_ms) {
        return Err(TokenError::Expired(name.to_string()));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use paddock_model::token::ApiToken;

    fn state_with(name: &str, secret: &str, expires_ms: Option<u64>) -> ClusterState {
        let mut state = ClusterState::default();
        state.tokens.insert(
            name.into(),
            ApiToken {
                role: "viewer".into(),
                sha256: sha256_hex(secret),
                created_ms: 0,
                expires_ms,
                created_by: "admin".into(),
                scope: None,
            },
        );
        state
    }

    #[test]
    fn a_token_stands_for_its_role_until_it_expires() {
        let (secret, _) = new_secret().expect("random");
        let state = state_with("ci", &secret, Some(1_000));
        let name = check(&state, &token_text("ci", &secret), 999).expect("valid");
        assert_eq!(name, "ci");
        assert_eq!(
            check(&state, &token_text("ci", &secret), 1_000),
            Err(TokenError::Expired("ci".into()))
        );
    }

    #[test]
    fn wrong_unknown_and_malformed_tokens_are_refused() {
        let (secret, _) = new_secret().expect("random");
        let (other, _) = new_secret().expect("random");
        let state = state_with("ci", &secret, None);
        assert_eq!(
            check(&state, &token_text("ci", &other), 0),
            Err(TokenError::Mismatch("ci".into()))
        );
        assert_eq!(
            check(&state, &token_text("nope", &secret), 0),
            Err(TokenError::Unknown("nope".into()))
        );
        for bad in ["", "pdk.", "pdk.ci", "Bearer x", "pdk.ci.short"] {
            assert_eq!(check(&state, bad, 0), Err(TokenError::Malformed), "{bad}");
        }
        let text = check(&state, &token_text("ci", &other), 0)
            .expect_err("mismatch")
            .to_string();
        assert!(!text.contains(&other));
    }
}
