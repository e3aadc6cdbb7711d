//! HS256 JSON Web Tokens for `POST /token` (RFC 7519), through the
//! maintained `jsonwebtoken` crate: the algorithm is pinned to HS256, `exp`,
//! `nbf`, `iss`, `aud` and `sub` are required and checked, and the signing
//! key rotates with an overlap — tokens name their key (`kid`), and the
//! previous secrets keep verifying while new tokens are signed with the
//! current one.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How far the clocks of two replicas may disagree (seconds): a token issued
/// on one is valid at once on another.
const LEEWAY_SECS: u64 = 30;

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
    /// Not valid before (seconds since the epoch).
    pub nbf: i64,
    /// Expires at (seconds since the epoch).
    pub exp: i64,
    /// Who issued it (`gateway.jwt_issuer`).
    pub iss: String,
    /// Whom it is for (`gateway.jwt_audience`).
    pub aud: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not a JWT (three base64url parts of JSON with the claims above).
    #[error("malformed token")]
    Malformed,
    /// Another algorithm than HS256 (`none` included).
    #[error("unsupported algorithm")]
    Algorithm,
    /// Signed by no key this gateway knows, or the signature does not
    /// verify.
    #[error("bad signature")]
    Signature,
    /// Past `exp`.
    #[error("expired")]
    Expired,
    /// Before `nbf`.
    #[error("not valid yet")]
    NotYetValid,
    /// Another issuer or audience, or a required claim missing.
    #[error("not issued for this API")]
    Claims,
}

impl From<jsonwebtoken::errors::Error> for JwtError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        match e.kind() {
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Self::Algorithm,
            ErrorKind::InvalidSignature => Self::Signature,
            ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience | ErrorKind::MissingRequiredClaim(_) => Self::Claims,
            _ => Self::Malformed,
        }
    }
}

/// One secret: its id and keys.
struct Key {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Key {
    fn new(secret: &[u8]) -> Self {
        // The id names the key without revealing it: 64 bits of its hash.
        let kid = hex::encode(&Sha256::digest(secret)[..8]);
        Self {
            kid,
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }
}

/// Signs and verifies gateway tokens.
pub struct JwtKeys {
    /// Signs new tokens (and verifies them).
    current: Key,
    /// Verify only: the secrets rotated out, until their tokens expire.
    previous: Vec<Key>,
    validation: Validation,
    issuer: String,
    audience: String,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("current", &self.current.kid)
            .field("previous", &self.previous.iter().map(|k| &k.kid).collect::<Vec<_>>())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl JwtKeys {
    /// Keys signing with `current` and still accepting tokens of `previous`
    /// secrets, for tokens of `issuer` meant for `audience`.
    pub fn new(current: &[u8], previous: &[&[u8]], issuer: &str, audience: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        Self {
            current: Key::new(current),
            previous: previous.iter().map(|secret| Key::new(secret)).collect(),
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
        }
    }

    /// The claims of a token for tenant `sub` and key hash `kh`, valid from
    /// `now` for `ttl_secs`.
    pub fn claims(&self, sub: String, kh: String, now: i64, ttl_secs: i64) -> Claims {
        Claims {
            sub,
            kh,
            iat: now,
            nbf: now,
            exp: now.saturating_add(ttl_secs),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        }
    }

    /// A token for `claims`, signed with the current secret.
    pub fn sign(&self, claims: &Claims) -> Result<String, JwtError> {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.current.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.current.encoding)?)
    }

    /// The claims of a valid token: HS256, signed by a known secret, within
    /// `nbf`..`exp` (give or take the leeway), of this issuer and audience.
    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        let header = jsonwebtoken::decode_header(token)?;
        if header.alg != Algorithm::HS256 {
            return Err(JwtError::Algorithm);
        }
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|key| header.kid.as_deref() == Some(key.kid.as_str()))
            .ok_or(JwtError::Signature)?;
        Ok(jsonwebtoken::decode::<Claims>(token, &key.decoding, &self.validation)?.claims)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const OLD: &[u8] = b"an-older-secret-an-older-secret-";

