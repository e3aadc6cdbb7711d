//! Amazon MSK IAM authentication: SASL/OAUTHBEARER with a token that is a
//! SigV4-presigned `kafka-cluster:Connect` request, signed with the pod's
//! AWS credentials (IRSA, EKS Pod Identity, or any source of the AWS SDK's
//! default chain).
//!
//! librdkafka asks for a token when it connects and again at 80% of the
//! token's lifetime; every Triggers client context answers with
//! [`oauth_token`] (see [`crate::kafka`]). The token format is the one of
//! AWS's `aws-msk-iam-sasl-signer` libraries: the presigned URL
//! `https://kafka.<region>.amazonaws.com/?Action=kafka-cluster%3AConnect&…`
//! with a `User-Agent` parameter, base64url-encoded without padding.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::ProvideCredentials as _;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign};
use aws_sigv4::sign::v4::SigningParams;
use base64::Engine as _;

/// How long a token is valid (MSK accepts at most 15 minutes).
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);

/// Credentials are fetched again when they expire within this margin.
const CREDENTIALS_MARGIN: Duration = Duration::from_secs(5 * 60);

pub use crate::config::MskIamConfig;

/// A token for librdkafka: the value, its expiry and the principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The base64url presigned URL.
    pub value: String,
    /// When it expires, in milliseconds since the Unix epoch.
    pub expires_at_ms: i64,
    /// The principal librdkafka reports (MSK derives the real one from the
    /// signature).
    pub principal: String,
}

/// Why no token could be made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The AWS SDK's credential chain found no credentials.
    #[error("no AWS credentials for MSK IAM (IRSA, Pod Identity or AWS_* variables): {0}")]
    Credentials(String),
    /// Signing failed (a malformed region, a clock before 1970).
    #[error("cannot sign the MSK IAM token: {0}")]
    Signing(String),
}

/// The token for `region`, signed with `credentials` at `now`.
pub fn sign_token(credentials: &Credentials, region: &str, now: SystemTime) -> Result<Token, TokenError> {
    let host = format!("kafka.{region}.amazonaws.com");
    let url = format!("https://{host}/?Action=kafka-cluster%3AConnect");
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(TOKEN_LIFETIME);
    let identity = credentials.clone().into();
    let params: aws_sigv4::http_request::SigningParams<'_> = SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("kafka-cluster")
        .time(now)
        .settings(settings)
        .build()
        .map_err(|e| TokenError::Signing(e.to_string()))?
        .into();
    let headers = [("host", host.as_str())];
    let request = SignableRequest::new("GET", url.as_str(), headers.into_iter(), SignableBody::Bytes(&[]))
        .map_err(|e| TokenError::Signing(e.to_string()))?;
    let (instructions, _signature) = sign(request, &params)
        .map_err(|e| TokenError::Signing(e.to_string()))?
        .into_parts();
    let mut signed = url::Url::parse(&url).map_err(|e| TokenError::Signing(e.to_string()))?;
    {
        let mut query = signed.query_pairs_mut();
        for (name, value) in instructions.params() {
            query.append_pair(name, value);
        }
        query.append_pair("User-Agent", concat!("triggers/", env!("CARGO_PKG_VERSION")));
    }
    let issued_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|e| TokenError::Signing(e.to_string()))?
        .as_millis();
    let expires_at_ms = i64::try_from(issued_ms + TOKEN_LIFETIME.as_millis()).unwrap_or(i64::MAX);
    Ok(Token {
        value: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signed.as_str()),
        expires_at_ms,
        principal: credentials.access_key_id().to_owned(),
    })
}

/// The credentials last fetched, shared by every client of the process.
static CACHED: Mutex<Option<Credentials>> = Mutex::new(None);

/// A fresh token for `region` with the process's AWS credentials (cached
/// until 5 minutes before they expire). Called from librdkafka's refresh
/// callback, which may run on an async worker: the credential chain is
/// asked on a thread of its own with its own runtime, so the caller only
/// waits (at most every few minutes, for the time one IMDS or STS call
/// takes) and never nests runtimes.
pub fn oauth_token(region: &str) -> Result<Token, TokenError> {
    let credentials = current_credentials(region)?;
    sign_token(&credentials, region, SystemTime::now())
}

