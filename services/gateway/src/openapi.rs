//! `/openapi.json` (OpenAPI 3.1, generated from the handlers' annotations)
//! and `/docs`, a self-contained reference page rendered from it.

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{analytics, api, events, live, redelivery, subscriptions};

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key (tk_…) or a token from POST /token"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The operator's admin token"))
                    .build(),
            ),
        );
    }
}

/// The answers every operation of a kind can give, added where its own
/// annotation does not list them: 401/429 for authenticated routes (no
/// or bad credentials, throttled failed authentication), 503 for every
/// route but `/health` (a store or broker down, or the replica shedding
/// load), 403 for admin routes (no admin token configured), 400/413/415/422
/// for routes with a body, 404 for routes with an id in the path.
struct StandardAnswers;

impl Modify for StandardAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in &mut openapi.paths.paths {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                add_standard_answers(path, operation);
            }
        }
    }
}

fn add_standard_answers(path: &str, operation: &mut utoipa::openapi::path::Operation) {
    use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
    let mut add = |status: &str, description: &str| {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| {
                RefOr::T(
                    ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("ErrorBody")))
                                .build(),
                        )
                        .build(),
                )
            });
    };
    let authenticated = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    if authenticated {
        add(
            "401",
            "No credentials, or an unknown, revoked or expired one (`unauthorized`)",
        );
        add(
            "429",
            "Too many failed authentications from this address (`rate_limited`)",
        );
    }
    if !crate::middleware::is_operations(path) {
        add(
            "503",
            "A dependency (Kafka, DynamoDB) is unavailable (`unavailable`), or this replica is at capacity (`overloaded`); retry after `Retry-After`",
        );
    }
    if path.starts_with("/v1/admin") {
        add(
            "403",
            "Admin routes are disabled: no admin token is configured (`forbidden`)",
        );
    }
    let has_query = operation.parameters.as_ref().is_some_and(|parameters| {
        parameters
            .iter()
            .any(|p| matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Query))
    });
    if has_query {
        add("400", "A query parameter is malformed or out of range (`bad_request`)");
    }
    if operation.request_body.is_some() {
        add(
            "400",
            "The body is not JSON or not UTF-8 (`invalid_json`, `invalid_utf8`)",
        );
        add("413", "The body is over the limit (`payload_too_large`)");
        add("415", "The content type is not accepted (`unsupported_media_type`)");
        add("422", "A field is missing or malformed (`invalid_field`)");
    }
    if path.contains('{') {
        add("404", "No such resource for this tenant (`not_found`)");
    }
}

/// The API description.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Triggers API",
        description = "One endpoint for every event source: ingest events, get them routed to matching subscriptions and delivered as signed webhooks. Errors: see docs/errors.md.",
        version = env!("CARGO_PKG_VERSION"),
    ),
    paths(
        api::ingest, api::ingest_batch, api::ingest_compat, api::token, api::health,
        api::create_tenant, api::get_tenant, api::create_key, api::list_keys, api::revoke_key, api::erase_tenant,
        events::list, events::get, events::delete, events::inbox, events::ack, events::ack_many,
        events::inbox_compat, events::ack_compat,
        subscriptions::create, subscriptions::list, subscriptions::get, subscriptions::patch,
        subscriptions::delete, subscriptions::rotate_secret, subscriptions::test_match,
        redelivery::replay, redelivery::list, redelivery::redrive,
        analytics::report, live::stream,
    ),
    modifiers(&Security, &StandardAnswers),
    tags(
        (name = "events", description = "Ingest"),
        (name = "subscriptions", description = "Where events go"),
        (name = "inbox", description = "Pull delivery"),
        (name = "dlq", description = "Dead-lettered deliveries and redrive"),
        (name = "analytics", description = "Counts and latencies per tenant and subscription"),
        (name = "auth", description = "Tokens"),
        (name = "admin", description = "Tenants and API keys (admin token)"),
        (name = "compatibility", description = "Routes of the first client guide"),
    )
)]
pub struct ApiDoc;

/// An event type pattern: `*`, an exact type or `prefix.*` (no whitespace,
/// control characters or other `*`), as `TypePattern::parse` takes it.
const TYPE_PATTERN: &str = "^(\\*|[^\\s*\\u0000-\\u001f\\u007f-\\u009f]{1,256}(\\.\\*)?)$";

/// The name of an extension attribute: 1-20 lowercase letters or digits,
/// other than the attributes with a meaning of their own.
const EXTENSION_NAME: &str = "^(?!(id|type|source|subject|time|specversion|datacontenttype|dataschema|data|payload|partition_key)$)[a-z0-9]{1,20}$";

