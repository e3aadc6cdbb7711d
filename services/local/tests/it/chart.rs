//! The Helm chart's `config.toml` is configuration the services accept: for
//! every values file the chart tests render (helm/triggers/ci/*.yaml and
//! k8s/values.yaml), each service loads and validates its sections, and the
//! Kafka clients get the authentication the values chose.

use std::path::{Path, PathBuf};
use std::process::Command;

use triggers_core::config::ConfigSource;
use triggers_stack::repo_root;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The `config.toml` of the chart's ConfigMap rendered with `values`.
fn rendered_config(values: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let root = repo_root();
    let helm = root.join("tools/helm/helm");
    let output = Command::new(&helm)
        .current_dir(&root)
        .args([
            "template",
            "triggers",
            "helm/triggers",
            "--show-only",
            "templates/configmap.yaml",
            "-f",
        ])
        .arg(values)
        .output()
        .map_err(|e| format!("run {} (scripts/bootstrap installs it): {e}", helm.display()))?;
    if !output.status.success() {
        return Err(format!("helm template: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    let manifest = String::from_utf8(output.stdout)?;
    // The block scalar under `config.toml: |`, indented by four spaces.
    let mut lines = manifest.lines().skip_while(|l| l.trim() != "config.toml: |");
    lines.next().ok_or("no config.toml in the ConfigMap")?;
    let toml: Vec<&str> = lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect();
    Ok(toml.join("\n"))
}

fn values_files() -> Result<Vec<PathBuf>, Box<dyn std::error::Error>> {
    let root = repo_root();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("helm/triggers/ci"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.push(root.join("k8s/values.yaml"));
    files.sort();
    Ok(files)
}

#[test]
fn every_service_accepts_the_configuration_the_chart_renders() -> TestResult {
    let dir = tempfile::tempdir()?;
    let files = values_files()?;
    assert!(files.len() >= 5, "values files: {files:?}");
    for values in files {
        let name = values
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, rendered_config(&values)?)?;
        // The chart passes secrets as TRIGGERS_* variables; a SCRAM password
        // is one of them.
        let env = [(
            "TRIGGERS_KAFKA__EXTRA__sasl.password".to_owned(),
            "from-a-secret".to_owned(),
        )];
        let source = ConfigSource::from_parts(Some(&path), env).map_err(|e| format!("{name}: {e}"))?;
        let common = source.common().map_err(|e| format!("{name}: common sections: {e}"))?;
        let gateway = source
            .section::<triggers_gateway::GatewayConfig>("gateway")
            .map_err(|e| format!("{name}: {e}"))?;
        // Pods of about 1 vCPU: one worker thread each (docs/capacity.md),
        // not one per core of the node.
        assert_eq!((common.runtime.worker_threads, gateway.workers), (1, 1), "{name}");
        source
            .section::<triggers_router::RouterConfig>("router")
            .map_err(|e| format!("{name}: {e}"))?;
        source
            .section::<triggers_persister::PersisterConfig>("persister")
            .map_err(|e| format!("{name}: {e}"))?;
        source
            .section::<triggers_deliverer::DelivererConfig>("deliverer")
            .map_err(|e| format!("{name}: {e}"))?;
        source
            .section::<triggers_registry::RegistryServerConfig>("registry_server")
            .map_err(|e| format!("{name}: {e}"))?;

        let client = triggers_core::kafka::producer_config(&common.kafka, "gateway");
        let setting = |key: &str| client.get(key).map(str::to_owned);
        match name.as_str() {
            "msk-iam-keda-values.yaml" => {
                assert_eq!(
                    common.kafka.msk_iam.as_ref().map(|i| i.region.as_str()),
                    Some("eu-west-1")
                );
                assert_eq!(setting("sasl.mechanism").as_deref(), Some("OAUTHBEARER"), "{name}");
                assert_eq!(setting("security.protocol").as_deref(), Some("SASL_SSL"), "{name}");
                assert_eq!(common.topics.partitions, 24, "{name}");
            }
            "scram-existing-secrets-values.yaml" | "full-values.yaml" => {
                assert_eq!(setting("sasl.mechanism").as_deref(), Some("SCRAM-SHA-512"), "{name}");
                assert_eq!(setting("security.protocol").as_deref(), Some("SASL_SSL"), "{name}");
                assert_eq!(setting("sasl.username").as_deref(), Some("triggers"), "{name}");
                assert_eq!(setting("sasl.password").as_deref(), Some("from-a-secret"), "{name}");
            }
            _ => {
                assert_eq!(setting("security.protocol").as_deref(), Some("SSL"), "{name}: TLS");
                assert_eq!(setting("sasl.mechanism"), None, "{name}");
            }
        }
        // Production topics: replicated, as the values say.
        assert_eq!(
            (common.topics.replication_factor, common.topics.min_insync_replicas),
            (3, 2),
            "{name}"
        );
    }
    Ok(())
}

/// The chart keeps its own list of the librdkafka settings `kafka.extra` may
/// not change (`_helpers.tpl`); it must refuse every one the services do.
#[test]
fn the_chart_refuses_every_reserved_kafka_setting() -> TestResult {
    let root = repo_root();
    for setting in triggers_core::config::RESERVED_KAFKA_SETTINGS {
        let output = Command::new(root.join("tools/helm/helm"))
            .current_dir(&root)
            .args([
                "template",
                "triggers",
                "helm/triggers",
                "-f",
                "helm/triggers/ci/minimal-values.yaml",
            ])
            .arg("--set-string")
            .arg(format!("kafka.extra.{}=x", setting.replace('.', "\\.")))
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "the chart accepted kafka.extra.{setting}");
        assert!(
            stderr.contains(&format!("kafka.extra.{setting} is reserved")),
            "{setting}: {stderr}"
        );
    }
    Ok(())
}
