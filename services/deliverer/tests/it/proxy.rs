//! Webhook requests ignore proxy settings from the environment: a proxy
//! would connect on the SSRF guard's behalf. Environment variables are
//! process-wide, so the request is made by a child process (this test
//! binary, running the ignored `child_posts_with_proxy_variables_set`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::Receiver;

const TARGET: &str = "TRIGGERS_TEST_PROXY_TARGET";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_requests_ignore_proxy_variables() {
    // A "proxy" that only counts who connects to it.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    {
        let connections = connections.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = proxy.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
    }
    let receiver = Receiver::default();
    let target = receiver.start();
    let exe = std::env::current_exe().unwrap();
    let child = tokio::process::Command::new(exe)
        .args(["--ignored", "--exact", "proxy::child_posts_with_proxy_variables_set"])
        .env(TARGET, &target)
        .env("HTTP_PROXY", &proxy_url)
        .env("http_proxy", &proxy_url)
        .env("HTTPS_PROXY", &proxy_url)
        .env("ALL_PROXY", &proxy_url)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .unwrap_or_else(|_| panic!("the child test hung"))
        .unwrap();
    assert!(
        output.status.success(),
        "the child's request failed:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert_eq!(receiver.count(), 1, "the webhook did not reach its target directly");
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the webhook went through the proxy"
    );
}

/// Run by [`webhook_requests_ignore_proxy_variables`] in a child process.
#[tokio::test]
#[ignore = "run in a child process by webhook_requests_ignore_proxy_variables"]
async fn child_posts_with_proxy_variables_set() {
    let target = std::env::var(TARGET).unwrap_or_else(|e| panic!("{TARGET}: {e}"));
    let config = triggers_deliverer::DelivererConfig {
        allow_networks: vec!["127.0.0.0/8".to_owned()],
        ..Default::default()
    };
    let allow = triggers_deliverer::ssrf::AllowList::parse(&config.allow_networks).unwrap();
    let client = triggers_deliverer::webhook_client(&config, &allow).unwrap();
    let response = client.post(&target).body("{}").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

/// A webhook endpoint answering a redirect does not send the request on:
/// the redirect's target (here a private address the allow-list opens, in
/// production anything) never hears from the deliverer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let elsewhere = Receiver::default();
    let elsewhere_url = elsewhere.start();
    let redirecting = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let redirecting_url = format!("http://{}/hook", redirecting.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = redirecting.accept().await {
            let location = elsewhere_url.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut request = vec![0u8; 4096];
                let _ = socket.read(&mut request).await;
                let answer = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    let config = triggers_deliverer::DelivererConfig {
        allow_networks: vec!["127.0.0.0/8".to_owned()],
        ..Default::default()
    };
    let allow = triggers_deliverer::ssrf::AllowList::parse(&config.allow_networks).unwrap();
    let client = triggers_deliverer::webhook_client(&config, &allow).unwrap();
    let response = client.post(&redirecting_url).body("{}").send().await.unwrap();
    // Followed, the answer would be the other endpoint's.
    assert_eq!(response.status().as_u16(), 307, "the redirect is the answer");
    assert_eq!(elsewhere.count(), 0, "the redirect was followed");
}
