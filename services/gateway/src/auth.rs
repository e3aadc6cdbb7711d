//! Who is calling: an API key (`tk_…`), a JWT from `POST /token`, or the
//! operator's admin token.
//!
//! Key lookups go to DynamoDB by the key's SHA-256 and are cached for
//! `auth_cache_ttl` (misses for one second). When an entry expires, one
//! request refreshes it while the others keep the previous answer for at most
//! one more TTL (no stampede on DynamoDB under load), so a revoked key stops
//! working within twice `auth_cache_ttl` on every replica. A JWT carries the hash of the key it
//! was issued for and goes through the same lookup, so revoking a key
//! revokes its tokens too.
//!
//! Unauthenticated load stays cheap: a malformed key is refused without a
//! lookup; unknown keys are remembered apart from known ones (a flood of
//! random keys cannot evict the keys of real callers); and a client address
//! whose keys keep failing gets no more lookups for a while (429), only
//! answers from the cache.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use triggers_core::dynamo::Tables;
use triggers_core::ids::TenantId;
use triggers_core::tenancy;

use crate::error::ApiError;
use crate::jwt::JwtKeys;

/// The most known keys cached (least recently used go first).
const CACHE_LIMIT: u64 = 100_000;
/// The most unknown keys remembered (least recently used go first).
const MISS_LIMIT: u64 = 10_000;
/// Failed authentications a client address may cause per window before its
/// uncached keys are refused without a lookup.
pub const FAILURES_PER_WINDOW: u32 = 20;
/// The window of [`FAILURES_PER_WINDOW`].
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10);
/// The most client addresses tracked before that table is emptied.
const ADDRESS_LIMIT: usize = 100_000;

/// An authenticated tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The tenant every read and write is scoped to.
    pub tenant: TenantId,
    /// The hash of the key used (directly or through a JWT).
    pub key_hash: String,
    /// The tenant's own rate limit, if it has one.
    pub rate_limit: Option<u32>,
}

#[derive(Debug, Clone)]
struct Entry {
    caller: Option<Caller>,
    until: Instant,
    /// A request is looking the key up again.
    refreshing: bool,
}

/// What the cache says about a key.
enum Cached {
    /// Use this answer.
    Answer(Option<Caller>),
    /// Look it up (this request refreshes the entry).
    Lookup,
}

