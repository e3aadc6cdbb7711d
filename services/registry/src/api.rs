//! The Confluent Schema Registry REST subset that `schema_registry_converter`
//! and Confluent's own clients use.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use crate::compat::Level;
use crate::error::RegistryError;
use crate::log::SchemaLog;
use crate::state::{ConfigRecord, LogKey, SchemaRecord, parse};

pub use crate::error::CONTENT_TYPE;

/// How long a write waits for the log.
const LOG_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a register retries after losing a race to another instance.
const REGISTER_ATTEMPTS: usize = 8;

/// Shared by the handlers.
#[derive(Debug, Clone)]
pub struct Registry {
    /// The log-backed state.
    pub log: SchemaLog,
    /// The level when none is set.
    pub default_level: Level,
    /// Serializes this instance's writes (other instances are handled by the log).
    pub write_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// Routes of the registry API.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(root))
        .route("/schemas/types", web::get().to(schema_types))
        .route("/schemas/ids/{id}", web::get().to(schema_by_id))
        .route("/schemas/ids/{id}/schema", web::get().to(raw_schema_by_id))
        .route("/schemas/ids/{id}/versions", web::get().to(schema_usages))
        .route("/subjects", web::get().to(subjects))
        .route("/subjects/{subject}", web::post().to(lookup))
        .route("/subjects/{subject}/versions", web::get().to(versions))
        .route("/subjects/{subject}/versions", web::post().to(register))
        .route("/subjects/{subject}/versions/{version}", web::get().to(version))
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            web::get().to(raw_version),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            web::post().to(compatibility_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            web::post().to(compatibility),
        )
        .route("/config", web::get().to(get_global_config))
        .route("/config", web::put().to(put_global_config))
        .route("/config/{subject}", web::get().to(get_subject_config))
        .route("/config/{subject}", web::put().to(put_subject_config));
}

fn ok(body: serde_json::Value) -> HttpResponse {
    HttpResponse::Ok().content_type(CONTENT_TYPE).body(body.to_string())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaRequest {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<serde_json::Value>,
}

fn parse_request(body: &[u8]) -> Result<SchemaRequest, RegistryError> {
    let request: SchemaRequest = serde_json::from_slice(body)
        .map_err(|e| RegistryError::BadRequest(format!("expected {{\"schema\": \"...\"}}: {e}")))?;
    if let Some(kind) = &request.schema_type
        && !kind.eq_ignore_ascii_case("AVRO")
    {
        return Err(RegistryError::InvalidSchema(format!(
            "schema type {kind} is not supported by the dev registry (AVRO only)"
        )));
    }
    if !request.references.is_empty() {
        return Err(RegistryError::InvalidSchema(
            "schema references are not supported by the dev registry".to_owned(),
        ));
    }
    Ok(request)
}

enum VersionRef {
    Latest,
    Number(u32),
}

fn parse_version(text: &str) -> Result<VersionRef, RegistryError> {
    if text == "latest" || text == "-1" {
        return Ok(VersionRef::Latest);
    }
    match text.parse::<u32>() {
        Ok(n) if n >= 1 && n <= i32::MAX as u32 => Ok(VersionRef::Number(n)),
        _ => Err(RegistryError::InvalidVersion(text.to_owned())),
    }
}

/// The (version, id, schema text) of a subject version.
fn resolve(registry: &Registry, subject: &str, version: &str) -> Result<(u32, u32, String), RegistryError> {
    let wanted = parse_version(version)?;
    registry.log.read(|state| {
        let versions = state
            .versions(subject)
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_owned()))?;
        let found = match wanted {
            VersionRef::Latest => versions.last(),
            VersionRef::Number(n) => versions.iter().find(|v| v.version == n),
        }
        .ok_or_else(|| RegistryError::VersionNotFound(version.to_owned()))?;
        let schema = state
            .schema(found.id)
            .ok_or_else(|| RegistryError::SchemaNotFound(found.id.to_string()))?;
        Ok((found.version, found.id, schema.text.clone()))
    })
}

async fn root() -> HttpResponse {
    ok(json!({}))
}

async fn schema_types() -> HttpResponse {
    ok(json!(["AVRO"]))
}

fn schema_text(registry: &Registry, id: &str) -> Result<String, RegistryError> {
    let id: u32 = id.parse().map_err(|_| RegistryError::SchemaNotFound(id.to_owned()))?;
    registry
        .log
        .read(|state| state.schema(id).map(|s| s.text.clone()))
        .ok_or_else(|| RegistryError::SchemaNotFound(id.to_string()))
}

