//! The `[kafka]` section: how to reach Kafka (MSK in production, Tansu
//! locally), the librdkafka settings the guarantees rest on, and MSK IAM.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigIssue, Validate, check_range, join};

/// How to reach Kafka (MSK in production, Tansu locally).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// `client.id` prefix; the service name is appended.
    pub client_id: String,
    /// How long a produce may wait for the broker's acknowledgement before the
    /// caller is told it failed (`message.timeout.ms`).
    #[serde(with = "humantime_serde")]
    pub produce_timeout: Duration,
    /// The bound of the producer's queue (`queue.buffering.max.messages`);
    /// beyond it, produces fail at once instead of piling up memory.
    pub producer_queue_max_messages: u32,
    /// How long the producer waits to fill a batch (`linger.ms`). Every
    /// record waits up to this long before it is sent, but fewer, larger
    /// produce requests cost less CPU in every service and in the brokers,
    /// and keep the idempotent producer's five requests in flight per
    /// partition from filling while the broker is slow, when librdkafka's
    /// broker thread polls in a busy loop until one is answered. 10 ms took
    /// about half the CPU per event of 2 ms in gateway, router and
    /// deliverer at 300 events/s, and its end-to-end p95 was lower
    /// (loadtest/RESULTS.md).
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// The longest a fetch waits for data (`fetch.wait.max.ms`). Tansu answers
    /// only when it has passed, so keep it low locally.
    #[serde(with = "humantime_serde")]
    pub fetch_wait_max: Duration,
    /// Idle fetch pacing ([`crate::pacing`]): a consumer that has read
    /// nothing for `idle_after` pauses its partitions and looks again every
    /// `idle_fetch_interval`. Zero (the default) turns it off: brokers that
    /// long-poll (MSK) need none of it; the local stack turns it on for
    /// Tansu, which answers every fetch only after its full wait.
    #[serde(with = "humantime_serde")]
    pub idle_fetch_interval: Duration,
    /// How long a consumer reads nothing before pacing pauses it.
    #[serde(with = "humantime_serde")]
    pub idle_after: Duration,
    /// Consumer group session timeout (`session.timeout.ms`).
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// Static group membership (`group.instance.id`): a name for this
    /// process that survives its restarts (the pod's name on Kubernetes; the
    /// chart sets it). A consumer that crashes and comes back under the same
    /// name within `session_timeout` takes its partitions back without a
    /// rebalance of the group. Instance names are per group: every consumer
    /// group of one process uses the same one. Unset, each start is a new
    /// member.
    pub group_instance_id: Option<String>,
    /// How often stored offsets are committed (`auto.commit.interval.ms`).
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// The largest record the services produce and the topics take
    /// (`message.max.bytes` of the producers, `max.message.bytes` of the
    /// topics provisioning creates). It must exceed the gateway's
    /// `max_body_bytes` by [`RECORD_MARGIN`]: a delivery or retry record
    /// carries the whole event and a little more.
    pub max_record_bytes: usize,
    /// How often consumers in a group export their lag
    /// (`statistics.interval.ms`); zero turns it off.
    #[serde(with = "humantime_serde")]
    pub statistics_interval: Duration,
    /// Extra librdkafka settings passed through as they are, e.g.
    /// `security.protocol = "SASL_SSL"`, `sasl.mechanism = "SCRAM-SHA-512"`.
    pub extra: BTreeMap<String, String>,
    /// Authenticate to Amazon MSK with IAM (SASL/OAUTHBEARER, tokens signed
    /// with the process's AWS credentials): `[kafka.msk_iam] region = "…"`.
    pub msk_iam: Option<MskIamConfig>,
}

/// librdkafka settings the services own; `kafka.extra` may not change them,
/// because the delivery guarantees depend on them.
pub const RESERVED_KAFKA_SETTINGS: &[&str] = &[
    "enable.idempotence",
    "acks",
    "enable.auto.offset.store",
    "enable.auto.commit",
    "group.id",
    "group.instance.id",
    "bootstrap.servers",
    "message.max.bytes",
];