/// Resolves credentials to tenants.
pub struct Authenticator {
    dynamo: aws_sdk_dynamodb::Client,
    tables: Tables,
    ttl: Duration,
    cache: moka::sync::Cache<String, Entry>,
    /// Unknown keys, each for `ttl` (at most a second).
    misses: moka::sync::Cache<String, ()>,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    jwt: JwtKeys,
    admin_token_hash: Option<[u8; 32]>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Authenticator {
    /// An authenticator over the key and tenant tables.
    pub fn new(
        dynamo: aws_sdk_dynamodb::Client,
        tables: Tables,
        ttl: Duration,
        jwt: JwtKeys,
        admin_token: Option<&str>,
    ) -> Self {
        Self {
            dynamo,
            tables,
            ttl,
            cache: moka::sync::Cache::new(CACHE_LIMIT),
            misses: moka::sync::Cache::builder()
                .max_capacity(MISS_LIMIT)
                .time_to_live(ttl.min(Duration::from_secs(1)))
                .build(),
            failures: Mutex::new(HashMap::new()),
            jwt,
            admin_token_hash: admin_token.map(|t| sha256(t.as_bytes())),
        }
    }

    /// The signer of `POST /token`.
    pub fn jwt(&self) -> &JwtKeys {
        &self.jwt
    }

    /// The caller behind an API key, for a request from `client`.
    pub async fn by_api_key(&self, key: &str, client: Option<IpAddr>) -> Result<Caller, ApiError> {
        if !well_formed(key) {
            self.failed(client);
            metrics::counter!("triggers_gateway_auth_failures_total", "reason" => "malformed_key").increment(1);
            return Err(ApiError::Unauthorized("unknown or revoked API key"));
        }
        self.by_key_hash(&tenancy::hash_api_key(key), client).await
    }

    /// The caller behind `Authorization: Bearer …`, for a request from `client`.
    pub async fn authenticate(&self, authorization: Option<&str>, client: Option<IpAddr>) -> Result<Caller, ApiError> {
        let token = bearer(authorization)?;
        if token.starts_with("tk_") {
            return self.by_api_key(token, client).await;
        }
        if token.split('.').count() == 3 {
            let claims = self.jwt.verify(token).map_err(|e| {
                metrics::counter!("triggers_gateway_auth_failures_total", "reason" => "jwt").increment(1);
                ApiError::Unauthorized(match e {
                    crate::jwt::JwtError::Expired => "the token has expired; get a new one from POST /token",
                    crate::jwt::JwtError::NotYetValid => "the token is not valid yet (check the clock)",
                    _ => "the token is not valid",
                })
            })?;
            let caller = self.by_key_hash(&claims.kh, client).await?;
            if caller.tenant.to_string() != claims.sub {
                return Err(ApiError::Unauthorized("the token is not valid"));
            }
            return Ok(caller);
        }
        Err(ApiError::Unauthorized(
            "expected an API key (tk_…) or a token from POST /token",
        ))
    }

    /// Notes a failed authentication from `client`.
    fn failed(&self, client: Option<IpAddr>) {
        let Some(client) = client else { return };
        let now = Instant::now();
        let mut failures = self.failures.lock();
        if failures.len() >= ADDRESS_LIMIT && !failures.contains_key(&client) {
            failures.retain(|_, (since, _)| now.duration_since(*since) < FAILURE_WINDOW);
            if failures.len() >= ADDRESS_LIMIT {
                failures.clear();
            }
        }
        let entry = failures.entry(client).or_insert((now, 0));
        if now.duration_since(entry.0) >= FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    /// How long `client` must wait before its keys are looked up again, if
    /// it failed too often.
    fn throttled(&self, client: Option<IpAddr>) -> Option<Duration> {
        let client = client?;
        let failures = self.failures.lock();
        let (since, count) = failures.get(&client)?;
        let elapsed = since.elapsed();
        (*count >= FAILURES_PER_WINDOW && elapsed < FAILURE_WINDOW).then(|| FAILURE_WINDOW - elapsed)
    }

    fn cached(&self, hash: &str, now: Instant) -> Cached {
        if self.misses.contains_key(hash) {
            return Cached::Answer(None);
        }
        // Fresh entries are read without taking the key's lock.
        match self.cache.get(hash) {
            None => return Cached::Lookup,
            Some(entry) if entry.until > now => return Cached::Answer(entry.caller),
            Some(_) => {}
        }
        // Expired: one request refreshes it (decided atomically per key);
        // while it does, the others keep using a known key for at most one
        // more TTL.
        let mut decision = Cached::Lookup;
        self.cache.entry_by_ref(hash).and_compute_with(|current| {
            let Some(entry) = current.map(moka::Entry::into_value) else {
                return moka::ops::compute::Op::Nop;
            };
            if entry.until > now || (entry.refreshing && entry.caller.is_some() && now < entry.until + self.ttl) {
                decision = Cached::Answer(entry.caller);
                return moka::ops::compute::Op::Nop;
            }
            moka::ops::compute::Op::Put(Entry {
                refreshing: true,
                ..entry
            })
        });
        decision
    }

    async fn by_key_hash(&self, hash: &str, client: Option<IpAddr>) -> Result<Caller, ApiError> {
        let now = Instant::now();
        let caller = match self.cached(hash, now) {
            Cached::Answer(caller) => caller,
            Cached::Lookup => {
                if let Some(retry_after) = self.throttled(client) {
                    self.end_refresh(hash);
                    metrics::counter!("triggers_gateway_auth_failures_total", "reason" => "throttled").increment(1);
                    return Err(ApiError::AuthThrottled { retry_after });
                }
                match self.lookup(hash).await {
                    Ok(Some(caller)) => {
                        self.cache.insert(
                            hash.to_owned(),
                            Entry {
                                caller: Some(caller.clone()),
                                until: Instant::now() + self.ttl,
                                refreshing: false,
                            },
                        );
                        Some(caller)
                    }
                    Ok(None) => {
                        // A revoked key leaves the known ones; unknown keys
                        // are remembered apart, briefly and in bounded number.
                        self.cache.invalidate(hash);
                        self.misses.insert(hash.to_owned(), ());
                        None
                    }
                    Err(e) => {
                        self.end_refresh(hash);
                        return Err(e);
                    }
                }
            }
        };
        caller.ok_or_else(|| {
            self.failed(client);
            metrics::counter!("triggers_gateway_auth_failures_total", "reason" => "unknown_key").increment(1);
            ApiError::Unauthorized("unknown or revoked API key")
        })
    }

    fn end_refresh(&self, hash: &str) {
        self.cache.entry_by_ref(hash).and_compute_with(|current| match current {
            Some(entry) => moka::ops::compute::Op::Put(Entry {
                refreshing: false,
                ..entry.into_value()
            }),
            None => moka::ops::compute::Op::Nop,
        });
    }

    async fn lookup(&self, hash: &str) -> Result<Option<Caller>, ApiError> {
        let unavailable = |e: tenancy::StoreError| {
            tracing::warn!(error = %e, "key lookup failed");
            ApiError::Unavailable("the key store is unavailable".to_owned())
        };
        let Some(tenant) = tenancy::tenant_of_key_hash(&self.dynamo, &self.tables, hash)
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let settings = tenancy::get_tenant(&self.dynamo, &self.tables, &tenant)
            .await
            .map_err(unavailable)?;
        // A key whose tenant was erased is no key.
        Ok(settings.map(|t| Caller {
            tenant,
            key_hash: hash.to_owned(),
            rate_limit: t.rate_limit,
        }))
    }

    /// Checks the operator's admin token (constant time).
    pub fn check_admin(&self, authorization: Option<&str>) -> Result<(), ApiError> {
        let Some(expected) = &self.admin_token_hash else {
            return Err(ApiError::Forbidden(
                "admin routes are disabled: no gateway.admin_token is configured",
            ));
        };
        let token = bearer(authorization)?;
        if bool::from(sha256(token.as_bytes()).ct_eq(expected)) {
            Ok(())
        } else {
            metrics::counter!("triggers_gateway_auth_failures_total", "reason" => "admin_token").increment(1);
            Err(ApiError::Unauthorized("invalid admin token"))
        }
    }

    /// Forgets cached lookups (after a revocation on this replica).
    pub fn forget(&self, hash: Option<&str>) {
        match hash {
            Some(hash) => {
                self.cache.invalidate(hash);
                self.misses.invalidate(hash);
            }
            None => {
                self.cache.invalidate_all();
                self.misses.invalidate_all();
            }
        }
    }

    /// Issues a token for an authenticated caller.
    pub fn issue(&self, caller: &Caller, ttl: Duration) -> Result<String, ApiError> {
        let now = triggers_core::event::now_ms() / 1000;
        let claims = self.jwt.claims(
            caller.tenant.to_string(),
            caller.key_hash.clone(),
            now,
            i64::try_from(ttl.as_secs()).unwrap_or(86_400),
        );
        self.jwt
            .sign(&claims)
            .map_err(|_| ApiError::Unavailable("cannot sign tokens".to_owned()))
    }
}

/// Whether `key` looks like a key Triggers made (`tk_` and 40 base62
/// characters), so anything else is refused without a lookup.
fn well_formed(key: &str) -> bool {
    key.strip_prefix("tk_")
        .is_some_and(|body| body.len() == 40 && body.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// The address a request comes from: the peer, or with
/// `trust_forwarded_for` (behind a load balancer that sets it) the first
/// address of `Forwarded`/`X-Forwarded-For`.
pub fn client_address(request: &HttpRequest, trust_forwarded_for: bool) -> Option<IpAddr> {
    if trust_forwarded_for {
        let info = request.connection_info();
        let address = info.realip_remote_addr()?;
        return address
            .parse::<IpAddr>()
            .ok()
            .or_else(|| address.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()));
    }
    request.peer_addr().map(|a| a.ip())
}

fn bearer(authorization: Option<&str>) -> Result<&str, ApiError> {
    let header = authorization.ok_or(ApiError::Unauthorized("send Authorization: Bearer <API key or token>"))?;
    let (scheme, token) = header.split_once(' ').ok_or(ApiError::Unauthorized(
        "expected Authorization: Bearer <API key or token>",
    ))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::Unauthorized(
            "expected Authorization: Bearer <API key or token>",
        ));
    }
    Ok(token.trim())
}

/// The `Authorization` header, if any.
pub(crate) fn authorization(request: &HttpRequest) -> Option<String> {
    request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The operator, authenticated by the admin token.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

/// Shared by the authenticator's users.
pub type SharedAuth = Arc<Authenticator>;
