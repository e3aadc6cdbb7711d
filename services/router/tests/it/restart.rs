use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use triggers_router::RouterConfig;

use crate::support::env;

/// The router is stopped abruptly (no grace: work in flight is abandoned)
/// while events stream in, and started again: every event gets its
/// delivery (duplicates allowed, with the same delivery id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_restart_mid_stream_loses_nothing() {
    let mut env = env().await;
    let sub = env
        .subscribe(json!({"target_url": "http://hooks.test/all", "event_types": ["*"]}))
        .await;
    // Make sure the running router knows the subscription before we count on it.
    let probe = env.native_event(env.tenant, "probe", json!({}));
    env.produce_native(&probe).await;
    assert_eq!(env.routed_to(&probe.id.to_string()).await, vec![sub.clone()]);

    let total = 1_500;
    let events: Vec<_> = (0..total)
        .map(|i| env.native_event(env.tenant, "bulk.item", json!({"i": i})))
        .collect();
    let producing = async {
        for (i, event) in events.iter().enumerate() {
            env.produce_native(event).await;
            if i == total / 3 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let restarting = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    tokio::join!(producing, restarting);
    // Crash-like stop: zero grace.
    env.router_shutdown.cancel();
    env.stop_router().await;
    env.start_router(RouterConfig {
        shutdown_grace: Duration::ZERO,
        ..RouterConfig::default()
    })
    .await;

    let wanted: HashSet<String> = events.iter().map(|e| e.id.to_string()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let deliveries = env.deliveries(usize::MAX, Duration::from_secs(2)).await;
        let delivered: HashSet<String> = deliveries
            .iter()
            .filter(|(_, d)| d.event.event_type == "bulk.item")
            .map(|(_, d)| d.event.id.to_string())
            .collect();
        if delivered.is_superset(&wanted) {
            // Duplicates, if any, carry the same delivery id.
            for (_, d) in &deliveries {
                assert_eq!(
                    d.id,
                    triggers_core::ids::DeliveryId::derive(&d.event.id, &d.subscription_id)
                );
            }
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {total} events have no delivery",
            wanted.difference(&delivered).count()
        );
    }
}
