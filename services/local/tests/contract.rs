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
use triggers_stack::repo_root;

mod common;

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
    let dir = common::RelativeDir::new("contract")?;
    let stack = triggers_local::start_on_free_ports(|attempt| {
        Ok(LocalOptions::on_free_ports(dir.path().join(format!("run-{attempt}")))?)
    })
    .await?;
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
        // errors only is tried up to twice more; failures are never retried.
        // One worker: with two threads, CPython 3.11's AST constructor
        // (Hypothesis parses source to describe strategies) races and
        // raises "AST constructor recursion depth mismatch" (cpython
        // gh-106905), which failed whole runs as schemathesis Runtime Errors.
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
                        .args(["--max-examples", "20", "--workers", "1", "--seed", SEED])
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
            if !(tool_errors_only && tries < 3) {
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