fn current_credentials(region: &str) -> Result<Credentials, TokenError> {
    let fresh = |c: &Credentials| {
        c.expiry()
            .is_none_or(|expiry| expiry > SystemTime::now() + CREDENTIALS_MARGIN)
    };
    if let Some(credentials) = CACHED.lock().unwrap_or_else(PoisonError::into_inner).as_ref()
        && fresh(credentials)
    {
        return Ok(credentials.clone());
    }
    let region = region.to_owned();
    let fetched = std::thread::spawn(move || -> Result<Credentials, TokenError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TokenError::Credentials(e.to_string()))?;
        runtime.block_on(async move {
            let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new(region))
                .load()
                .await;
            let provider = config
                .credentials_provider()
                .ok_or_else(|| TokenError::Credentials("no credential provider".to_owned()))?;
            provider.provide_credentials().await.map_err(|e| {
                TokenError::Credentials(aws_smithy_types::error::display::DisplayErrorContext(e).to_string())
            })
        })
    })
    .join()
    .map_err(|_| TokenError::Credentials("the credential thread panicked".to_owned()))??;
    *CACHED.lock().unwrap_or_else(PoisonError::into_inner) = Some(fetched.clone());
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn decode(token: &Token) -> Result<url::Url, Box<dyn std::error::Error>> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&token.value)?;
        Ok(url::Url::parse(std::str::from_utf8(&bytes)?)?)
    }

    fn param(url: &url::Url, name: &str) -> Option<String> {
        url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
    }

    // 2026-11-23T12:00:00Z
    fn fixed_time() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_435_200)
    }

    #[test]
    fn a_token_is_a_presigned_kafka_cluster_connect_url() -> TestResult {
        let credentials = Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            None,
            None,
            "test",
        );
        let token = sign_token(&credentials, "eu-west-1", fixed_time())?;
        assert!(!token.value.contains('='), "no padding: {}", token.value);
        assert!(
            !token.value.contains('+') && !token.value.contains('/'),
            "base64url alphabet"
        );
        let url = decode(&token)?;
        assert_eq!(url.scheme(), "https");
        assert_eq!(url.host_str(), Some("kafka.eu-west-1.amazonaws.com"));
        assert_eq!(url.path(), "/");
        assert_eq!(param(&url, "Action").as_deref(), Some("kafka-cluster:Connect"));
        assert_eq!(param(&url, "X-Amz-Algorithm").as_deref(), Some("AWS4-HMAC-SHA256"));
        assert_eq!(
            param(&url, "X-Amz-Credential").as_deref(),
            Some("AKIDEXAMPLE/20261123/eu-west-1/kafka-cluster/aws4_request")
        );
        assert_eq!(param(&url, "X-Amz-Date").as_deref(), Some("20261123T120000Z"));
        assert_eq!(param(&url, "X-Amz-Expires").as_deref(), Some("900"));
        assert_eq!(param(&url, "X-Amz-SignedHeaders").as_deref(), Some("host"));
        let signature = param(&url, "X-Amz-Signature").unwrap_or_default();
        assert_eq!(signature.len(), 64);
        assert!(signature.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(
            param(&url, "X-Amz-Security-Token").is_none(),
            "long-term keys carry no session token"
        );
        assert!(param(&url, "User-Agent").is_some_and(|ua| ua.starts_with("triggers/")));
        assert_eq!(token.expires_at_ms, 1_795_435_200_000 + 900_000);
        assert_eq!(token.principal, "AKIDEXAMPLE");
        Ok(())
    }

    #[test]
    fn session_credentials_add_their_token_and_the_signature_depends_on_the_secret() -> TestResult {
        let session = Credentials::new(
            "ASIAEXAMPLE",
            "secret-one",
            Some("session-token".to_owned()),
            None,
            "test",
        );
        let url = decode(&sign_token(&session, "us-east-1", fixed_time())?)?;
        assert_eq!(param(&url, "X-Amz-Security-Token").as_deref(), Some("session-token"));
        let other = Credentials::new(
            "ASIAEXAMPLE",
            "secret-two",
            Some("session-token".to_owned()),
            None,
            "test",
        );
        let other_url = decode(&sign_token(&other, "us-east-1", fixed_time())?)?;
        assert_ne!(param(&url, "X-Amz-Signature"), param(&other_url, "X-Amz-Signature"));
        // Same inputs, same signature: the token is deterministic.
        let again = decode(&sign_token(&session, "us-east-1", fixed_time())?)?;
        assert_eq!(param(&url, "X-Amz-Signature"), param(&again, "X-Amz-Signature"));
        Ok(())
    }

    #[test]
    fn a_region_must_look_like_one() {
        let mut issues = Vec::new();
        MskIamConfig {
            region: "us-east-1".to_owned(),
        }
        .validate("kafka.msk_iam", &mut issues);
        assert!(issues.is_empty());
        MskIamConfig {
            region: "US East".to_owned(),
        }
        .validate("kafka.msk_iam", &mut issues);
        assert_eq!(issues.len(), 1);
    }
}
