//! The page and its files, compiled into the binary: nothing is fetched
//! from elsewhere at run time. uPlot (MIT, its license beside it in
//! `assets/vendor/uplot/`) draws the charts.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use crate::server::Hub;

const INDEX: &str = include_str!("../assets/index.html");

/// `(name, content type, body)` of each file under `/static/`.
const FILES: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../assets/app.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("../assets/vendor/uplot/uPlot.min.css"),
    ),
    (
        "uPlot-LICENSE.txt",
        "text/plain; charset=utf-8",
        include_str!("../assets/vendor/uplot/LICENSE"),
    ),
];

/// `GET /`: the page, with this process's CSRF token for its actions.
pub(crate) async fn index(State(hub): State<Arc<Hub>>) -> Html<String> {
    Html(INDEX.replace("{{csrf}}", hub.auth.csrf()))
}

/// `GET /static/{file}`.
pub(crate) async fn file(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, body)) => ([(header::CONTENT_TYPE, *kind)], *body).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
