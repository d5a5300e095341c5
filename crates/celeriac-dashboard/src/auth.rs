//! Who may look and act: the token (a bearer header or the login cookie),
//! the CSRF token every action must carry, the refusal to serve a public
//! address without a token, and the security headers of every response.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Form, Json};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::DashboardError;
use crate::server::Hub;

/// The login cookie's name.
pub(crate) const COOKIE: &str = "celeriac_dashboard";

/// The header an action carries its CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-csrf-token";

/// The login form, served with 401 to a browser without credentials.
const LOGIN: &str = include_str!("../assets/login.html");

/// The dashboard's secrets, fixed for the life of the process.
#[derive(Debug)]
pub(crate) struct Auth {
    token: Option<String>,
    /// The login cookie's value: a hash of the token with a per-process
    /// salt, so the cookie never holds the token itself.
    session: String,
    /// What every action must carry in `X-CSRF-Token` (the page has it).
    csrf: String,
    /// Without a token, serve only requests naming the host by address.
    check_host: bool,
}

fn random_hex() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    pub(crate) fn new(token: Option<String>, check_host: bool) -> Self {
        let salt = random_hex();
        let session = token
            .as_ref()
            .map(|t| {
                let mut h = Sha256::new();
                h.update(b"celeriac-dashboard-session\0");
                h.update(salt.as_bytes());
                h.update(t.as_bytes());
                hex(&h.finalize())
            })
            .unwrap_or_default();
        Auth {
            token,
            session,
            csrf: random_hex(),
            check_host,
        }
    }

    pub(crate) fn has_token(&self) -> bool {
        self.token.is_some()
    }

    pub(crate) fn csrf(&self) -> &str {
        &self.csrf
    }

    fn token_is(&self, given: &str) -> bool {
        self.token
            .as_ref()
            .is_some_and(|t| same(t.as_bytes(), given.as_bytes()))
    }

    fn cookie_ok(&self, headers: &HeaderMap) -> bool {
        self.token.is_some()
            && headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|kv| kv.trim().split_once('='))
                .any(|(k, v)| k == COOKIE && same(v.as_bytes(), self.session.as_bytes()))
    }
}

/// Refuses to serve `addr` to other hosts without a token.
pub(crate) fn check_bind(
    addr: SocketAddr,
    has_token: bool,
    insecure_no_auth: bool,
) -> Result<(), DashboardError> {
    if has_token || insecure_no_auth || addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(DashboardError::PublicWithoutToken(addr))
    }
}

/// Without a token, only a request that names the host by an IP address
/// or `localhost` is served: a page from another site whose name was
/// pointed at 127.0.0.1 (DNS rebinding) names its own host and is refused.
fn host_ok(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return true;
    };
    let name = if let Some(rest) = host.strip_prefix('[') {
        return rest
            .split(']')
            .next()
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

fn unauthorized(api: bool) -> Response {
    let mut r = if api {
        (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({"error": "unauthorized"})),
        )
            .into_response()
    } else {
        (
            StatusCode::UNAUTHORIZED,
            Html(LOGIN.replace("{{error}}", "")),
        )
            .into_response()
    };
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// The layer in front of every page, asset and API call but the login
/// form: the token (when there is one), and for POSTs the CSRF token
/// unless the request authenticated with a bearer header (which a browser
/// never adds on its own).
pub(crate) async fn guard(State(hub): State<Arc<Hub>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let api = req.uri().path().starts_with("/api/");
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| hub.auth.token_is(t.trim()));
    if bearer == Some(false) {
        return unauthorized(api);
    }
    let by_bearer = bearer == Some(true);
    if hub.auth.has_token() {
        if !by_bearer && !hub.auth.cookie_ok(headers) {
            return unauthorized(api);
        }
    } else if hub.auth.check_host && !host_ok(headers) {
        return (StatusCode::FORBIDDEN, "forbidden host").into_response();
    }
    if req.method() != Method::GET && req.method() != Method::HEAD && !by_bearer {
        let csrf = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        if !csrf.is_some_and(|c| same(c.as_bytes(), hub.auth.csrf.as_bytes())) {
            return (
                StatusCode::FORBIDDEN,
                Json(serde_json::json!({"error": "missing or wrong X-CSRF-Token"})),
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// Security headers on every response: no framing, no sniffing, scripts
/// and styles from this origin only, and nothing cached.
pub(crate) async fn headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `GET /login`.
pub(crate) async fn login_page() -> Html<String> {
    Html(LOGIN.replace("{{error}}", ""))
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    token: String,
}

/// `POST /login`: the right token sets the cookie and goes to the page.
pub(crate) async fn login(State(hub): State<Arc<Hub>>, Form(form): Form<LoginForm>) -> Response {
    if !hub.auth.has_token() {
        return Redirect::to("/").into_response();
    }
    if !hub.auth.token_is(form.token.trim()) {
        tracing::warn!("dashboard: a login with a wrong token");
        return (
            StatusCode::UNAUTHORIZED,
            Html(LOGIN.replace("{{error}}", "Wrong token.")),
        )
            .into_response();
    }
    let cookie = format!(
        "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
        hub.auth.session
    );
    let mut r = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `POST /logout`: forgets the cookie.
pub(crate) async fn logout() -> Response {
    let mut r = Json(serde_json::json!({"ok": true})).into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "celeriac_dashboard=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
        ),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_is_served_without_a_token() {
        let public: SocketAddr = "0.0.0.0:5555".parse().unwrap();
        let lan: SocketAddr = "192.168.1.5:5555".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        let local6: SocketAddr = "[::1]:5555".parse().unwrap();
        assert!(matches!(
            check_bind(public, false, false),
            Err(DashboardError::PublicWithoutToken(_))
        ));
        assert!(check_bind(lan, false, false).is_err());
        assert!(check_bind(local, false, false).is_ok());
        assert!(check_bind(local6, false, false).is_ok());
        assert!(check_bind(public, true, false).is_ok());
        assert!(check_bind(public, false, true).is_ok());
    }

    #[test]
    fn the_cookie_is_not_the_token_and_hosts_are_checked() {
        let a = Auth::new(Some("tok".into()), true);
        assert!(!a.session.contains("tok") && a.session.len() == 64);
        assert!(a.token_is("tok") && !a.token_is("tok2") && !a.token_is(""));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("x=1; {COOKIE}={}", a.session)).unwrap(),
        );
        assert!(a.cookie_ok(&h));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("celeriac_dashboard=tok"),
        );
        assert!(!a.cookie_ok(&h));
        for (host, ok) in [
            ("127.0.0.1:5555", true),
            ("localhost:5555", true),
            ("[::1]:5555", true),
            ("evil.example:5555", false),
            ("evil.example", false),
        ] {
            h.insert(header::HOST, HeaderValue::from_static(host));
            assert_eq!(host_ok(&h), ok, "{host}");
        }
    }
}