/// The document served at `/openapi.json`: the generated one, plus the
/// rules the generator cannot state — a redrive names a subscription or ids
/// (not both), `data` and its alias `payload` are any JSON and exclusive,
/// and the live stream's events.
pub fn document() -> serde_json::Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let schemas = &mut document["components"]["schemas"];
    if let Some(redrive) = schemas.get_mut("RedriveInput").and_then(|e| e.as_object_mut()) {
        redrive.insert(
            "not".to_owned(),
            serde_json::json!({"anyOf": [
                {"required": ["subscription_id", "ids"],
                 "properties": {"subscription_id": {"type": "string"}, "ids": {"type": "array"}}},
                {"properties": {"subscription_id": {"type": "null"}, "ids": {"type": "null"}}},
            ]}),
        );
    }
    // Items of id and pattern lists, which the generator cannot annotate.
    let items = [
        ("SubscriptionInput", "event_types", TYPE_PATTERN),
        ("SubscriptionPatch", "event_types", TYPE_PATTERN),
        ("RedriveInput", "ids", "^dlv_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$"),
        ("AckMany", "ids", "^evt_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$"),
    ];
    for (schema, property, pattern) in items {
        if let Some(items) = document["components"]["schemas"][schema]["properties"][property]
            .get_mut("items")
            .and_then(|i| i.as_object_mut())
        {
            items.insert("pattern".to_owned(), serde_json::json!(pattern));
        }
    }
    // Payloads are any JSON; `data` and its alias `payload` are exclusive.
    for (schema, property) in [("EventInput", "data"), ("EventInput", "payload"), ("EventView", "data")] {
        if let Some(properties) = document["components"]["schemas"][schema]["properties"].as_object_mut()
            && let Some(description) = properties.get(property).and_then(|p| p.get("description")).cloned()
        {
            properties.insert(property.to_owned(), serde_json::json!({"description": description}));
        }
    }
    if let Some(event) = document["components"]["schemas"]["EventInput"].as_object_mut() {
        event.insert("not".to_owned(), serde_json::json!({"required": ["data", "payload"]}));
        // Extension attributes: any other name of 1-20 lowercase letters or
        // digits, with a scalar value (`dataschema` is taken and ignored).
        event.insert(
            "patternProperties".to_owned(),
            serde_json::json!({EXTENSION_NAME: {
                "type": ["string", "number", "boolean", "null"],
                "maxLength": 1024,
            }}),
        );
        event.insert("additionalProperties".to_owned(), serde_json::json!(false));
        if let Some(properties) = event.get_mut("properties").and_then(|p| p.as_object_mut()) {
            properties.insert(
                "dataschema".to_owned(),
                serde_json::json!({
                    "type": ["string", "null"],
                    "maxLength": 1024,
                    "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$",
                    "description": "Accepted and not used.",
                }),
            );
        }
    }
    // Server-sent events, as OpenAPI 3.2 describes them: each event has a
    // name and a JSON `data` — an update, `{}` on open, `{"missed": n}`
    // when the stream fell behind.
    let stream = &mut document["paths"]["/v1/stream"]["get"]["responses"]["200"]["content"]["text/event-stream"];
    if let Some(content) = stream.as_object_mut() {
        content.insert(
            "schema".to_owned(),
            serde_json::json!({
                "type": "object",
                "required": ["event", "data"],
                "properties": {
                    "event": {"type": "string", "enum": ["open", "update", "lagged"]},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {"anyOf": [
                            {"$ref": "#/components/schemas/Update"},
                            {"type": "object", "required": ["missed"], "properties": {"missed": {"type": "integer", "minimum": 0}}},
                            {"type": "object", "maxProperties": 0},
                        ]},
                    },
                },
            }),
        );
    }
    document
}

/// `GET /openapi.json`: the document, built once.
pub async fn openapi_json() -> HttpResponse {
    static DOCUMENT: std::sync::LazyLock<serde_json::Value> = std::sync::LazyLock::new(document);
    HttpResponse::Ok().json(&*DOCUMENT)
}

