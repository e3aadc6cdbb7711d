//! Starts the real local components of a Triggers stack: Tansu (Kafka API)
//! and DynamoDB Local, on chosen or free ports, as child processes.
//!
//! Used by the local runner and by every integration-test binary
//! ([`TestStack::shared`] starts one stack per test binary and hands each
//! test a unique namespace for its topics and tables).
//!
//! Each child runs under a tiny `sh` watchdog that reads our end of a pipe:
//! when this process exits, however abruptly, the pipe closes and the
//! watchdog stops the child, so no broker outlives its test run. Children
//! get their own process group, so a Ctrl-C in the terminal reaches the
//! services first and the broker only when the runner stops it, after the
//! services have stored their offsets.
#![forbid(unsafe_code)]

mod process;
mod test_stack;
mod tools;
pub mod topics;

pub use process::{
    ChildProcess, StackError, ThreadUse, free_port, group_cpu, group_rss, group_threads, thread_kind, wait_for_port,
};
pub use test_stack::TestStack;
pub use tools::{Tools, repo_root};

use std::path::Path;
use std::time::Duration;

/// Starts Tansu on `port` with SQLite storage in `data_dir`.
pub fn start_tansu(tools: &Tools, data_dir: &Path, port: u16, log: &Path) -> Result<ChildProcess, StackError> {
    std::fs::create_dir_all(data_dir).map_err(|e| StackError::io("create Tansu data dir", e))?;
    let data_dir = &std::path::absolute(data_dir).map_err(|e| StackError::io("resolve Tansu data dir", e))?;
    let url = format!("tcp://127.0.0.1:{port}");
    let mut child = ChildProcess::spawn(
        "tansu",
        &tools.tansu,
        &[
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "sqlite://tansu.db",
            "--cluster-id",
            "triggers-local",
        ],
        data_dir,
        log,
    )?;
    wait_for_port("tansu", port, Duration::from_secs(60), &mut child)?;
    index_headers(tools, &data_dir.join("tansu.db"))?;
    Ok(child)
}

