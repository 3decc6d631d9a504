//! JWT-shaped, unsigned test tokens whose claims a test chooses.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// Builds `header.payload.signature` with the given claims. The signature is random bytes:
/// nothing here verifies it, as nothing in the worker does.
pub fn mint(claims: &Value) -> String {
    let header = json!({"typ": "JWT", "alg": "RS256", "kid": "simulator"});
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"));
    let signature = URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes());
    format!("{}.{}.{}", enc(&header), enc(claims), signature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::TokenClaims;

    #[test]
    fn minted_tokens_decode_to_their_claims() {
        let token = mint(&json!({"tid": "t1", "roles": ["Exchange.ManageAsApp"], "exp": 42}));
        let claims = TokenClaims::decode(&token).unwrap();
        assert_eq!(claims.tid.as_deref(), Some("t1"));
        assert_eq!(claims.exp, Some(42));
        assert_ne!(mint(&json!({})), mint(&json!({})), "each token is unique");
    }
}