/// The anchor of an operation on `/docs`: `post-v1-events-id-replay`.
fn anchor(method: &str, path: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    for part in path
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|p| !p.is_empty())
    {
        id.push('-');
        id.push_str(&part.to_ascii_lowercase());
    }
    id
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The `/docs` page: every operation with its parameters, body and answers.
pub fn docs_html() -> String {
    let doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    let mut html = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Triggers API</title><style>\
body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}\
h2{border-bottom:1px solid #ddd;padding-bottom:.2em}.op{margin:1.2em 0;padding:.6em 1em;border-left:4px solid #36c;background:#f7f9fc}\
.m{font-weight:bold;text-transform:uppercase;margin-right:.5em}code{background:#eef;padding:0 .2em}td{padding:0 1em 0 0}\
</style></head><body><h1>Triggers API</h1><p>The machine-readable description is <a href=\"/openapi.json\">/openapi.json</a>.</p>",
    );
    if let Some(text) = doc.pointer("/info/description").and_then(|v| v.as_str()) {
        html.push_str(&format!("<p>{}</p>", escape(text)));
    }
    if let Some(paths) = doc.get("paths").and_then(|v| v.as_object()) {
        for (path, operations) in paths {
            let Some(operations) = operations.as_object() else {
                continue;
            };
            for (method, op) in operations {
                html.push_str(&format!(
                    "<div class=\"op\" id=\"{}\"><span class=\"m\">{}</span><code>{}</code>",
                    anchor(method, path),
                    escape(method),
                    escape(path)
                ));
                for key in ["summary", "description"] {
                    if let Some(text) = op.get(key).and_then(|v| v.as_str()) {
                        html.push_str(&format!("<p>{}</p>", escape(text)));
                    }
                }
                if let Some(params) = op.get("parameters").and_then(|v| v.as_array()) {
                    html.push_str("<p>Parameters:</p><table>");
                    for p in params {
                        html.push_str(&format!(
                            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                            escape(p["name"].as_str().unwrap_or_default()),
                            escape(p["in"].as_str().unwrap_or_default()),
                            escape(p["description"].as_str().unwrap_or_default())
                        ));
                    }
                    html.push_str("</table>");
                }
                if let Some(content) = op.pointer("/requestBody/content").and_then(|v| v.as_object()) {
                    for (media, body) in content {
                        let schema = body.pointer("/schema/$ref").and_then(|v| v.as_str()).unwrap_or("");
                        html.push_str(&format!(
                            "<p>Body ({}): <code>{}</code></p>",
                            escape(media),
                            escape(schema.rsplit('/').next().unwrap_or_default())
                        ));
                    }
                }
                if let Some(responses) = op.get("responses").and_then(|v| v.as_object()) {
                    let codes: Vec<&str> = responses.keys().map(String::as_str).collect();
                    html.push_str(&format!("<p>Answers: {}</p>", escape(&codes.join(", "))));
                }
                html.push_str("</div>");
            }
        }
    }
    if let Some(schemas) = doc.pointer("/components/schemas").and_then(|v| v.as_object()) {
        html.push_str("<h2>Schemas</h2>");
        for (name, schema) in schemas {
            html.push_str(&format!("<h3 id=\"{0}\">{0}</h3><table>", escape(name)));
            if let Some(properties) = schema.get("properties").and_then(|v| v.as_object()) {
                for (field, spec) in properties {
                    html.push_str(&format!(
                        "<tr><td><code>{}</code></td><td>{}</td></tr>",
                        escape(field),
                        escape(spec.get("description").and_then(|v| v.as_str()).unwrap_or_default())
                    ));
                }
            }
            html.push_str("</table>");
        }
    }
    html.push_str("</body></html>");
    html
}

/// `GET /docs`.
pub async fn docs() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(docs_html())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statuses(document: &serde_json::Value, method: &str, path: &str) -> Vec<String> {
        document["paths"][path][method]["responses"]
            .as_object()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn every_operation_documents_the_answers_of_its_kind() {
        let document = document();
        let create = statuses(&document, "post", "/v1/subscriptions");
        for status in ["201", "400", "401", "413", "415", "422", "429", "503"] {
            assert!(
                create.iter().any(|s| s == status),
                "POST /v1/subscriptions lacks {status}: {create:?}"
            );
        }
        let read = statuses(&document, "get", "/v1/events/{id}");
        for status in ["200", "401", "404"] {
            assert!(
                read.iter().any(|s| s == status),
                "GET /v1/events/{{id}} lacks {status}: {read:?}"
            );
        }
        assert!(
            statuses(&document, "post", "/v1/admin/tenants")
                .iter()
                .any(|s| s == "403")
        );
        assert!(
            !statuses(&document, "get", "/health").iter().any(|s| s == "401"),
            "/health is open"
        );
        // Shedding: every route but the health check may answer 503.
        assert!(!statuses(&document, "get", "/health").iter().any(|s| s == "503"));
        assert!(statuses(&document, "post", "/token").iter().any(|s| s == "503"));
        let types = &document["components"]["schemas"]["SubscriptionInput"]["properties"]["event_types"];
        assert_eq!(types["items"]["pattern"], TYPE_PATTERN);
        // The filter language is a recursive schema, not a free object.
        let parsed = serde_json::from_value::<utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>>(
            crate::subscriptions::FilterSchema::json(),
        );
        assert!(parsed.is_ok(), "{:?}", parsed.err());
        let filter = &document["components"]["schemas"]["Filter"];
        let variants = filter["oneOf"].as_array().map_or(0, Vec::len);
        assert_eq!(variants, 12, "and, or, not and nine operators: {filter}");
        assert_eq!(
            filter["oneOf"][2]["properties"]["not"]["$ref"],
            "#/components/schemas/Filter"
        );
        let within = &filter["oneOf"][5]["properties"]["in"];
        assert_eq!(
            (&within["minItems"], &within["maxItems"]),
            (&1.into(), &1000.into()),
            "{within}"
        );
        let input = &document["components"]["schemas"]["SubscriptionInput"]["properties"]["filter"];
        assert!(input.to_string().contains("#/components/schemas/Filter"), "{input}");
        // Every added answer has the error body.
        let added = &document["paths"]["/v1/events/{id}"]["get"]["responses"]["401"];
        assert_eq!(
            added["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody"
        );
    }
}
