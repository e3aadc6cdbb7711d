use serde_json::json;

use triggers_router::RouterConfig;

use crate::support::{env, order};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_follows_subscription_changes_without_restart() {
    let env = env().await;
    let orders = env
        .subscribe(json!({"target_url": "http://hooks.test/orders", "event_types": ["order.*"]}))
        .await;
    let big = env
        .subscribe(json!({
            "target_url": "http://hooks.test/big", "event_types": ["*"],
            "filter": {"field": "data.total", "gte": 100}
        }))
        .await;
    let paused = env
        .subscribe(json!({"target_url": "http://hooks.test/paused", "event_types": ["*"]}))
        .await;
    let (status, body) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/subscriptions/{paused}"),
            Some(json!({"status": "paused"})),
        )
        .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("paused")));

    // Paused gets nothing; the filter decides for `big`.
    env.eventually_routes(order(150), &[&orders, &big]).await;
    let small = env.ingest(order(5)).await;
    assert_eq!(env.routed_to(&small).await, vec![orders.clone()]);

    // A change is picked up live.
    let (status, _) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/subscriptions/{orders}"),
            Some(json!({"event_types": ["user.*"]})),
        )
        .await;
    assert_eq!(status, 200);
    env.eventually_routes(order(5), &[]).await;
    env.eventually_routes(json!({"type": "user.created", "source": "crm"}), &[&orders])
        .await;

    // Delete stops routing.
    let (status, _) = env
        .call(reqwest::Method::DELETE, &format!("/v1/subscriptions/{big}"), None)
        .await;
    assert_eq!(status, 204);
    env.eventually_routes(order(500), &[]).await;
    let (status, _) = env
        .call(reqwest::Method::GET, &format!("/v1/subscriptions/{big}"), None)
        .await;
    assert_eq!(status, 404);

    // Re-activating the paused one brings it back.
    let (status, _) = env
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/subscriptions/{paused}"),
            Some(json!({"status": "active"})),
        )
        .await;
    assert_eq!(status, 200);
    env.eventually_routes(order(1), &[&paused]).await;

    // Deliveries carry the event and are keyed by their subscription, with
    // the derived id.
    let deliveries = env.deliveries(usize::MAX, std::time::Duration::from_secs(2)).await;
    assert!(!deliveries.is_empty());
    for (key, delivery) in &deliveries {
        assert_eq!(key, &delivery.subscription_id.to_string());
        assert_eq!(
            delivery.id,
            triggers_core::ids::DeliveryId::derive(&delivery.event.id, &delivery.subscription_id)
        );
        assert_eq!(delivery.attempt, 1);
        assert_eq!(delivery.tenant, env.tenant);
    }
}

/// A subscription created, changed or deleted applies to the very next
/// event sent, without waiting for the router to learn it: the router
/// matches an event against a table as fresh as the event's acceptance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_change_applies_to_the_next_event_sent() {
    let env = env().await;
    for round in 0..4 {
        // Straight through the API: `env.subscribe` would wait for the router.
        let created = env
            .api
            .subscribe(json!({"target_url": format!("http://hooks.test/{round}"), "event_types": ["order.*"]}))
            .await;
        let id = created["id"].as_str().unwrap_or_default().to_owned();
        let sent = env.ingest(order(round)).await;
        assert_eq!(env.routed_to(&sent).await, vec![id.clone()], "round {round}: created");

        let (status, _) = env
            .call(
                reqwest::Method::PATCH,
                &format!("/v1/subscriptions/{id}"),
                Some(json!({"event_types": ["user.*"]})),
            )
            .await;
        assert_eq!(status, 200);
        let sent = env.ingest(order(round)).await;
        assert_eq!(
            env.routed_to(&sent).await,
            Vec::<String>::new(),
            "round {round}: changed"
        );
        let sent = env.ingest(json!({"type": "user.created", "source": "crm"})).await;
        assert_eq!(env.routed_to(&sent).await, vec![id.clone()], "round {round}: changed");

        let (status, _) = env
            .call(reqwest::Method::DELETE, &format!("/v1/subscriptions/{id}"), None)
            .await;
        assert_eq!(status, 204);
        let sent = env.ingest(json!({"type": "user.created", "source": "crm"})).await;
        assert_eq!(
            env.routed_to(&sent).await,
            Vec::<String>::new(),
            "round {round}: deleted"
        );
    }

    // Written by another process (a second gateway replica): nothing in
    // this one wakes the router's follower, which idle pacing has paused
    // (it looks once a second in tests); only the freshness wait finds it.
    let other: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &env.common.kafka.bootstrap_servers)
        .create()
        .unwrap();
    let topic = env.common.topics.subscriptions();
    let mut written = Vec::new();
    for round in 0..3 {
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        let subscription = elsewhere(&env, round);
        let payload = env
            .codec
            .encode(&topic, triggers_core::codec::Contract::Subscription, &subscription)
            .await
            .unwrap();
        other
            .send(
                rdkafka::producer::FutureRecord::to(&topic)
                    .key(&subscription.id.to_string())
                    .payload(&payload),
                std::time::Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("{e}"));
        written.push(subscription.id.to_string());
        written.sort();
        let sent = env.ingest(order(round)).await;
        assert_eq!(env.routed_to(&sent).await, written, "round {round}: written elsewhere");
    }
}

