//! Bearer tokens of the admin port: a minted admin token (`sat1.…`, signed with the master
//! keyring and the environment salt) or one of the sealed static tokens of `[admin]`.

use std::time::{SystemTime, UNIX_EPOCH};

use sentinel_policy::keys::verify_admin_token;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::secrets::Secrets;

/// What a reload rebuilds for checking tokens.
pub struct AdminAuth {
    /// SHA-256 digests of `[admin] tokens_sealed`, opened (the tokens themselves are not kept).
    pub token_digests: Vec<[u8; 32]>,
    pub revoked_names: Vec<String>,
}

impl AdminAuth {
    /// The token's name (`static` for a sealed one), or why it is refused. Never logs it.
    pub fn check(
        &self,
        authorization: Option<&str>,
        secrets: &Secrets,
    ) -> Result<String, &'static str> {
        let header = authorization.ok_or("missing Authorization: Bearer <admin token>")?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or("the Authorization header must be `Bearer <admin token>`")?
            .trim();
        // Digests are compared, every one of them, so the time taken says neither which token
        // matched nor how long they are.
        let digest = Sha256::digest(token.as_bytes());
        let matched = self.token_digests.iter().fold(0u8, |found, t| {
            found | t.ct_eq(digest.as_slice()).unwrap_u8()
        });
        if matched == 1 {
            return Ok("static".to_owned());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = verify_admin_token(secrets.keyring(), secrets.salt(), token, now)
            .map_err(|_| "invalid or expired admin token")?;
        if self.revoked_names.contains(&claims.name) {
            return Err("this admin token has been revoked");
        }
        Ok(claims.name)
    }
}