async fn schema_by_id(registry: web::Data<Registry>, id: web::Path<String>) -> Result<HttpResponse, RegistryError> {
    let text = schema_text(&registry, &id)?;
    Ok(ok(json!({"schema": text, "schemaType": "AVRO"})))
}

async fn raw_schema_by_id(registry: web::Data<Registry>, id: web::Path<String>) -> Result<HttpResponse, RegistryError> {
    let text = schema_text(&registry, &id)?;
    Ok(HttpResponse::Ok().content_type(CONTENT_TYPE).body(text))
}

async fn schema_usages(registry: web::Data<Registry>, id: web::Path<String>) -> Result<HttpResponse, RegistryError> {
    schema_text(&registry, &id)?;
    let id: u32 = id.parse().unwrap_or_default();
    let usages: Vec<_> = registry
        .log
        .read(|state| state.usages(id))
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    Ok(ok(json!(usages)))
}

async fn subjects(registry: web::Data<Registry>) -> HttpResponse {
    ok(json!(registry.log.read(|state| state.subjects())))
}

async fn versions(registry: web::Data<Registry>, subject: web::Path<String>) -> Result<HttpResponse, RegistryError> {
    let versions: Vec<u32> = registry
        .log
        .read(|state| state.versions(&subject).map(|v| v.iter().map(|v| v.version).collect()))
        .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))?;
    Ok(ok(json!(versions)))
}