/// A subscription of every event type, as another gateway would write it.
fn elsewhere(env: &crate::support::Env, round: u32) -> triggers_core::subscription::Subscription {
    triggers_core::subscription::Subscription::new(
        env.tenant,
        format!("http://hooks.test/elsewhere/{round}"),
        vec!["*".to_owned()],
        "whsec_AAAA".to_owned(),
        triggers_core::event::now_ms(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscriptions_api_validates_lists_and_tests_matches() {
    let env = env().await;
    // Invalid filters and patterns are refused at create time, saying where.
    let (status, body) = env
        .call(
            reqwest::Method::POST,
            "/v1/subscriptions",
            Some(json!({"target_url": "http://h.test/", "event_types": ["a.*"],
                        "filter": {"and": [{"field": "data.x", "eq": 1}, {"field": "data.y", "gte": "many"}]}})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "filter.and[1].gte");
    for (input, field) in [
        (
            json!({"target_url": "ftp://h.test/", "event_types": ["a"]}),
            "target_url",
        ),
        (
            json!({"target_url": "http://h.test/", "event_types": []}),
            "event_types",
        ),
        (
            json!({"target_url": "http://h.test/", "event_types": ["a", "b.*.c"]}),
            "event_types[1]",
        ),
        (
            json!({"target_url": "http://h.test/", "event_types": ["a"], "batch": {"max_events": 0, "max_wait_ms": 10}}),
            "batch.max_events",
        ),
        (
            json!({"target_url": "http://h.test/", "event_types": ["a"], "colour": "red"}),
            "colour",
        ),
        (json!({"event_types": ["a"]}), "target_url"),
    ] {
        let (status, body) = env
            .call(reqwest::Method::POST, "/v1/subscriptions", Some(input.clone()))
            .await;
        assert_eq!(status, 422, "{input}: {body}");
        assert_eq!(body["error"]["field"], field, "{input}: {body}");
    }

    let id = env
        .subscribe(json!({"target_url": "http://h.test/", "event_types": ["order.*"],
                          "filter": {"field": "data.currency", "in": ["EUR", "USD"]}, "description": "EU orders"}))
        .await;
    let test_path = format!("/v1/subscriptions/{id}/test-match");
    let test = |event: serde_json::Value| env.call(reqwest::Method::POST, &test_path, Some(event));
    let (status, verdict) = test(json!({"type": "order.paid", "source": "s", "data": {"currency": "EUR"}})).await;
    assert_eq!(status, 200);
    assert_eq!(verdict["matches"], true);
    let (_, verdict) = test(json!({"type": "order.paid", "source": "s", "data": {"currency": "JPY"}})).await;
    assert_eq!(
        (
            verdict["matches"].as_bool(),
            verdict["event_type_matched"].as_bool(),
            verdict["filter_matched"].as_bool()
        ),
        (Some(false), Some(true), Some(false))
    );
    let (_, verdict) = test(json!({"type": "user.created", "source": "s", "data": {"currency": "EUR"}})).await;
    assert_eq!(verdict["event_type_matched"], false);

    // Rotation: a new secret, and the subscription keeps its id.
    let (status, rotated) = env
        .call(
            reqwest::Method::POST,
            &format!("/v1/subscriptions/{id}/rotate-secret"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(rotated["secret"].as_str().is_some_and(|s| s.starts_with("whsec_")));
    assert_eq!(rotated["id"], id.as_str());
    let (_, read) = env
        .call(reqwest::Method::GET, &format!("/v1/subscriptions/{id}"), None)
        .await;
    let secret = rotated["secret"].as_str().unwrap();
    assert!(!read.to_string().contains(secret), "GET shows the secret: {read}");

    // Listing pages with a cursor, without duplicates or gaps; GET never shows secrets.
    let mut created = vec![id.clone()];
    for i in 0..4 {
        created.push(
            env.subscribe(json!({"target_url": format!("http://h.test/{i}"), "event_types": ["*"]}))
                .await,
        );
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/subscriptions?limit=2&cursor={c}"),
            None => "/v1/subscriptions?limit=2".to_owned(),
        };
        let (status, page) = env.call(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, 200, "{page}");
        let secret = rotated["secret"].as_str().unwrap();
        assert!(!page.to_string().contains(secret), "a listing shows a secret: {page}");
        for item in page["data"].as_array().cloned().unwrap_or_default() {
            assert!(item.get("secret").is_none());
            seen.push(item["id"].as_str().unwrap_or_default().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, created);
    let (status, _) = env
        .call(reqwest::Method::GET, "/v1/subscriptions?cursor=garbage", None)
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_events_fanned_out_past_the_byte_budget_are_all_routed() {
    let mut env = env().await;
    env.stop_router().await;
    env.start_router(RouterConfig {
        max_in_flight_bytes: 1024 * 1024,
        ..RouterConfig::default()
    })
    .await;
    let mut subscriptions = Vec::new();
    for _ in 0..3 {
        subscriptions.push(
            env.subscribe(json!({"target_url": "https://example.com/hook", "event_types": ["big.*"]}))
                .await,
        );
    }
    let expected: Vec<&str> = subscriptions.iter().map(String::as_str).collect();
    env.eventually_routes(json!({"type": "big.probe", "source": "s"}), &expected)
        .await;
    // Each event's three delivery records (~1.2 MB) are over the budget on
    // their own: they are taken one event at a time, and all go out.
    let filler = "z".repeat(400 * 1024);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            env.ingest(json!({"type": "big.item", "source": "s", "data": {"i": i, "filler": filler}}))
                .await,
        );
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let deliveries = env.deliveries(usize::MAX, std::time::Duration::from_secs(2)).await;
        let routed = deliveries
            .iter()
            .filter(|(_, d)| ids.contains(&d.event.id.to_string()))
            .count();
        if routed == 15 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{routed} of 15 delivery records"
        );
    }
}