/// Tansu 0.6.0's SQLite schema has no index on `header (topition,
/// offset_id)`, and its fetch looks up the headers of every record it
/// returns: each lookup scans every header ever stored. Records with
/// headers (trace context) then make each fetch slower than the last; within
/// a minute at a few hundred records/s the broker's single storage task is
/// busy scanning, produce requests wait seconds, librdkafka's idempotent
/// producers time out and bump their epoch, and Tansu panics on the unknown
/// epoch ("more or less than one row") and stops serving. The index makes
/// each lookup a search. Tansu creates its tables before it listens, and the
/// statement is idempotent (restarts, existing data).
fn index_headers(tools: &Tools, db: &Path) -> Result<(), StackError> {
    const INDEX: &str = "create index if not exists header_topition_offset on header (topition, offset_id);";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let output = std::process::Command::new(&tools.sqlite3)
            .arg("-bail")
            .arg("-cmd")
            .arg(".timeout 5000")
            .arg(db)
            .arg(INDEX)
            .output()
            .map_err(|e| StackError::io("run sqlite3", e))?;
        if output.status.success() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(StackError::Failed {
                what: format!("indexing Tansu's headers in {}", db.display()),
                detail: format!("{}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim()),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts DynamoDB Local on `port` with its data in `data_dir`.
pub fn start_dynamodb_local(tools: &Tools, data_dir: &Path, port: u16, log: &Path) -> Result<ChildProcess, StackError> {
    std::fs::create_dir_all(data_dir).map_err(|e| StackError::io("create DynamoDB Local data dir", e))?;
    // The process runs in `data_dir`: a relative -dbPath would not resolve.
    let data_dir = &std::path::absolute(data_dir).map_err(|e| StackError::io("resolve DynamoDB Local data dir", e))?;
    let lib = tools.dynamodb_local.join("DynamoDBLocal_lib");
    let jar = tools.dynamodb_local.join("DynamoDBLocal.jar");
    let data = data_dir.display().to_string();
    let (library, jar, port_text) = (
        format!("-Djava.library.path={}", lib.display()),
        jar.display().to_string(),
        port.to_string(),
    );
    let mut args = vec!["-Xmx1g", &library, "-jar", &jar, "-port", &port_text];
    // `TRIGGERS_DYNAMODB_LOCAL_IN_MEMORY=1` keeps nothing on disk (benchmarks
    // that want DynamoDB Local's own storage out of the measurement).
    if std::env::var("TRIGGERS_DYNAMODB_LOCAL_IN_MEMORY").is_ok_and(|v| v == "1") {
        args.push("-inMemory");
    } else {
        args.extend(["-dbPath", data.as_str()]);
    }
    args.extend(["-sharedDb", "-disableTelemetry"]);
    let mut child = ChildProcess::spawn("dynamodb-local", &tools.java, &args, data_dir, log)?;
    wait_for_port("dynamodb-local", port, Duration::from_secs(60), &mut child)?;
    process::wait_for_http_answer("dynamodb-local", port, Duration::from_secs(60))?;
    Ok(child)
}

/// Asserts that a service at `base` (`http://host:port`) answers the
/// operations endpoints every Triggers service must have: `/healthz` 200,
/// `/readyz` 200 with every check `ok`, `/metrics` 200 in Prometheus text
/// with the build info metric.
///
/// # Panics
/// When an endpoint is missing or wrong (a test assertion).
pub async fn assert_ops_endpoints(base: &str) {
    let client = reqwest::Client::new();
    let get = |path: &str| {
        let url = format!("{base}{path}");
        let client = client.clone();
        async move {
            match client.get(&url).send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let content_type = response
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    (status, content_type, response.text().await.unwrap_or_default())
                }
                Err(e) => panic!("GET {url}: {e}"),
            }
        }
    };
    let (status, _, body) = get("/healthz").await;
    assert_eq!(status, 200, "{base}/healthz: {body}");
    let (status, _, body) = get("/readyz").await;
    assert_eq!(status, 200, "{base}/readyz: {body}");
    assert!(body.contains("\"ready\""), "{base}/readyz: {body}");
    let (status, content_type, body) = get("/metrics").await;
    assert_eq!(status, 200, "{base}/metrics: {body}");
    assert!(
        content_type.starts_with("text/plain"),
        "{base}/metrics content type {content_type}"
    );
    assert!(
        body.contains("triggers_build_info"),
        "{base}/metrics lacks triggers_build_info:\n{body}"
    );
}

/// Starts a real Prometheus (Debian's `prometheus`, installed by the
/// bootstrap) on `port`, scraping every `(job, base URL)` target's
/// `/metrics` each `scrape_interval`, with its data in `data_dir`. Jobs are
/// named `triggers-<job>`, as `docs/operations.md` and the alert rules
/// expect; the rules of `observability/prometheus/alerts.yml` are loaded.
pub fn start_prometheus(
    data_dir: &Path,
    port: u16,
    targets: &[(&str, String)],
    scrape_interval: Duration,
    log: &Path,
) -> Result<ChildProcess, StackError> {
    let program = which("prometheus").ok_or_else(|| StackError::Missing {
        what: "prometheus".to_owned(),
        hint: "run scripts/bootstrap (it installs Debian's prometheus package)".to_owned(),
    })?;
    std::fs::create_dir_all(data_dir).map_err(|e| StackError::io("create Prometheus data dir", e))?;
    let data_dir = std::path::absolute(data_dir).map_err(|e| StackError::io("resolve Prometheus data dir", e))?;
    let rules = tools::repo_root().join("observability/prometheus/alerts.yml");
    let mut config = format!(
        "global:\n  scrape_interval: {}ms\n  evaluation_interval: {}ms\nrule_files:\n  - {}\nscrape_configs:\n",
        scrape_interval.as_millis(),
        scrape_interval.as_millis(),
        rules.display()
    );
    for (job, url) in targets {
        let host = url
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/');
        config.push_str(&format!(
            "  - job_name: triggers-{job}\n    static_configs:\n      - targets: ['{host}']\n"
        ));
    }
    let config_file = data_dir.join("prometheus.yml");
    std::fs::write(&config_file, config).map_err(|e| StackError::io("write prometheus.yml", e))?;
    let config_arg = format!("--config.file={}", config_file.display());
    let storage_arg = format!("--storage.tsdb.path={}", data_dir.join("data").display());
    let listen_arg = format!("--web.listen-address=127.0.0.1:{port}");
    let mut child = ChildProcess::spawn(
        "prometheus",
        &program,
        &[&config_arg, &storage_arg, &listen_arg],
        &data_dir,
        log,
    )?;
    wait_for_port("prometheus", port, Duration::from_secs(30), &mut child)?;
    Ok(child)
}

/// `program` on the `PATH`, if it is there.
fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}
