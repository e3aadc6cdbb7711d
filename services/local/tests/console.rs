//! The developer console in a real browser: the whole local stack
//! in-process, and `tests/console/console.mjs` driving Debian's headless
//! Chromium through playwright-core (both installed by `scripts/bootstrap`).
//! Screenshots and exports land in `target/console-artifacts/`.

use std::process::Command;

use triggers_local::LocalOptions;
use triggers_stack::{free_port, repo_root};

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_browser_against_the_real_stack() -> Result<(), Box<dyn std::error::Error>> {
    let dir = common::RelativeDir::new("console")?;
    let stack = triggers_local::start_on_free_ports(|attempt| {
        Ok(LocalOptions::on_free_ports(dir.path().join(format!("run-{attempt}")))?)
    })
    .await?;
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
