//! The reservation portal: one web page served by the controller (HTML, CSS and JS
//! embedded in the binary; no CDN, no build step). It signs in with a token, shows each
//! site's capacity, use and reservations over time as SVG charts, takes reservation
//! requests, and lists the user's reservations and clusters. It uses only the public REST
//! API, with the same token and the same rules as the CLI.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::App;

const INDEX: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");
const FAVICON: &str = include_str!("favicon.svg");

pub fn router() -> Router<App> {
    Router::new()
        .route(
            "/",
            get(|| async { page(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/portal",
            get(|| async { page(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/portal/app.js",
            get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/portal/style.css",
            get(|| async { page(STYLE, "text/css; charset=utf-8") }),
        )
        // The page links its icon; `/favicon.ico` answers too, for browsers and tools
        // that ask there first (a 404 is a console error in every browser).
        .route(
            "/portal/favicon.svg",
            get(|| async { page(FAVICON, "image/svg+xml") }),
        )
        .route(
            "/favicon.ico",
            get(|| async { page(FAVICON, "image/svg+xml") }),
        )
}

fn page(body: &'static str, content_type: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            // Only our own scripts and styles; the page talks only to this controller.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'",
            ),
        ],
        body,
    )
}
