//! The API against its own contract: the whole local stack in-process, and
//! schemathesis (installed by `scripts/bootstrap` into
//! `tools/schemathesis-venv`) generating requests from `/openapi.json` —
//! examples, coverage, fuzzing and the stateful phase, every check, bounded
//! examples and a fixed seed so the run is repeatable. Tenant routes run
//! with the demo tenant's key, admin routes with the admin token. The
//! settings, and the checks each operation is excused from with the reason,
//! are in `loadtest/contract/schemathesis.toml`; `loadtest/contract/run`
//! is the longer run with a fresh seed. Webhooks of the subscriptions it
//! creates go nowhere off this machine: the local stack's deliverer only
//! reaches loopback (`deliverer.only_allowed_networks`).

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

/// The seed of the repeatable run.
const SEED: &str = "335699917143107835883679707161948202569";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_its_contract() -> Result<(), Box<dyn std::error::Error>> {
    let root = repo_root();
    let schemathesis = root.join("tools/schemathesis-venv/bin/schemathesis");
    assert!(
        schemathesis.exists(),
        "{} is missing: run scripts/bootstrap",
        schemathesis.display()
    );
    let dir = RelativeDir(std::path::PathBuf::from(format!(
        ".tmp-contract-{}",
        triggers_core::ids::RequestId::new()
    )));
    std::fs::create_dir_all(&dir.0)?;
    // Free ports can be taken between picking and binding: a start that
    // loses that race is tried again on new ones.
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
    let document = format!("{}/openapi.json", stack.endpoints.gateway_url);
    let config = root.join("loadtest/contract/schemathesis.toml");
    let runs = [
        ("tenant routes", stack.demo.api_key.clone(), "--exclude-tag"),
        ("admin routes", stack.demo.admin_token.clone(), "--include-tag"),
    ];
    let mut failed = Vec::new();
    for (what, token, tag_filter) in runs {
        // schemathesis exits non-zero for failures (the API broke its
        // contract) and for its own errors (a generator that could not
        // draw a case, Hypothesis' "inconsistent results"). A run with
        // errors only is tried once more; failures are never retried.
        let mut tries = 0;
        loop {
            tries += 1;
            let output = tokio::task::spawn_blocking({
                let (schemathesis, config, document, token) =
                    (schemathesis.clone(), config.clone(), document.clone(), token.clone());
                move || {
                    Command::new(schemathesis)
                        .arg("--config-file")
                        .arg(config)
                        .args(["--no-color", "run", &document])
                        .args(["--header", &format!("Authorization: Bearer {token}")])
                        .args([tag_filter, "admin"])
                        .args(["--max-examples", "20", "--workers", "2", "--seed", SEED])
                        .output()
                }
            })
            .await??;
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            eprintln!("--- schemathesis, {what} (try {tries}) ---\n{text}");
            if output.status.success() {
                break;
            }
            let tool_errors_only = !text.contains("\nFailures:") && text.contains("\nErrors:");
            if !(tool_errors_only && tries < 2) {
                failed.push(what);
                break;
            }
        }
    }
    stack.stop().await;
    assert!(
        failed.is_empty(),
        "schemathesis found contract failures in: {failed:?} (reports above)"
    );
    Ok(())
}
