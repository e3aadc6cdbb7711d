//! Request extractors that need the gateway's state: the authenticated
//! [`Caller`] and the [`Admin`]. Kept apart from [`crate::auth`] so the
//! authenticator does not depend on the state that holds it.

use actix_web::{FromRequest, HttpRequest, web};
use futures::future::LocalBoxFuture;

use crate::auth::{Admin, Caller, authorization, client_address};
use crate::error::ApiError;
use crate::state::AppState;

/// The caller of `request` (its `Authorization` header, from its client
/// address), for handlers that authenticate inside their own span.
pub async fn caller_of(state: &AppState, request: &HttpRequest) -> Result<Caller, ApiError> {
    let client = client_address(request, state.config.trust_forwarded_for);
    state.auth.authenticate(authorization(request).as_deref(), client).await
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let state = request.app_data::<web::Data<AppState>>().cloned();
        let header = authorization(request);
        let client = state
            .as_ref()
            .and_then(|state| client_address(request, state.config.trust_forwarded_for));
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::Unavailable("gateway state missing".to_owned()))?;
            state.auth.authenticate(header.as_deref(), client).await
        })
    }
}

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(request: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let result = match request.app_data::<web::Data<AppState>>() {
            Some(state) => state
                .auth
                .check_admin(authorization(request).as_deref())
                .map(|()| Admin),
            None => Err(ApiError::Unavailable("gateway state missing".to_owned())),
        };
        std::future::ready(result)
    }
}
