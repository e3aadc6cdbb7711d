//! The developer console in a real browser: the whole local stack
//! in-process, and `tests/console/console.mjs` driving Debian's headless
//! Chromium through playwright-core (both installed by `scripts/bootstrap`).
//! Screenshots and exports land in `target/console-artifacts/`.

use std::process::Command;

use triggers_local::LocalOptions;
use triggers_stack::{free_port, repo_root};

/// A folder under the current directory, by a relative path, removed on drop.
struct RelativeDir(std::path::PathBuf);

impl Drop for RelativeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_browser_against_the_real_stack() -> Result<(), Box<dyn std::error::Error>> {
    let dir = RelativeDir(std::path::PathBuf::from(format!(
        ".tmp-console-{}",
        triggers_core::ids::RequestId::new()
    )));
    std::fs::create_dir_all(&dir.0)?;
    // Ports are picked free and bound a moment later; an outgoing connection
    // of the starting stack can take one in between (ephemeral range), so a
    // start that loses that race is tried again on new ports.
    let mut attempt = 0;
    let stack = loop {
        attempt += 1;
        let options = LocalOptions {
            kafka_port: free_port()?,
            dynamodb_port: free_port()?,
            registry_port: free_port()?,
            gateway_port: free_port()?,
            router_port: free_port()?,
            persister_port: free_port()?,
            deliverer_port: free_port()?,
            receiver_port: free_port()?,
            prometheus_port: None,
            env: Vec::new(),
            ..LocalOptions::new(dir.0.join(format!("run-{attempt}")))
        };
        let source = triggers_local::load_config(&options)?;
        match triggers_local::start(&options, &source).await {
            Ok(stack) => break stack,
            Err(e) if attempt < 3 && e.to_string().contains("Address already in use") => {
                eprintln!("start lost a port race ({e}); trying new ports");
            }
            Err(e) => return Err(e.into()),
        }
    };
    let gateway = stack.endpoints.gateway_url.clone();

    // A second tenant, to show the console keeps tenants apart.
    let http = reqwest::Client::new();
    let tenant: serde_json::Value = http
        .post(format!("{gateway}/v1/admin/tenants"))
        .bearer_auth(&stack.demo.admin_token)
        .json(&serde_json::json!({"name": "console-other"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let tenant_id = tenant["id"].as_str().ok_or("no tenant id")?;
    let key: serde_json::Value = http
        .post(format!("{gateway}/v1/admin/tenants/{tenant_id}/keys"))
        .bearer_auth(&stack.demo.admin_token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let other_key = key["key"].as_str().ok_or("no key")?;
    // A loopback port nothing listens on: the failing subscription's target.
    let dead_port = free_port()?;

    let root = repo_root();
    let script = root.join("services/local/tests/console/console.mjs");
    let artifacts = root.join("target/console-artifacts");
    let run = tokio::task::spawn_blocking({
        let (gateway, api_key, other_key) = (gateway.clone(), stack.demo.api_key.clone(), other_key.to_owned());
        move || {
            Command::new("node")
                .arg(&script)
                .env("TRIGGERS_GATEWAY_URL", gateway)
                .env("TRIGGERS_API_KEY", api_key)
                .env("TRIGGERS_OTHER_API_KEY", other_key)
                .env("TRIGGERS_DEAD_URL", format!("http://127.0.0.1:{dead_port}/hook"))
                .env("ARTIFACTS", &artifacts)
                .status()
        }
    })
    .await??;
    stack.stop().await;
    assert!(
        run.success(),
        "the browser tests failed ({run}); screenshots in target/console-artifacts/"
    );
    Ok(())
}
