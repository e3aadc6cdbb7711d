//! Registry errors, answered in Confluent's error shape
//! (`{"error_code": 40401, "message": "…"}`).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use rdkafka::error::KafkaError;

/// The media type of every answer, errors included.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// What went wrong with a registry request.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 40401.
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// 40402.
    #[error("Version {0} not found.")]
    VersionNotFound(String),
    /// 40403.
    #[error("Schema {0} not found")]
    SchemaNotFound(String),
    /// 409.
    #[error("Schema being registered is incompatible with an earlier schema for subject \"{subject}\": {reason}")]
    Incompatible {
        /// The subject.
        subject: String,
        /// The first incompatibility.
        reason: String,
    },
    /// 42201.
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    /// 42202.
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
    /// 42203.
    #[error("Invalid compatibility level: {0}")]
    InvalidLevel(String),
    /// 400 (malformed request body).
    #[error("Malformed request: {0}")]
    BadRequest(String),
    /// 50003: Kafka could not take or return the record.
    #[error("Error while forwarding the request to the schema log: {0}")]
    Kafka(#[from] KafkaError),
    /// 50002.
    #[error("The schema log is unavailable: {0}")]
    Unavailable(String),
    /// A client could not be built.
    #[error(transparent)]
    Client(#[from] triggers_core::kafka::ClientError),
    /// 50001: a log record could not be encoded (a defect).
    #[error("Internal error: cannot encode a log record: {0}")]
    Encode(#[from] serde_json::Error),
    /// 50001: a blocking Kafka call's task failed.
    #[error("Internal error: a Kafka call did not finish: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// The server could not bind (at start-up).
    #[error("cannot listen on {listen}: {source}")]
    Bind {
        /// The address.
        listen: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The server failed while running.
    #[error("the registry server failed: {0}")]
    Server(#[source] std::io::Error),
}

impl RegistryError {
    /// The Confluent error code.
    pub fn code(&self) -> u32 {
        match self {
            Self::SubjectNotFound(_) => 40401,
            Self::VersionNotFound(_) => 40402,
            Self::SchemaNotFound(_) => 40403,
            Self::Incompatible { .. } => 409,
            Self::InvalidSchema(_) => 42201,
            Self::InvalidVersion(_) => 42202,
            Self::InvalidLevel(_) => 42203,
            Self::BadRequest(_) => 400,
            Self::Encode(_) | Self::Join(_) | Self::Client(_) | Self::Bind { .. } | Self::Server(_) => 50001,
            Self::Unavailable(_) => 50002,
            Self::Kafka(_) => 50003,
        }
    }
}

impl ResponseError for RegistryError {
    fn status_code(&self) -> StatusCode {
        match self.code() {
            40401..=40499 => StatusCode::NOT_FOUND,
            409 => StatusCode::CONFLICT,
            42201..=42299 => StatusCode::UNPROCESSABLE_ENTITY,
            400 => StatusCode::BAD_REQUEST,
            50002 | 50003 => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if self.status_code().is_server_error() {
            tracing::error!(error = %self, "registry request failed");
        }
        HttpResponse::build(self.status_code())
            .content_type(CONTENT_TYPE)
            .body(serde_json::json!({"error_code": self.code(), "message": self.to_string()}).to_string())
    }
}
