//! Errors as `application/problem+json` (RFC 9457): the typed rejection kind, the HTTP status
//! that kind maps to, and the message saying what to do.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use paddock_model::RejectionKind;
use serde::Serialize;
use utoipa::ToSchema;

/// A refusal or failure.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind: `urn:paddock:problem:KIND`.
    #[serde(rename = "type")]
    pub kind_uri: String,
    /// The kind in words.
    pub title: String,
    pub status: u16,
    /// What happened and what to do about it.
    pub detail: String,
    /// The kind: not_found, already_exists, failed_precondition, invalid, no_capacity,
    /// unavailable, permission_denied, unauthenticated, internal.
    pub kind: String,
}

impl Problem {
    pub fn new(kind: &str, status: StatusCode, detail: impl Into<String>) -> Problem {
        Problem {
            kind_uri: format!("urn:paddock:problem:{kind}"),
            title: status.canonical_reason().unwrap_or("error").to_string(),
            status: status.as_u16(),
            detail: detail.into(),
            kind: kind.to_string(),
        }
    }

    pub fn invalid(detail: impl Into<String>) -> Problem {
        Problem::new("invalid", StatusCode::UNPROCESSABLE_ENTITY, detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new("invalid", StatusCode::BAD_REQUEST, detail)
    }

    pub fn unauthenticated(detail: impl Into<String>) -> Problem {
        Problem::new("unauthenticated", StatusCode::UNAUTHORIZED, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new("not_found", StatusCode::NOT_FOUND, detail)
    }
}

/// The one place a [`RejectionKind`] becomes an HTTP status.
pub fn status_of(kind: RejectionKind) -> (StatusCode, &'static str) {
    match kind {
        RejectionKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        RejectionKind::AlreadyExists => (StatusCode::CONFLICT, "already_exists"),
        RejectionKind::FailedPrecondition => (StatusCode::CONFLICT, "failed_precondition"),
        RejectionKind::Invalid => (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
        RejectionKind::NoCapacity => (StatusCode::CONFLICT, "no_capacity"),
        RejectionKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        RejectionKind::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
    }
}

/// The services answer gRPC statuses (each from one [`RejectionKind`], see
/// `service::code_of`); this maps them back.
impl From<tonic::Status> for Problem {
    fn from(status: tonic::Status) -> Problem {
        use tonic::Code;
        let kind = match status.code() {
            Code::NotFound => Some(RejectionKind::NotFound),
            Code::AlreadyExists => Some(RejectionKind::AlreadyExists),
            Code::FailedPrecondition | Code::Aborted => Some(RejectionKind::FailedPrecondition),
            Code::InvalidArgument | Code::OutOfRange => Some(RejectionKind::Invalid),
            Code::ResourceExhausted => Some(RejectionKind::NoCapacity),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                Some(RejectionKind::Unavailable)
            }
            Code::PermissionDenied => Some(RejectionKind::PermissionDenied),
            Code::Unauthenticated => return Problem::unauthenticated(status.message().to_string()),
            _ => None,
        };
        match kind {
            Some(kind) => {
                let (code, name) = status_of(kind);
                Problem::new(name, code, status.message().to_string())
            }
            None => Problem::new(
                "internal",
                StatusCode::INTERNAL_SERVER_ERROR,
                status.message().to_string(),
            ),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, axum::Json(&self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        response
    }
}

impl From<axum::extract::rejection::JsonRejection> for Problem {
    fn from(rejection: axum::extract::rejection::JsonRejection) -> Problem {
        use axum::extract::rejection::JsonRejection as J;
        match rejection {
            J::MissingJsonContentType(_) => Problem::new(
                "invalid",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the body as JSON with Content-Type: application/json",
            ),
            // Well-formed JSON of the wrong shape (a string for a number, 1.5 for a count).
            J::JsonDataError(e) => Problem::invalid(format!(
                "the JSON body does not fit the operation's schema: {}",
                e.body_text()
            )),
            other => {
                Problem::bad_request(format!("the JSON body is not valid: {}", other.body_text()))
            }
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for Problem {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Problem {
        Problem::bad_request(format!(
            "the query string is not valid: {}",
            rejection.body_text()
        ))
    }
}

impl From<axum::extract::rejection::PathRejection> for Problem {
    fn from(rejection: axum::extract::rejection::PathRejection) -> Problem {
        Problem::bad_request(format!("the path is not valid: {}", rejection.body_text()))
    }
}

/// Typed extractors whose refusals are problems too.
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(Problem))]
pub struct Body<T>(pub T);

#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Problem))]
pub struct Params<T>(pub T);

#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Problem))]
pub struct Segments<T>(pub T);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_its_status() {
        assert_eq!(status_of(RejectionKind::NotFound).0, StatusCode::NOT_FOUND);
        assert_eq!(
            status_of(RejectionKind::Invalid).0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        let problem = Problem::from(tonic::Status::unavailable("no leader; retry"));
        assert_eq!(problem.status, 503);
        assert_eq!(problem.kind, "unavailable");
        assert_eq!(problem.detail, "no leader; retry");
        let problem = Problem::from(tonic::Status::permission_denied("viewer"));
        assert_eq!(problem.status, 403);
    }
}
