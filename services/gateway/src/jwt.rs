//! HS256 JSON Web Tokens for `POST /token` (RFC 7519), verified in constant
//! time. Only what the gateway issues is accepted: `alg` must be `HS256`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The claims of a gateway token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The tenant (`ten_…`).
    pub sub: String,
    /// The SHA-256 of the API key it was issued for, so revoking the key
    /// revokes its tokens.
    pub kh: String,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Expires at (seconds since the epoch).
    pub exp: i64,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON.
    #[error("malformed token")]
    Malformed,
    /// Another algorithm than HS256.
    #[error("unsupported algorithm")]
    Algorithm,
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// Past `exp`.
    #[error("expired")]
    Expired,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: Option<String>,
}

/// Signs and verifies gateway tokens.
#[derive(Clone)]
pub struct JwtKeys {
    key: Vec<u8>,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys(..)")
    }
}

impl JwtKeys {
    /// Keys from a shared secret.
    pub fn new(secret: &[u8]) -> Self {
        Self { key: secret.to_vec() }
    }

    fn mac(&self) -> Result<HmacSha256, JwtError> {
        // HMAC accepts keys of any length; the error cannot happen.
        HmacSha256::new_from_slice(&self.key).map_err(|_| JwtError::Signature)
    }

    /// A signed token for `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, JwtError> {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).map_err(|_| JwtError::Malformed)?);
        let signing_input = format!("{header}.{payload}");
        let mut mac = self.mac()?;
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        Ok(format!("{signing_input}.{signature}"))
    }

    /// The claims of a valid, unexpired token.
    pub fn verify(&self, token: &str, now_secs: i64) -> Result<Claims, JwtError> {
        let (signing_input, signature) = token.rsplit_once('.').ok_or(JwtError::Malformed)?;
        let (header, payload) = signing_input.split_once('.').ok_or(JwtError::Malformed)?;
        if payload.contains('.') {
            return Err(JwtError::Malformed);
        }
        let header: Header = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(JwtError::Malformed)?;
        if header.alg != "HS256" {
            return Err(JwtError::Algorithm);
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| JwtError::Malformed)?;
        let mut mac = self.mac()?;
        mac.update(signing_input.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&signature).map_err(|_| JwtError::Signature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or(JwtError::Malformed)?;
        if claims.exp <= now_secs {
            return Err(JwtError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "ten_x".to_owned(),
            kh: "abc".to_owned(),
            iat: 1,
            exp,
        }
    }

    #[test]
    fn a_signed_token_verifies_until_it_expires() {
        let keys = JwtKeys::new(b"0123456789abcdef0123456789abcdef");
        let token = keys.sign(&claims(100)).unwrap_or_default();
        assert_eq!(keys.verify(&token, 99), Ok(claims(100)));
        assert_eq!(keys.verify(&token, 100), Err(JwtError::Expired));
    }

    #[test]
    fn tampering_and_other_keys_are_refused() {
        let keys = JwtKeys::new(b"0123456789abcdef0123456789abcdef");
        let other = JwtKeys::new(b"another-secret-another-secret-xx");
        let token = keys.sign(&claims(100)).unwrap_or_default();
        assert_eq!(other.verify(&token, 1), Err(JwtError::Signature));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(10_000)).unwrap_or_default());
        parts[1] = &forged;
        assert_eq!(keys.verify(&parts.join("."), 1), Err(JwtError::Signature));
        let none_alg = format!("{}.{}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#), parts[1]);
        assert_eq!(keys.verify(&none_alg, 1), Err(JwtError::Algorithm));
        assert_eq!(keys.verify("a.b", 1), Err(JwtError::Malformed));
    }

    #[test]
    fn matches_an_independent_hs256_vector() {
        // RFC 7515 appendix A.1 uses an HS256 JWS; here the well-known
        // jwt.io example: secret "your-256-bit-secret".
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        let keys = JwtKeys::new(b"your-256-bit-secret");
        // The claims are not ours (no exp), so parsing fails after the
        // signature has been verified: proof the HMAC matches.
        assert_eq!(keys.verify(token, 1), Err(JwtError::Malformed));
        let wrong = JwtKeys::new(b"not-the-secret");
        assert_eq!(wrong.verify(token, 1), Err(JwtError::Signature));
    }
}