async fn version(
    registry: web::Data<Registry>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, RegistryError> {
    let (subject, version) = path.into_inner();
    let (version, id, schema) = resolve(&registry, &subject, &version)?;
    Ok(ok(
        json!({"subject": subject, "version": version, "id": id, "schema": schema, "schemaType": "AVRO"}),
    ))
}

async fn raw_version(
    registry: web::Data<Registry>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, RegistryError> {
    let (subject, version) = path.into_inner();
    let (_, _, schema) = resolve(&registry, &subject, &version)?;
    Ok(HttpResponse::Ok().content_type(CONTENT_TYPE).body(schema))
}

/// `POST /subjects/{subject}`: is this schema registered under the subject?
async fn lookup(
    registry: web::Data<Registry>,
    subject: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, RegistryError> {
    let request = parse_request(&body)?;
    let (_, normalized) = parse(&request.schema).map_err(RegistryError::InvalidSchema)?;
    registry.log.read(|state| {
        if state.versions(&subject).is_none() {
            return Err(RegistryError::SubjectNotFound(subject.to_string()));
        }
        let found = state
            .find_in_subject(&subject, &normalized)
            .ok_or_else(|| RegistryError::SchemaNotFound("for this subject".to_owned()))?;
        let text = state.schema(found.id).map(|s| s.text.clone()).unwrap_or_default();
        Ok(ok(json!({"subject": subject.as_str(), "version": found.version, "id": found.id, "schema": text, "schemaType": "AVRO"})))
    })
}

/// `POST /subjects/{subject}/versions`: registers a schema (same schema, same id).
async fn register(
    registry: web::Data<Registry>,
    subject: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, RegistryError> {
    let request = parse_request(&body)?;
    let (parsed, normalized) = parse(&request.schema).map_err(RegistryError::InvalidSchema)?;
    // Fast path: already registered (no log round trip).
    if let Some(found) = registry.log.read(|state| state.find_in_subject(&subject, &normalized)) {
        return Ok(ok(json!({"id": found.id})));
    }
    let _guard = registry.write_lock.lock().await;
    for _ in 0..REGISTER_ATTEMPTS {
        registry.log.catch_up(LOG_TIMEOUT).await?;
        let plan = registry
            .log
            .read(|state| -> Result<Result<(u32, u32), u32>, RegistryError> {
                if let Some(found) = state.find_in_subject(&subject, &normalized) {
                    return Ok(Err(found.id));
                }
                let existing: Vec<apache_avro::Schema> = state
                    .versions(&subject)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|v| state.schema(v.id).map(|s| s.parsed.clone()))
                    .collect();
                state
                    .level(Some(&subject), registry.default_level)
                    .check(&parsed, &existing)
                    .map_err(|reason| RegistryError::Incompatible {
                        subject: subject.to_string(),
                        reason,
                    })?;
                let id = state.id_of(&normalized).unwrap_or_else(|| state.next_id());
                let version = state
                    .versions(&subject)
                    .and_then(|v| v.last())
                    .map_or(1, |v| v.version + 1);
                Ok(Ok((id, version)))
            })?;
        let (id, version) = match plan {
            Err(id) => return Ok(ok(json!({"id": id}))),
            Ok(plan) => plan,
        };
        let record = SchemaRecord {
            subject: subject.to_string(),
            version,
            id,
            schema: request.schema.clone(),
            schema_type: "AVRO".to_owned(),
        };
        let value = serde_json::to_vec(&record)?;
        let key = LogKey::Schema {
            subject: subject.to_string(),
            version,
        };
        registry.log.append(&key, Some(&value), LOG_TIMEOUT).await?;
        if let Some(found) = registry.log.read(|state| state.find_in_subject(&subject, &normalized)) {
            metrics::counter!("triggers_registry_schemas_registered_total").increment(1);
            tracing::info!(subject = %subject, id = found.id, version = found.version, "schema registered");
            return Ok(ok(json!({"id": found.id})));
        }
        // Another instance took this id or version first: plan again.
    }
    Err(RegistryError::Unavailable(
        "too many concurrent registrations; try again".to_owned(),
    ))
}

async fn compatibility_all(
    registry: web::Data<Registry>,
    subject: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, RegistryError> {
    check_compatibility(&registry, &subject, None, &body)
}

async fn compatibility(
    registry: web::Data<Registry>,
    path: web::Path<(String, String)>,
    body: web::Bytes,
) -> Result<HttpResponse, RegistryError> {
    let (subject, version) = path.into_inner();
    check_compatibility(&registry, &subject, Some(&version), &body)
}

fn check_compatibility(
    registry: &Registry,
    subject: &str,
    version: Option<&str>,
    body: &[u8],
) -> Result<HttpResponse, RegistryError> {
    let request = parse_request(body)?;
    let (parsed, _) = parse(&request.schema).map_err(RegistryError::InvalidSchema)?;
    let against: Vec<apache_avro::Schema> = match version {
        Some(version) => {
            let (_, id, _) = resolve(registry, subject, version)?;
            registry
                .log
                .read(|state| state.schema(id).map(|s| vec![s.parsed.clone()]))
                .unwrap_or_default()
        }
        None => registry.log.read(|state| {
            state
                .versions(subject)
                .unwrap_or_default()
                .iter()
                .filter_map(|v| state.schema(v.id).map(|s| s.parsed.clone()))
                .collect()
        }),
    };
    let level = registry
        .log
        .read(|state| state.level(Some(subject), registry.default_level));
    let result = level.check(&parsed, &against);
    let messages: Vec<String> = result.as_ref().err().cloned().into_iter().collect();
    Ok(ok(json!({"is_compatible": result.is_ok(), "messages": messages})))
}

async fn get_global_config(registry: web::Data<Registry>) -> HttpResponse {
    let level = registry
        .log
        .read(|state| state.global_level())
        .unwrap_or(registry.default_level);
    ok(json!({"compatibilityLevel": level.as_str()}))
}

async fn get_subject_config(
    registry: web::Data<Registry>,
    subject: web::Path<String>,
) -> Result<HttpResponse, RegistryError> {
    let level = registry
        .log
        .read(|state| state.subject_level(&subject))
        .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))?;
    Ok(ok(json!({"compatibilityLevel": level.as_str()})))
}

#[derive(Debug, Deserialize)]
struct ConfigRequest {
    compatibility: String,
}

async fn put_config(registry: &Registry, subject: Option<String>, body: &[u8]) -> Result<HttpResponse, RegistryError> {
    let request: ConfigRequest = serde_json::from_slice(body)
        .map_err(|e| RegistryError::BadRequest(format!("expected {{\"compatibility\": \"BACKWARD\"}}: {e}")))?;
    let level = Level::parse(&request.compatibility)
        .ok_or_else(|| RegistryError::InvalidLevel(request.compatibility.clone()))?;
    let value = serde_json::to_vec(&ConfigRecord {
        compatibility_level: level,
    })?;
    registry
        .log
        .append(&LogKey::Config { subject }, Some(&value), LOG_TIMEOUT)
        .await?;
    Ok(ok(json!({"compatibility": level.as_str()})))
}

async fn put_global_config(registry: web::Data<Registry>, body: web::Bytes) -> Result<HttpResponse, RegistryError> {
    put_config(&registry, None, &body).await
}

async fn put_subject_config(
    registry: web::Data<Registry>,
    subject: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, RegistryError> {
    put_config(&registry, Some(subject.into_inner()), &body).await
}
