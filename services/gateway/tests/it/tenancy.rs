use std::time::Duration;

use serde_json::json;
use triggers_stack::TestStack;

use crate::support::{ADMIN_TOKEN, answer, start};

#[tokio::test]
async fn the_first_client_guide_flow_works_as_written() {
    let gateway = start(TestStack::shared(), |_, _| {}).await;
    let (status, _, health) = answer(
        gateway
            .http
            .get(format!("{}/health", gateway.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));

    let (status, headers, token) = answer(
        gateway
            .http
            .post(format!("{}/token", gateway.url))
            .form(&[("username", "acme"), ("password", gateway.key.as_str())])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["token_type"], "bearer");
    assert_eq!(token["expires_in"], 86_400);
    assert_eq!(
        headers.get("cache-control").and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    let access_token = token["access_token"].as_str().unwrap_or_default().to_owned();

    let (status, _, accepted) = answer(
        gateway
            .http
            .post(format!("{}/events", gateway.url))
            .bearer_auth(&access_token)
            .json(&json!({"type": "lead.created", "source": "crm", "payload": {"email": "a@b.c"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    let events = gateway.read_events(1, Duration::from_secs(15)).await;
    assert_eq!(events[0].1.tenant, gateway.tenant);
    assert_eq!(events[0].1.data, json!({"email": "a@b.c"}));

    // A wrong key gets no token; a tampered token is refused.
    let (status, _, _) = answer(
        gateway
            .http
            .post(format!("{}/token", gateway.url))
            .form(&[("username", "acme"), ("password", "tk_wrong")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    let mut tampered = access_token.clone();
    tampered.push('x');
    let (status, _, _) = answer(
        gateway
            .http
            .post(format!("{}/events", gateway.url))
            .bearer_auth(&tampered)
            .json(&json!({"type": "a", "source": "b"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn admin_keys_rotate_and_revocation_takes_effect_within_seconds() {
    let gateway = start(TestStack::shared(), |_, _| {}).await;
    let admin = |method: reqwest::Method, path: String| {
        gateway
            .http
            .request(method, format!("{}{path}", gateway.url))
            .bearer_auth(ADMIN_TOKEN)
    };
    // A tenant's key is not an admin token.
    let (status, _, _) = answer(
        gateway
            .http
            .post(format!("{}/v1/admin/tenants", gateway.url))
            .bearer_auth(&gateway.key)
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);

    let (status, _, tenant) = answer(
        admin(reqwest::Method::POST, "/v1/admin/tenants".to_owned())
            .json(&json!({"name": "globex"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{tenant}");
    let tenant_id = tenant["id"].as_str().unwrap_or_default().to_owned();
    let keys_path = format!("/v1/admin/tenants/{tenant_id}/keys");
    let (_, _, first) = answer(admin(reqwest::Method::POST, keys_path.clone()).send().await.unwrap()).await;
    let (_, _, second) = answer(admin(reqwest::Method::POST, keys_path.clone()).send().await.unwrap()).await;
    let ingest = |key: String| {
        gateway
            .http
            .post(format!("{}/v1/events", gateway.url))
            .bearer_auth(key)
            .json(&json!({"type": "t", "source": "s"}))
            .send()
    };
    let first_key = first["key"].as_str().unwrap_or_default().to_owned();
    let second_key = second["key"].as_str().unwrap_or_default().to_owned();
    // Both keys work at once (rotation without downtime).
    assert_eq!(
        ingest(first_key.clone()).await.map(|r| r.status().as_u16()).ok(),
        Some(202)
    );
    assert_eq!(
        ingest(second_key.clone()).await.map(|r| r.status().as_u16()).ok(),
        Some(202)
    );
    let (_, _, listed) = answer(admin(reqwest::Method::GET, keys_path.clone()).send().await.unwrap()).await;
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(2));

    let revoke = format!("{keys_path}/{}", first["id"].as_str().unwrap_or_default());
    let status = admin(reqwest::Method::DELETE, revoke)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok();
    assert_eq!(status, Some(204));
    // Effective within the cache TTL (1 s here); poll rather than sleep blindly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = ingest(first_key.clone()).await.map(|r| r.status().as_u16()).ok();
        if status == Some(401) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "revoked key still accepted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ingest(second_key).await.map(|r| r.status().as_u16()).ok(), Some(202));

    // Events of one tenant never land under another.
    let events = gateway.read_events(3, Duration::from_secs(15)).await;
    assert!(
        events
            .iter()
            .all(|(key, e)| key == &tenant_id && e.tenant.to_string() == tenant_id)
    );
    // Unknown tenants are 404 on admin routes.
    let (status, _, _) = answer(
        admin(
            reqwest::Method::POST,
            "/v1/admin/tenants/ten_01h00000000000000000000000/keys".to_owned(),
        )
        .send()
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_tenant_over_its_rate_limit_gets_429_with_headers() {
    let gateway = start(TestStack::shared(), |_, _| {}).await;
    let (_, _, tenant) = answer(
        gateway
            .http
            .post(format!("{}/v1/admin/tenants", gateway.url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({"name": "small", "rate_limit": 3}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let (_, _, key) = answer(
        gateway
            .http
            .post(format!(
                "{}/v1/admin/tenants/{}/keys",
                gateway.url,
                tenant["id"].as_str().unwrap_or_default()
            ))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let key = key["key"].as_str().unwrap_or_default().to_owned();
    let send = || {
        gateway
            .http
            .post(format!("{}/v1/events", gateway.url))
            .bearer_auth(&key)
            .json(&json!({"type": "t", "source": "s"}))
            .send()
    };
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..6 {
        let response = send().await.unwrap();
        statuses.push(response.status().as_u16());
        if response.status().as_u16() == 429 {
            limited = Some(answer(response).await);
            break;
        }
    }
    let (_, headers, body) = limited.unwrap_or_else(|| panic!("never limited: {statuses:?}"));
    assert!(statuses.iter().filter(|s| **s == 202).count() >= 3, "{statuses:?}");
    assert_eq!(body["error"]["code"], "rate_limited");
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert!(header("retry-after").is_some_and(|v| v.parse::<u64>().is_ok_and(|s| s >= 1)));
    assert_eq!(header("ratelimit-limit").as_deref(), Some("3"));
    assert_eq!(header("ratelimit-remaining").as_deref(), Some("0"));
    assert!(header("ratelimit-reset").is_some());
    // Another tenant is not affected.
    let other = gateway
        .post("/v1/events")
        .json(&json!({"type": "t", "source": "s"}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .ok();
    assert_eq!(other, Some(202));
}

#[tokio::test]
async fn random_keys_are_throttled_per_address_and_known_keys_keep_working() {
    let gateway = start(TestStack::shared(), |_, config| {
        config.auth_cache_ttl = Duration::from_secs(60);
    })
    .await;
    let list = |key: &str| {
        gateway
            .http
            .get(format!("{}/v1/subscriptions", gateway.url))
            .bearer_auth(key)
            .send()
    };
    let (status, _, body) = answer(list(&gateway.key).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");

    // Well-formed random keys: each costs a lookup, until the address has
    // failed too often; then it gets 429 without one.
    let mut statuses = Vec::new();
    let mut throttled = None;
    for _ in 0..(triggers_gateway::auth::FAILURES_PER_WINDOW + 5) {
        let random = triggers_core::tenancy::generate_api_key();
        let (status, headers, body) = answer(list(&random).await.unwrap()).await;
        statuses.push(status);
        if status == 429 {
            throttled = Some((headers, body));
        }
    }
    let failures = triggers_gateway::auth::FAILURES_PER_WINDOW as usize;
    assert!(statuses[..failures].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[failures..].iter().all(|s| *s == 429), "{statuses:?}");
    let (headers, body) = throttled.expect("never throttled");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    let retry_after: u64 = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or_default();
    assert!((1..=10).contains(&retry_after), "{headers:?}");

    // The real key, known to the cache, is not evicted and still works.
    let (status, _, body) = answer(list(&gateway.key).await.unwrap()).await;
    assert_eq!(status, 200, "{body}");

    // Invented methods are one metric label, not one each.
    let invented = reqwest::Method::from_bytes(b"FROBNICATE").unwrap();
    gateway
        .http
        .request(invented, format!("{}/v1/events", gateway.url))
        .send()
        .await
        .unwrap();
    let metrics = gateway
        .http
        .get(format!("{}/metrics", gateway.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap_or_default();
    assert!(metrics.contains("method=\"other\""), "{metrics}");
    assert!(!metrics.contains("FROBNICATE"), "the invented method became a label");
}

#[tokio::test]
async fn a_tenant_has_at_most_its_share_of_subscriptions() {
    let gateway = start(TestStack::shared(), |_, config| {
        config.max_subscriptions_per_tenant = 2;
    })
    .await;
    let create = || async {
        answer(
            gateway
                .post("/v1/subscriptions")
                .body(json!({"target_url": "https://example.com/hook", "event_types": ["*"]}).to_string())
                .send()
                .await
                .unwrap(),
        )
        .await
    };
    let (status, _, first) = create().await;
    assert_eq!(status, 201, "{first}");
    let (status, _, second) = create().await;
    assert_eq!(status, 201, "{second}");
    let (status, _, refused) = create().await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (409, Some("limit_exceeded")),
        "{refused}"
    );
    // Room again after a delete.
    let id = first["id"].as_str().unwrap_or_default();
    let deleted = gateway
        .http
        .delete(format!("{}/v1/subscriptions/{id}", gateway.url))
        .bearer_auth(&gateway.key)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    let (status, _, third) = create().await;
    assert_eq!(status, 201, "{third}");
}

/// API keys are stored only as their SHA-256: the key table never holds a
/// key, so a copy of it (a backup, a leaked export) authenticates nobody.
#[tokio::test]
async fn api_keys_are_stored_only_as_hashes() {
    let gateway = start(TestStack::shared(), |_, _| {}).await;
    let (status, _, created) = answer(
        gateway
            .http
            .post(format!("{}/v1/admin/tenants/{}/keys", gateway.url, gateway.tenant))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let new_key = created["key"].as_str().unwrap().to_owned();
    let dynamo = triggers_core::dynamo::client(&gateway.common.dynamodb).await;
    let tables = triggers_core::dynamo::Tables::new(&gateway.common.dynamodb.table_prefix);
    let stored = format!(
        "{:?}",
        dynamo.scan().table_name(&tables.api_keys).send().await.unwrap().items()
    );
    for key in [&gateway.key, &new_key] {
        assert!(!stored.contains(key.as_str()), "a key is stored as it is");
        assert!(
            stored.contains(&triggers_core::tenancy::hash_api_key(key)),
            "its hash is not stored"
        );
    }
}
