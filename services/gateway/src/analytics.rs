//! `GET /v1/analytics`: the caller's figures for a time range, read from the
//! counters the pipeline keeps (`triggers_core::analytics`, the analytics
//! table), never from the events themselves, so it answers in one query
//! whatever the volume.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use triggers_core::analytics::{self, Granularity};
use triggers_core::event::{now_ms, parse_rfc3339};

use crate::auth::Caller;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// The longest range answered: the analytics items' retention.
const MAX_SPAN_MS: i64 = 35 * 86_400_000;
/// The longest range answered per minute.
const MAX_MINUTE_SPAN_MS: i64 = 86_400_000;

/// The range of a report.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct AnalyticsQuery {
    /// `1h`, `24h` or `7d`, ending now (default `24h`); ignored when
    /// `since` is given.
    #[param(pattern = "^(1h|24h|7d)$")]
    pub range: Option<String>,
    /// Start (RFC 3339); rounded down to a whole bucket.
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// End (RFC 3339, default now); rounded up to a whole bucket.
    #[param(format = DateTime)]
    pub until: Option<String>,
    /// `minute` (ranges up to 24 h) or `hour`; by default minutes up to
    /// 6 h, hours beyond.
    pub granularity: Option<Granularity>,
}

/// A query parameter that does not make a range: 400, like every query
/// problem, naming the parameter.
fn query_error(name: &str, message: &str) -> ApiError {
    ApiError::BadRequest(format!("{name} {message}"))
}

/// Resolves the query to `[since, until)` and a granularity.
fn window(query: &AnalyticsQuery, now: i64) -> Result<(i64, i64, Granularity), ApiError> {
    let time =
        |name: &str, text: &str| parse_rfc3339(text).ok_or_else(|| query_error(name, "must be an RFC 3339 time"));
    let until = match &query.until {
        Some(text) => time("until", text)?,
        None => now,
    };
    let since = match (&query.since, query.range.as_deref()) {
        (Some(text), _) => time("since", text)?,
        (None, None | Some("24h")) => until - 86_400_000,
        (None, Some("1h")) => until - 3_600_000,
        (None, Some("7d")) => until - 7 * 86_400_000,
        (None, Some(_)) => return Err(query_error("range", "must be 1h, 24h or 7d")),
    };
    if since >= until {
        return Err(query_error("since", "must be before until"));
    }
    let span = until - since;
    if span > MAX_SPAN_MS {
        return Err(query_error("since", "the range may span at most 35 days"));
    }
    if since < 0 {
        return Err(query_error("since", "must be after 1970-01-01"));
    }
    let granularity = query.granularity.unwrap_or(if span <= 6 * 3_600_000 {
        Granularity::Minute
    } else {
        Granularity::Hour
    });
    if granularity == Granularity::Minute && span > MAX_MINUTE_SPAN_MS {
        return Err(query_error(
            "granularity",
            "minute is available for ranges up to 24 hours",
        ));
    }
    Ok((since, until, granularity))
}

/// The caller's figures for a range: events ingested and delivered,
/// success rate, status breakdown of the events received in the range,
/// ingest, end-to-end and attempt latency percentiles, failed attempts by
/// class, a series per minute or hour, and per-subscription figures.
/// Counted as the pipeline runs; figures trail it by a few seconds.
#[utoipa::path(
    get, path = "/v1/analytics", tag = "analytics",
    params(AnalyticsQuery),
    responses(
        (status = 200, body = analytics::Report),
        (status = 401, body = ErrorBody),
        (status = 400, body = ErrorBody),
        (status = 503, body = ErrorBody),
    ),
    security(("api_key" = []))
)]
pub async fn report(
    caller: Caller,
    query: web::Query<AnalyticsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (since, until, granularity) = window(&query, now_ms())?;
    let report = analytics::report(
        &state.dynamo,
        &state.tables.analytics,
        &caller.tenant,
        since,
        until,
        granularity,
    )
    .await
    .map_err(|e| {
        tracing::warn!(error = %e, "analytics read failed");
        ApiError::Unavailable("the analytics store is unavailable".to_owned())
    })?;
    Ok(HttpResponse::Ok().json(report))
}

#[cfg(test)]
mod tests {
    use actix_web::ResponseError;

    use super::*;

    fn query(range: Option<&str>, since: Option<&str>, granularity: Option<Granularity>) -> AnalyticsQuery {
        AnalyticsQuery {
            range: range.map(str::to_owned),
            since: since.map(str::to_owned),
            until: None,
            granularity,
        }
    }

    #[test]
    fn ranges_resolve_to_windows_and_granularities() -> Result<(), ApiError> {
        let now = 1_800_000_000_000;
        assert_eq!(
            window(&query(None, None, None), now)?,
            (now - 86_400_000, now, Granularity::Hour)
        );
        assert_eq!(
            window(&query(Some("1h"), None, None), now)?,
            (now - 3_600_000, now, Granularity::Minute)
        );
        assert_eq!(window(&query(Some("7d"), None, None), now)?.2, Granularity::Hour);
        assert_eq!(
            window(&query(Some("24h"), None, Some(Granularity::Minute)), now)?.2,
            Granularity::Minute
        );
        for bad in [
            query(Some("2h"), None, None),
            query(Some("7d"), None, Some(Granularity::Minute)),
            query(None, Some("yesterday"), None),
            query(None, Some("2020-01-01T00:00:00Z"), None),
        ] {
            let Err(e) = window(&bad, now) else {
                panic!("{bad:?} was accepted");
            };
            assert_eq!(e.status_code().as_u16(), 400, "{bad:?}");
        }
        Ok(())
    }
}