/// What a record derived from an event (a delivery, a retry, a dead letter)
/// may add to the event's own size: ids, attempt, times, the last error,
/// Avro framing and headers. Measured well under 4 KiB; the margin is wide.
pub const RECORD_MARGIN: usize = 64 * 1024;

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            client_id: "triggers".to_owned(),
            produce_timeout: Duration::from_secs(5),
            producer_queue_max_messages: 100_000,
            linger: Duration::from_millis(10),
            fetch_wait_max: Duration::from_millis(100),
            idle_fetch_interval: Duration::ZERO,
            idle_after: Duration::from_secs(1),
            session_timeout: Duration::from_secs(10),
            group_instance_id: None,
            commit_interval: Duration::from_secs(1),
            max_record_bytes: 2 * 1024 * 1024,
            statistics_interval: Duration::from_secs(5),
            extra: BTreeMap::new(),
            msk_iam: None,
        }
    }
}

impl Validate for KafkaConfig {
    fn validate(&self, prefix: &str, issues: &mut Vec<ConfigIssue>) {
        if let Some(name) = &self.group_instance_id
            && (name.is_empty()
                || name.len() > 249
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            issues.push(ConfigIssue::new(
                join(prefix, "group_instance_id"),
                "must be 1–249 characters of A–Z, a–z, 0–9, '.', '_', '-'",
            ));
        }
        if !(1024 * 1024..=64 * 1024 * 1024).contains(&self.max_record_bytes) {
            issues.push(ConfigIssue::new(
                join(prefix, "max_record_bytes"),
                "must be between 1 MiB and 64 MiB",
            ));
        }
        let servers: Vec<&str> = self
            .bootstrap_servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            issues.push(ConfigIssue::new(
                join(prefix, "bootstrap_servers"),
                "must list at least one host:port",
            ));
        }
        for server in servers {
            let port_ok = server
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                issues.push(ConfigIssue::new(
                    join(prefix, "bootstrap_servers"),
                    format!("`{server}` is not host:port"),
                ));
            }
        }
        if self.client_id.trim().is_empty() {
            issues.push(ConfigIssue::new(join(prefix, "client_id"), "must not be empty"));
        }
        if let Some(iam) = &self.msk_iam {
            iam.validate(&join(prefix, "msk_iam"), issues);
            for setting in ["security.protocol", "sasl.mechanism", "sasl.mechanisms"] {
                if self.extra.contains_key(setting) {
                    issues.push(ConfigIssue::new(
                        join(prefix, &format!("extra.{setting}")),
                        "is set by kafka.msk_iam; remove it",
                    ));
                }
            }
        }
        check_range(
            issues,
            prefix,
            "produce_timeout",
            self.produce_timeout,
            Duration::from_millis(100),
            Duration::from_secs(300),
        );
        if self.producer_queue_max_messages == 0 {
            issues.push(ConfigIssue::new(
                join(prefix, "producer_queue_max_messages"),
                "must be at least 1",
            ));
        }
        check_range(
            issues,
            prefix,
            "linger",
            self.linger,
            Duration::ZERO,
            Duration::from_secs(5),
        );
        check_range(
            issues,
            prefix,
            "fetch_wait_max",
            self.fetch_wait_max,
            Duration::from_millis(1),
            Duration::from_secs(10),
        );
        check_range(
            issues,
            prefix,
            "idle_fetch_interval",
            self.idle_fetch_interval,
            Duration::ZERO,
            Duration::from_secs(10),
        );
        check_range(
            issues,
            prefix,
            "idle_after",
            self.idle_after,
            Duration::from_millis(10),
            Duration::from_secs(600),
        );
        check_range(
            issues,
            prefix,
            "session_timeout",
            self.session_timeout,
            Duration::from_secs(1),
            Duration::from_secs(300),
        );
        check_range(
            issues,
            prefix,
            "commit_interval",
            self.commit_interval,
            Duration::from_millis(10),
            Duration::from_secs(60),
        );
        for key in self.extra.keys() {
            if RESERVED_KAFKA_SETTINGS.contains(&key.as_str()) {
                issues.push(ConfigIssue::new(
                    join(prefix, &format!("extra.{key}")),
                    "is managed by Triggers and may not be overridden",
                ));
            }
        }
    }
}

/// The `kafka.msk_iam` section: authenticate to MSK with IAM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MskIamConfig {
    /// The AWS region of the MSK cluster (the token is signed for it).
    pub region: String,
}

impl MskIamConfig {
    pub(crate) fn validate(&self, prefix: &str, issues: &mut Vec<ConfigIssue>) {
        let valid = !self.region.is_empty()
            && self
                .region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            issues.push(ConfigIssue::new(
                format!("{prefix}.region"),
                "must be an AWS region such as `us-east-1`",
            ));
        }
    }
}
