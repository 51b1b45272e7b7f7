//! The web dashboard (`/ui` on the API listener): server-rendered HTML (maud), live through
//! the event stream and a small script of our own (`static/app.js`); nothing is fetched from
//! elsewhere.
//!
//! Login takes an API token and keeps it in a session cookie (HttpOnly, Secure,
//! SameSite=Strict); actions are calls of the JSON API from the page, with the session's
//! CSRF token. Pages read through the same API code as everything else, so a viewer sees no
//! action buttons and the server refuses the actions anyway.

mod pages;

use crate::ops::Action;
use axum::extract::{Form, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

use crate::rest::auth::{csrf_of, session_token, Caller, SESSION_COOKIE};
use crate::rest::{Api, Problem};

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/ui", get(pages::overview))
        .route("/ui/fragment/overview", get(pages::overview_fragment))
        .route("/ui/vms/{name}", get(pages::vm_page))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/static/app.js", get(script))
        .route("/ui/static/app.css", get(style))
}

/// A dashboard visitor: the API caller, or a redirect to the login page.
pub struct Visitor {
    pub caller: Caller,
    /// The session's CSRF token (empty when the page was reached with a certificate or a
    /// bearer header, which need none).
    pub csrf: String,
    /// Some grant allows operating VMs (the server still decides each action).
    acts: bool,
}

impl Visitor {
    /// Operators and admins see action buttons.
    pub fn may_act(&self) -> bool {
        self.acts
    }
}

impl FromRequestParts<Api> for Visitor {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, api: &Api) -> Result<Visitor, Response> {
        match Caller::from_request_parts(parts, api).await {
            Ok(caller) => Ok(Visitor {
                acts: api.ops.may_ever(&caller.who, Action::VmStart),
                csrf: session_token(parts)
                    .map(|token| csrf_of(&token))
                    .unwrap_or_default(),
                caller,
            }),
            Err(problem) if problem.status == 401 => Err(Redirect::to("/ui/login").into_response()),
            Err(problem) => Err(problem.into_response()),
        }
    }
}

async fn login_page() -> Html<String> {
    Html(pages::login(None).into_string())
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(api): State<Api>,
    connection: Option<axum::Extension<crate::rest::auth::ConnectionIdentity>>,
    Form(form): Form<LoginForm>,
) -> Response {
    let token = form.token.trim().to_string();
    let from = connection.map(|c| c.peer.to_string()).unwrap_or_default();
    match api.token_name(&token, from.clone()).await {
        Ok(name) => {
            let who = paddock_model::access::Caller {
                name: format!("token:{name}"),
                credential: paddock_model::access::Credential::Session {
                    token: name.clone(),
                },
                from,
                request: String::new(),
            };
            api.ops.note_text(&who, "session.login", "", "ok").await;
            let cookie = format!(
                "{SESSION_COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=86400"
            );
            let mut response = Redirect::to("/ui").into_response();
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        Err(problem) => (
            StatusCode::UNAUTHORIZED,
            Html(pages::login(Some(&problem.detail)).into_string()),
        )
            .into_response(),
    }
}

async fn logout() -> Response {
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "paddock_session=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("static/app.js"),
    )
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("static/app.css"),
    )
}

/// A page that could not be built: the problem, on a page.
pub fn failed(problem: Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Html(pages::problem_page(&problem).into_string())).into_response()
}
