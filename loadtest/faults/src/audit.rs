//! The accounting: an accepted event is done when the endpoint got it and
//! `GET /v1/events/{id}` shows it `delivered`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::load::Entry;
use crate::receiver::Receiver;

/// What is left of a set of events at a deadline.
#[derive(Debug, Default)]
pub struct Unsettled {
    /// Never delivered to the endpoint.
    pub undelivered: Vec<String>,
    /// Delivered but not (yet) stored as `delivered`, with what the API said.
    pub unstored: Vec<(String, String)>,
}

impl Unsettled {
    /// Whether every event is done.
    pub fn is_empty(&self) -> bool {
        self.undelivered.is_empty() && self.unstored.is_empty()
    }

    /// A line for the report: counts and a few ids.
    pub fn describe(&self) -> String {
        let few = |ids: Vec<String>| ids.into_iter().take(5).collect::<Vec<_>>().join(", ");
        let mut statuses = BTreeMap::<&str, usize>::new();
        for (_, status) in &self.unstored {
            *statuses.entry(status.as_str()).or_default() += 1;
        }
        format!(
            "{} undelivered ({}); {} not stored as delivered {:?} ({})",
            self.undelivered.len(),
            few(self.undelivered.clone()),
            self.unstored.len(),
            statuses,
            few(self.unstored.iter().map(|(id, _)| id.clone()).collect()),
        )
    }
}

/// Reads events back through the gateway.
#[derive(Debug, Clone)]
pub struct Auditor {
    http: reqwest::Client,
    base: String,
    auth: String,
}

impl Auditor {
    /// An auditor for the tenant of `api_key` at `base` (`http://host:port`).
    pub fn new(base: String, api_key: &str) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
            base,
            auth: format!("Bearer {api_key}"),
        })
    }

    /// The event's stored status (`None`: not stored yet, or no answer).
    async fn status(&self, id: &str) -> Option<String> {
        let response = self
            .http
            .get(format!("{}/v1/events/{id}", self.base))
            .header("authorization", &self.auth)
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return Some(format!("http {}", response.status().as_u16()));
        }
        let body: serde_json::Value = response.json().await.ok()?;
        body.get("status").and_then(|s| s.as_str()).map(str::to_owned)
    }

    /// Ids of the events stored as `delivered`, page by page (1,000 an
    /// answer: far cheaper for DynamoDB Local than one read per event);
    /// `None` when a page cannot be read.
    async fn delivered(&self) -> Option<std::collections::HashSet<String>> {
        let mut ids = std::collections::HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut request = self
                .http
                .get(format!("{}/v1/events", self.base))
                .header("authorization", &self.auth)
                .query(&[("status", "delivered"), ("limit", "1000")]);
            if let Some(cursor) = &cursor {
                request = request.query(&[("cursor", cursor)]);
            }
            let response = request.send().await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            let page: serde_json::Value = response.json().await.ok()?;
            for event in page.get("data")?.as_array()? {
                if let Some(id) = event.get("id").and_then(|id| id.as_str()) {
                    ids.insert(id.to_owned());
                }
            }
            match page.get("next_cursor").and_then(|c| c.as_str()) {
                Some(next) => cursor = Some(next.to_owned()),
                None => return Some(ids),
            }
        }
    }

    /// Waits until every entry is delivered and stored as `delivered`, or
    /// `deadline`; what is left then. Statuses are read in chunks so a pass
    /// over a large ledger stops at the deadline, and the endpoint's record
    /// is looked at once more before giving up (an event delivered while a
    /// long pass ran is not reported undelivered).
    pub async fn settle(&self, receiver: &Receiver, entries: &[Entry], deadline: Instant) -> Unsettled {
        const CHUNK: usize = 512;
        let mut undelivered: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        let mut unstored: Vec<(String, String)> = Vec::new();
        loop {
            move_delivered(receiver, &mut undelivered, &mut unstored);
            let mut left = Vec::new();
            let mut pending = std::mem::take(&mut unstored);
            // Many to confirm: list what is stored as delivered first, then
            // read the rest one by one.
            if pending.len() > CHUNK
                && let Some(stored) = self.delivered().await
            {
                pending.retain(|(id, _)| !stored.contains(id));
            }
            while !pending.is_empty() {
                if Instant::now() >= deadline {
                    // Not read this time: still unconfirmed.
                    left.append(&mut pending);
                    break;
                }
                let rest = pending.split_off(pending.len().min(CHUNK));
                let statuses: Vec<(String, Option<String>)> = futures::stream::iter(pending)
                    .map(|(id, _)| async move {
                        let status = self.status(&id).await;
                        (id, status)
                    })
                    .buffer_unordered(16)
                    .collect()
                    .await;
                left.extend(
                    statuses
                        .into_iter()
                        .filter(|(_, status)| status.as_deref() != Some("delivered"))
                        .map(|(id, status)| (id, status.unwrap_or_else(|| "no answer".to_owned()))),
                );
                pending = rest;
            }
            unstored = left;
            if undelivered.is_empty() && unstored.is_empty() {
                return Unsettled { undelivered, unstored };
            }
            if Instant::now() >= deadline {
                // A last look at the endpoint: delivered meanwhile counts as
                // delivered (and, unread, as not yet stored).
                move_delivered(receiver, &mut undelivered, &mut unstored);
                return Unsettled { undelivered, unstored };
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Moves the events the endpoint has received from `undelivered` to
/// `unstored` (status not read yet).
fn move_delivered(receiver: &Receiver, undelivered: &mut Vec<String>, unstored: &mut Vec<(String, String)>) {
    let delivered: Vec<String>;
    (delivered, *undelivered) = std::mem::take(undelivered)
        .into_iter()
        .partition(|id| receiver.seen(id).is_some());
    unstored.extend(delivered.into_iter().map(|id| (id, String::from("unread"))));
}
