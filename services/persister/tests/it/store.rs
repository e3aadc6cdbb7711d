use std::collections::HashSet;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use rand::RngCore;
use serde_json::json;
use triggers_core::delivery::{Outcome, OutcomeKind};
use triggers_core::event::now_ms;
use triggers_core::ids::{DeliveryId, EventId, SubscriptionId};

use crate::support::{ADMIN, env};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_event_is_stored_and_pages_have_no_duplicates_or_gaps() {
    let env = env().await;
    let events: Vec<_> = (0..120)
        .map(|i| json!({"type": "burst.item", "source": "s", "data": {"i": i}}))
        .collect();
    let mut accepted = HashSet::new();
    for chunk in events.chunks(40) {
        let (status, body) = env
            .call(
                reqwest::Method::POST,
                "/v1/events/batch",
                Some(json!({"events": chunk})),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        for result in body["results"].as_array().cloned().unwrap_or_default() {
            accepted.insert(result["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    assert_eq!(accepted.len(), 120);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let stored: HashSet<String> = env.all_ids("/v1/events?type=burst.item").await.into_iter().collect();
        if stored.is_superset(&accepted) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} events missing",
            accepted.difference(&stored).count()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Paging while new events arrive: no duplicates, nothing that existed
    // before the walk is missed, newest first.
    let ingesting = async {
        for i in 0..20 {
            env.ingest(json!({"type": "burst.late", "source": "s", "data": {"i": i}}))
                .await;
        }
    };
    let (walked, ()) = tokio::join!(env.all_ids("/v1/events"), ingesting);
    let unique: HashSet<&String> = walked.iter().collect();
    assert_eq!(unique.len(), walked.len(), "duplicates in paging");
    assert!(
        accepted.iter().all(|id| unique.contains(id)),
        "a page walk missed stored events"
    );
    let mut sorted = walked.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(walked, sorted, "listing is newest first");

    // Filters: prefix type, time range.
    let prefixed = env.all_ids("/v1/events?type=burst.*").await;
    assert!(prefixed.len() >= 120);
    let future = env.all_ids("/v1/events?since=2999-01-01T00:00:00Z").await;
    assert!(future.is_empty());
    let (status, _) = env.call(reqwest::Method::GET, "/v1/events?status=nonsense", None).await;
    assert_eq!(status, 400);
    let (status, _) = env.call(reqwest::Method::GET, "/v1/events?cursor=bogus", None).await;
    assert_eq!(status, 400);
}

fn outcome(
    event: EventId,
    env: &crate::support::Env,
    sub: SubscriptionId,
    kind: OutcomeKind,
    attempt: i32,
    http: Option<i32>,
) -> Outcome {
    Outcome {
        event_id: event,
        tenant: env.tenant,
        subscription_id: Some(sub),
        delivery_id: Some(DeliveryId::derive(&event, &sub)),
        kind,
        attempt,
        at: now_ms() + i64::from(attempt),
        http_status: http,
        latency_ms: Some(12),
        error: (kind != OutcomeKind::Delivered).then(|| "HTTP 500".to_owned()),
        response_excerpt: Some("oops".to_owned()),
        subscriptions: Vec::new(),
        next_attempt_at: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_status_and_out_of_order_outcomes() {
    history_and_out_of_order(&env().await).await;
}

/// The same with every event's item created on its own (a conditional
/// `UpdateItem` each), as for a store without PartiQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_status_and_out_of_order_outcomes_created_one_by_one() {
    let mut env = env().await;
    env.stop_persister().await;
    env.start_persister_with(|persister| persister.batch_creates = false)
        .await;
    history_and_out_of_order(&env).await;
}

async fn history_and_out_of_order(env: &crate::support::Env) {
    let created = env
        .subscribe(json!({"target_url": "http://h.test/", "event_types": ["*"]}))
        .await;
    let sub: SubscriptionId = created["id"].as_str().unwrap_or_default().parse().unwrap();
    let id = env
        .ingest(json!({"type": "order.created", "source": "s", "data": {"n": 1}}))
        .await;
    let event: EventId = id.parse().unwrap();
    env.wait_event(&id, |e| e["status"] == "routed").await;

    // Attempt 1 failed, attempt 2 delivered; then a late "retrying" arrives.
    env.produce_outcome(&outcome(event, env, sub, OutcomeKind::Retrying, 1, Some(500)))
        .await;
    env.produce_outcome(&outcome(event, env, sub, OutcomeKind::Delivered, 2, Some(200)))
        .await;
    env.produce_outcome(&outcome(event, env, sub, OutcomeKind::Retrying, 1, Some(500)))
        .await;
    let body = env
        .wait_event(&id, |e| {
            e["status"] == "delivered" && e["deliveries"][0]["attempts"].as_array().is_some_and(|a| a.len() == 2)
        })
        .await;
    let delivery = &body["deliveries"][0];
    assert_eq!(delivery["subscription_id"], sub.to_string().as_str());
    assert_eq!(delivery["state"], "delivered");
    assert_eq!(delivery["attempts"][0]["http_status"], 500);
    assert_eq!(delivery["attempts"][0]["outcome"], "retrying");
    assert_eq!(delivery["attempts"][1]["http_status"], 200);
    assert_eq!(body["data"], json!({"n": 1}));
    // Still delivered a moment later: the late outcome never regressed it.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, again) = env.call(reqwest::Method::GET, &format!("/v1/events/{id}"), None).await;
    assert_eq!(again["status"], "delivered");
    // Delivered events leave the inbox; routed ones still waiting for their
    // deliveries are in it (and found by the status filter).
    let waiting = env.ingest(json!({"type": "x", "source": "s"})).await;
    env.wait_event(&waiting, |e| e["status"] == "routed").await;
    let inbox = env.all_ids("/v1/inbox").await;
    assert!(!inbox.contains(&id));
    assert!(inbox.contains(&waiting));
    assert_eq!(env.all_ids("/v1/inbox?status=routed").await, vec![waiting.clone()]);
    assert!(env.all_ids("/v1/inbox?status=unmatched").await.is_empty());
    assert!(
        env.all_ids(&format!("/v1/events?subscription_id={sub}"))
            .await
            .contains(&waiting)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mebibyte_incompressible_event_round_trips() {
    let env = env().await;
    let mut bytes = vec![0u8; 700 * 1024];
    rand::rng().fill_bytes(&mut bytes);
    // Base64 of random bytes: ~955 KB of incompressible text, under the 1 MiB body limit.
    let noise = base64_encode(&bytes);
    let id = env
        .ingest(json!({"type": "blob.uploaded", "source": "s", "data": {"blob": noise}}))
        .await;
    let body = env.wait_event(&id, |_| true).await;
    assert_eq!(body["data"]["blob"].as_str().map(str::len), Some(noise.len()));
    assert!(
        body["data"]["blob"] == noise.as_str(),
        "payload differs after the round trip"
    );
    // Listings leave large payloads out and say so.
    let (_, page) = env
        .call(reqwest::Method::GET, "/v1/events?type=blob.uploaded", None)
        .await;
    assert_eq!(page["data"][0]["data_omitted"], true);
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..chunk.len() + 1 {
            out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_acks_isolation_and_erasure() {
    let env = env().await;
    let first = env
        .ingest(json!({"type": "lead.created", "source": "crm", "payload": {"email": "a@b.c"}}))
        .await;
    let second = env.ingest(json!({"type": "lead.created", "source": "crm"})).await;
    let third = env.ingest(json!({"type": "lead.created", "source": "crm"})).await;
    for id in [&first, &second, &third] {
        env.wait_event(id, |e| e["status"] == "unmatched").await;
    }
    let inbox = env.all_ids("/v1/inbox").await;
    assert_eq!(
        inbox,
        vec![first.clone(), second.clone(), third.clone()],
        "oldest first"
    );

    // Another tenant sees none of it, on every route.
    let (_, other_key) = env.slice.tenant_with_key(Some(30)).await;
    for (method, path) in [
        (reqwest::Method::GET, format!("/v1/events/{first}")),
        (reqwest::Method::DELETE, format!("/v1/events/{first}")),
        (reqwest::Method::POST, format!("/v1/inbox/{first}/ack")),
        (reqwest::Method::POST, format!("/inbox/{first}/ack")),
    ] {
        let (status, body) = env.call_as(&other_key, method.clone(), &path, None).await;
        assert_eq!(status, 404, "{method} {path}: {body}");
    }
    let (_, others) = env.call_as(&other_key, reqwest::Method::GET, "/v1/events", None).await;
    assert_eq!(others["data"].as_array().map(Vec::len), Some(0));
    let (_, others) = env.call_as(&other_key, reqwest::Method::GET, "/inbox", None).await;
    assert_eq!(others.as_array().map(Vec::len), Some(0));
    let (_, batch) = env
        .call_as(
            &other_key,
            reqwest::Method::POST,
            "/v1/inbox/ack",
            Some(json!({"ids": [first]})),
        )
        .await;
    assert_eq!(batch["results"][0]["error"]["code"], "not_found");

    // The first client guide's inbox: a bare array with payloads.
    let (status, guide) = env.call(reqwest::Method::GET, "/inbox", None).await;
    assert_eq!(status, 200);
    assert_eq!(guide[0]["id"], first.as_str());
    assert_eq!(guide[0]["payload"], json!({"email": "a@b.c"}));
    for field in ["type", "source", "status", "created_at", "updated_at"] {
        assert!(guide[0].get(field).is_some(), "{field} missing: {}", guide[0]);
    }
    let (status, acked) = env
        .call(reqwest::Method::POST, &format!("/inbox/{first}/ack"), None)
        .await;
    assert_eq!((status, acked["status"].as_str()), (200, Some("delivered")));
    let (status, results) = env
        .call(
            reqwest::Method::POST,
            "/v1/inbox/ack",
            Some(json!({"ids": [second, triggers_core::ids::EventId::new().to_string()]})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(results["results"][0]["status"], "acknowledged");
    assert_eq!(results["results"][1]["error"]["code"], "not_found");
    // A malformed id is the request's mistake: 422 naming it, nothing acknowledged.
    let (status, refused) = env
        .call(
            reqwest::Method::POST,
            "/v1/inbox/ack",
            Some(json!({"ids": [third, "evt_nope"]})),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["field"], "ids[1]");
    assert_eq!(env.all_ids("/v1/inbox").await, vec![third.clone()]);
    let (_, acked) = env
        .call(reqwest::Method::GET, &format!("/v1/events/{first}"), None)
        .await;
    assert_eq!(acked["status"], "acknowledged");

    // Delete one event.
    let (status, _) = env
        .call(reqwest::Method::DELETE, &format!("/v1/events/{third}"), None)
        .await;
    assert_eq!(status, 204);
    let (status, _) = env
        .call(reqwest::Method::GET, &format!("/v1/events/{third}"), None)
        .await;
    assert_eq!(status, 404);

    // Erase the tenant: its data is gone from every API and from the store.
    let response = env
        .http
        .delete(format!("{}/v1/admin/tenants/{}", env.base, env.tenant))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let (status, _) = env.call(reqwest::Method::GET, "/v1/events", None).await;
    assert_eq!(status, 401, "the erased tenant's key must be gone");
    let id: EventId = first.parse().unwrap();
    let stored = triggers_core::eventstore::get(&env.dynamo, &env.tables, &env.tenant, &id)
        .await
        .unwrap();
    assert!(stored.is_none(), "an erased tenant's event is still stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persister_killed_mid_burst_loses_nothing() {
    let mut env = env().await;
    let mut accepted = HashSet::new();
    for round in 0..6 {
        let events: Vec<_> = (0..40)
            .map(|i| json!({"type": "kill.item", "source": "s", "data": {"r": round, "i": i}}))
            .collect();
        let (status, body) = env
            .call(
                reqwest::Method::POST,
                "/v1/events/batch",
                Some(json!({"events": events})),
            )
            .await;
        assert_eq!(status, 202);
        for result in body["results"].as_array().cloned().unwrap_or_default() {
            accepted.insert(result["id"].as_str().unwrap_or_default().to_owned());
        }
        if round == 2 {
            // Abrupt: no grace, writes in flight are abandoned.
            env.persister_shutdown.cancel();
            env.stop_persister().await;
            env.start_persister(Duration::ZERO).await;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let stored: HashSet<String> = env.all_ids("/v1/events?type=kill.item").await.into_iter().collect();
        if stored.is_superset(&accepted) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} events lost",
            accepted.difference(&stored).count(),
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Outcomes that arrive after their event was deleted (a retry in flight, a
/// slow deliverer) leave no attempt item or dead letter behind: a deleted
/// event keeps nothing but its tombstone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_outcomes_of_a_deleted_event_leave_nothing_behind() {
    let mut env = env().await;
    // One record at a time: once a later record of the partition shows, the
    // earlier one is done, cleanup included.
    env.stop_persister().await;
    env.start_persister_with(|persister| persister.max_in_flight = 1).await;
    let created = env
        .subscribe(json!({"target_url": "http://h.test/", "event_types": ["*"]}))
        .await;
    let sub: SubscriptionId = created["id"].as_str().unwrap_or_default().parse().unwrap();
    let doomed = env.ingest(json!({"type": "order.created", "source": "s"})).await;
    let live = env.ingest(json!({"type": "order.created", "source": "s"})).await;
    env.wait_event(&doomed, |e| e["status"] == "routed").await;
    env.wait_event(&live, |e| e["status"] == "routed").await;
    let (status, _) = env
        .call(reqwest::Method::DELETE, &format!("/v1/events/{doomed}"), None)
        .await;
    assert_eq!(status, 204);

    // A late failure and dead letter for the deleted event, then an outcome
    // of a live event behind them on the same partition.
    let doomed_id: EventId = doomed.parse().unwrap();
    env.produce_outcome_to(
        &outcome(doomed_id, &env, sub, OutcomeKind::DeadLettered, 1, Some(500)),
        Some(0),
    )
    .await;
    env.produce_outcome_to(
        &outcome(live.parse().unwrap(), &env, sub, OutcomeKind::Delivered, 1, Some(200)),
        Some(0),
    )
    .await;
    env.wait_event(&live, |e| e["status"] == "delivered").await;

    let attempts = triggers_core::eventstore::attempts(&env.dynamo, &env.tables, &env.tenant, &doomed_id)
        .await
        .unwrap();
    assert!(attempts.is_empty(), "orphan attempt items: {attempts:?}");
    let (status, letters) = env.call(reqwest::Method::GET, "/v1/dlq", None).await;
    assert_eq!(status, 200);
    assert!(
        !letters.to_string().contains(&doomed),
        "an orphan dead letter: {letters}"
    );
    let (status, _) = env
        .call(reqwest::Method::GET, &format!("/v1/events/{doomed}"), None)
        .await;
    assert_eq!(status, 404, "the deleted event came back");
}

/// An event waiting for its deliveries is held without holding the
/// consumer's slots: with four slots, twelve events whose deliveries come
/// after them are each still written once, with every outcome. (Held
/// records that kept their slots stopped the consumer at two events until
/// their hold ran out, and the rest were written before their outcomes
/// came, then again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_events_leave_the_consumer_free_to_read_their_outcomes() {
    let mut env = env().await;
    env.stop_persister().await;
    env.start_persister_with(|persister| {
        persister.max_in_flight = 4;
        persister.hold = Duration::from_secs(8);
    })
    .await;
    let created = env
        .subscribe(json!({"target_url": "http://h.test/", "event_types": ["*"]}))
        .await;
    let sub: SubscriptionId = created["id"].as_str().unwrap_or_default().parse().unwrap();
    let mut events = Vec::new();
    for n in 0..12 {
        let id = env
            .ingest(json!({"type": "order.created", "source": "s", "data": {"n": n}}))
            .await;
        events.push(id.parse::<EventId>().unwrap());
    }
    for event in &events {
        env.produce_outcome(&outcome(*event, &env, sub, OutcomeKind::Delivered, 1, Some(200)))
            .await;
    }
    for event in &events {
        let body = env.wait_event(&event.to_string(), |e| e["status"] == "delivered").await;
        assert_eq!(body["deliveries"][0]["attempts"].as_array().map(Vec::len), Some(1));
    }
    for event in &events {
        let item = env
            .dynamo
            .get_item()
            .table_name(&env.tables.events)
            .key("pk", AttributeValue::S(env.tenant.to_string()))
            .key("sk", AttributeValue::S(format!("e#{event}")))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
            .unwrap_or_else(|| panic!("no item for {event}"));
        assert_eq!(
            item.get("version"),
            Some(&AttributeValue::N("0".to_owned())),
            "{event} was written more than once"
        );
    }
}
