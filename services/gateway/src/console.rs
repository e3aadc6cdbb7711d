//! The developer console (`/console`): a single page built only on the
//! public API under the user's API key, so it has no privileges of its own.
//! Its files are embedded in the binary; `/docs/errors` and
//! `/console/errors.json` serve the error catalog (`docs/errors.md`) it
//! explains errors with.

use std::sync::LazyLock;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../console/app.js"),
    },
    Asset {
        path: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../console/app.css"),
    },
    Asset {
        path: "vendor/uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../console/vendor/uPlot.iife.min.js"),
    },
    Asset {
        path: "vendor/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../console/vendor/uPlot.min.css"),
    },
];

const INDEX: &str = include_str!("../console/index.html");
const CATALOG: &str = include_str!("../../../docs/errors.md");

/// The page may load only its own files and talk only to this gateway.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One error of the catalog.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CatalogEntry {
    /// HTTP status.
    pub status: u16,
    /// The `code` of the error body.
    pub code: String,
    /// What causes it.
    pub cause: String,
    /// What to do.
    pub fix: String,
}

/// The rows of the catalog's table.
pub fn catalog() -> &'static [CatalogEntry] {
    static ENTRIES: LazyLock<Vec<CatalogEntry>> = LazyLock::new(|| parse_catalog(CATALOG));
    &ENTRIES
}

fn parse_catalog(markdown: &str) -> Vec<CatalogEntry> {
    markdown
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().strip_prefix('|')?.strip_suffix('|')?.split(" | ").collect();
            let [status, code, cause, fix] = cells.as_slice() else {
                return None;
            };
            Some(CatalogEntry {
                status: status.trim().parse().ok()?,
                code: code.trim().trim_matches('`').to_owned(),
                cause: cause.trim().to_owned(),
                fix: fix.trim().to_owned(),
            })
        })
        .collect()
}

fn page(content_type: &'static str, body: impl actix_web::body::MessageBody + 'static) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("content-security-policy", POLICY))
        .insert_header(("x-content-type-options", "nosniff"))
        .insert_header(("referrer-policy", "no-referrer"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// `GET /console`: the page.
pub async fn index() -> HttpResponse {
    page("text/html; charset=utf-8", INDEX)
}

/// `GET /console/{file}`: the page's scripts and styles.
pub async fn asset(request: HttpRequest) -> HttpResponse {
    let path = request.match_info().get("file").unwrap_or_default();
    match ASSETS.iter().find(|a| a.path == path) {
        Some(asset) => page(asset.content_type, asset.body),
        None => HttpResponse::NotFound().finish(),
    }
}

/// `GET /console/errors.json`: the error catalog.
pub async fn errors_json() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .json(catalog())
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Inline code spans of the catalog as `<code>`.
fn inline(text: &str) -> String {
    escape(text)
        .split('`')
        .enumerate()
        .map(|(i, part)| {
            if i % 2 == 1 {
                format!("<code>{part}</code>")
            } else {
                part.to_owned()
            }
        })
        .collect()
}

/// `GET /docs/errors`: the error catalog, one anchor per code.
pub async fn errors_html() -> HttpResponse {
    let mut html = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Triggers errors</title>\
<meta name=\"viewport\" content=\"width=device-width\"><style>body{font-family:system-ui,sans-serif;max-width:960px;\
margin:2em auto;padding:0 1em;color:#222}section{margin:1em 0;padding:.5em 1em;border-left:4px solid #c33;\
background:#fbf7f7}code{background:#eee;padding:0 .2em}</style></head><body><h1>Error catalog</h1>\
<p>Every error answers <code>{\"error\": {\"code\", \"message\", \"request_id\"}}</code> with its status. \
The API reference is at <a href=\"/docs\">/docs</a>.</p>",
    );
    for entry in catalog() {
        html.push_str(&format!(
            "<section id=\"{code}\"><h2>{status} <code>{code}</code></h2><p><b>Cause.</b> {cause}</p><p><b>Fix.</b> {fix}</p></section>",
            code = escape(&entry.code),
            status = entry.status,
            cause = inline(&entry.cause),
            fix = inline(&entry.fix),
        ));
    }
    html.push_str("</body></html>");
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(html)
}

/// Registers the console's routes (compressed).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/docs/errors", web::get().to(errors_html)).service(
        web::scope("/console")
            .wrap(actix_web::middleware::Compress::default())
            .route("", web::get().to(index))
            .route("/", web::get().to(index))
            .route("/errors.json", web::get().to(errors_json))
            .route("/{file:.+}", web::get().to(asset)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_has_every_code_the_api_answers() {
        let codes: Vec<&str> = catalog().iter().map(|e| e.code.as_str()).collect();
        for code in [
            "invalid_json",
            "unauthorized",
            "not_found",
            "payload_too_large",
            "invalid_field",
            "rate_limited",
            "unavailable",
        ] {
            assert!(codes.contains(&code), "{code} missing from {codes:?}");
        }
        let rate_limited = catalog().iter().find(|e| e.code == "rate_limited");
        assert_eq!(rate_limited.map(|e| e.status), Some(429));
    }

    #[test]
    fn every_asset_the_page_names_is_embedded() {
        for asset in ASSETS {
            assert!(
                INDEX.contains(&format!("/console/{}", asset.path)),
                "{} unused",
                asset.path
            );
        }
    }
}