    fn now() -> i64 {
        triggers_core::event::now_ms() / 1000
    }

    fn keys() -> JwtKeys {
        JwtKeys::new(SECRET, &[], "triggers", "triggers-api")
    }

    fn token(keys: &JwtKeys, from: i64, ttl: i64) -> String {
        keys.sign(&keys.claims("ten_x".to_owned(), "abc".to_owned(), from, ttl))
            .unwrap()
    }

    #[test]
    fn a_signed_token_verifies_between_nbf_and_exp() {
        let keys = keys();
        let claims = keys.verify(&token(&keys, now(), 3600)).unwrap();
        assert_eq!((claims.sub.as_str(), claims.kh.as_str()), ("ten_x", "abc"));
        assert_eq!(keys.verify(&token(&keys, now() - 7200, 3600)), Err(JwtError::Expired));
        assert_eq!(
            keys.verify(&token(&keys, now() + 600, 3600)),
            Err(JwtError::NotYetValid)
        );
    }

    #[test]
    fn tampering_other_keys_and_other_algorithms_are_refused() {
        let keys = keys();
        let good = token(&keys, now(), 3600);
        let other = JwtKeys::new(b"another-secret-another-secret-xx", &[], "triggers", "triggers-api");
        assert_eq!(other.verify(&good), Err(JwtError::Signature), "unknown kid");
        // The same kid with a forged payload.
        let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
        let mut forged = keys.claims("ten_other".to_owned(), "abc".to_owned(), now(), 3600);
        forged.exp += 10_000;
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(keys.verify(&parts.join(".")), Err(JwtError::Signature));
        // `alg: none` and an asymmetric algorithm (key confusion) are refused.
        for alg in ["none", "RS256", "HS512"] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","kid":"{}"}}"#, keys.current.kid));
            let unsigned = format!("{header}.{}.", parts[1]);
            assert!(
                matches!(keys.verify(&unsigned), Err(JwtError::Algorithm | JwtError::Malformed)),
                "{alg}"
            );
        }
        assert_eq!(keys.verify("a.b"), Err(JwtError::Malformed));
    }

    #[test]
    fn issuer_and_audience_are_checked() {
        let keys = keys();
        let elsewhere = JwtKeys::new(SECRET, &[], "someone-else", "triggers-api");
        assert_eq!(keys.verify(&token(&elsewhere, now(), 3600)), Err(JwtError::Claims));
        let for_another_api = JwtKeys::new(SECRET, &[], "triggers", "another-api");
        assert_eq!(
            keys.verify(&token(&for_another_api, now(), 3600)),
            Err(JwtError::Claims)
        );
    }

    #[test]
    fn the_signing_secret_rotates_with_an_overlap() {
        let before = JwtKeys::new(OLD, &[], "triggers", "triggers-api");
        let issued_before = token(&before, now(), 3600);
        // Rotated: the new secret signs, the old one still verifies.
        let rotated = JwtKeys::new(SECRET, &[OLD], "triggers", "triggers-api");
        assert!(rotated.verify(&issued_before).is_ok());
        let issued_after = token(&rotated, now(), 3600);
        assert_eq!(
            jsonwebtoken::decode_header(&issued_after).unwrap().kid,
            Some(rotated.current.kid.clone())
        );
        assert!(keys().verify(&issued_after).is_ok(), "signed with the current secret");
        // Once the old secret is dropped, its tokens stop working.
        assert_eq!(keys().verify(&issued_before), Err(JwtError::Signature));
    }

    #[test]
    fn matches_an_independent_hs256_implementation() {
        // Signed here with the RustCrypto HMAC, verified by jsonwebtoken.
        use hmac::{Hmac, Mac};
        let keys = keys();
        let claims = keys.claims("ten_x".to_owned(), "abc".to_owned(), now(), 3600);
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{}"}}"#, keys.current.kid));
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET).unwrap();
        mac.update(format!("{header}.{payload}").as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        assert_eq!(keys.verify(&format!("{header}.{payload}.{signature}")), Ok(claims));
    }
}
