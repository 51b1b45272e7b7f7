//! The web dashboard (`/ui`).

use axum::Router;

use crate::rest::Api;

pub fn routes() -> Router<Api> {
    Router::new()
}
