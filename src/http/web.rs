//! The live page and the browser client, embedded in the binary (`web/`):
//! `/` (index.html), `/app.js`, `/charts.js`, `/style.css`, `/client.js` (ES module) and
//! `/client.classic.js` (the same client as a classic script that sets
//! `window.DashStreamClient`). Every answer carries its content type and
//! `Cache-Control: no-cache`, so a new bridge version is picked up on reload.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};

pub(crate) const INDEX_HTML: &str = include_str!("../../web/index.html");
pub(crate) const APP_JS: &str = include_str!("../../web/app.js");
pub(crate) const CHARTS_JS: &str = include_str!("../../web/charts.js");
pub(crate) const STYLE_CSS: &str = include_str!("../../web/style.css");
pub(crate) const CLIENT_JS: &str = include_str!("../../web/client.js");

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The client as a classic script: the module's top-level `export` lines
/// removed and the rest wrapped in a function scope. The module assigns
/// `globalThis.DashStreamClient` itself.
static CLIENT_CLASSIC_JS: LazyLock<String> = LazyLock::new(|| classic_script(CLIENT_JS));

fn classic_script(module: &str) -> String {
    let body: Vec<&str> = module
        .lines()
        .filter(|l| !l.starts_with("export "))
        .collect();
    format!(
        "// Classic-script build of /client.js: sets window.DashStreamClient.\n(function () {{\n'use strict';\n{}\n}})();\n",
        body.join("\n")
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(crate) async fn index() -> Response {
    asset(HTML, INDEX_HTML)
}

pub(crate) async fn app_js() -> Response {
    asset(JS, APP_JS)
}

pub(crate) async fn charts_js() -> Response {
    asset(JS, CHARTS_JS)
}

pub(crate) async fn style_css() -> Response {
    asset(CSS, STYLE_CSS)
}

pub(crate) async fn client_js() -> Response {
    asset(JS, CLIENT_JS)
}

pub(crate) async fn client_classic_js() -> Response {
    asset(JS, CLIENT_CLASSIC_JS.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_references_only_served_assets() {
        for path in ["/style.css", "/app.js"] {
            assert!(INDEX_HTML.contains(path), "index.html links {path}");
        }
        assert!(APP_JS.contains("from './client.js'"));
        assert!(APP_JS.contains("from './charts.js'"));
    }

    #[test]
    fn the_classic_client_has_no_module_syntax() {
        let classic = classic_script(CLIENT_JS);
        assert!(CLIENT_JS.contains("\nexport { DashStreamClient"));
        assert!(!classic.lines().any(|l| l.starts_with("export ")));
        assert!(!classic.lines().any(|l| l.starts_with("import ")));
        assert!(classic.contains("globalThis.DashStreamClient = DashStreamClient"));
    }

    #[tokio::test]
    async fn assets_have_content_types_and_no_cache() {
        for (resp, ct) in [
            (index().await, HTML),
            (app_js().await, JS),
            (charts_js().await, JS),
            (style_css().await, CSS),
            (client_js().await, JS),
            (client_classic_js().await, JS),
        ] {
            assert_eq!(resp.headers()[header::CONTENT_TYPE], ct);
            assert_eq!(resp.headers()[header::CACHE_CONTROL], "no-cache");
        }
    }
}
