//! The status page: one self-contained HTML page for people, at `GET /`.
//!
//! This module owns the page and the two small read-only JSON endpoints only
//! it needs. The page is three embedded files (`assets/`: HTML, JS, CSS; no
//! CDN, so it works on a board without internet) that fetch `/guests` every
//! few seconds and re-render in place. Everything here is read-only: the page
//! never shows a secret value and offers no mutating action (those stay behind
//! the admin token on the JSON API).
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /`, `GET /assets/{app.js,style.css}` | the page |
//! | `GET /api/store` | [`AdminBackend::store_status`] as JSON (see [`crate::store::StoreStatus`]) |
//! | `GET /api/guests/NAME/series?measurement=M[&limit=N]` | the newest N (default 300, max 1000) points of M, oldest first; only for a measurement in the guest's grants |

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde_json::json;

use super::{AdminBackend, AdminError, JSON, Resp, Shared};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// Points a series answer holds unless `limit` says otherwise (a 24 h forecast in 5-minute steps is 288).
const DEFAULT_SERIES_LIMIT: u32 = 300;
/// Upper bound of `limit`, so a page cannot ask the store for everything.
const MAX_SERIES_LIMIT: u32 = 1000;

/// Only same-origin scripts, styles and fetches: guest text can never become code.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's routes; everything else belongs to the JSON API.
#[derive(Debug, PartialEq)]
enum PageRoute {
    Asset(&'static str, &'static str),
    Store,
    Series(String),
}

impl PageRoute {
    fn parse(path: &str) -> Option<Self> {
        Some(match path {
            "/" | "/index.html" => Self::Asset("text/html; charset=utf-8", INDEX_HTML),
            "/assets/app.js" => Self::Asset("text/javascript; charset=utf-8", APP_JS),
            "/assets/style.css" => Self::Asset("text/css; charset=utf-8", STYLE_CSS),
            "/api/store" => Self::Store,
            _ => {
                let name = path.strip_prefix("/api/guests/")?.strip_suffix("/series")?;
                let valid = !name.is_empty() && !name.contains('/');
                return valid.then(|| Self::Series(name.to_owned()));
            }
        })
    }
}

/// Answers the page's routes; `None` for any other path (the JSON API handles it).
pub(super) async fn serve(shared: &Shared, method: &Method, path: &str, query: Option<&str>) -> Option<Resp> {
    let route = PageRoute::parse(path)?;
    if method != Method::GET {
        let mut resp = json(StatusCode::METHOD_NOT_ALLOWED, &json!({"error": "method not allowed; use GET"}));
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
        return Some(resp);
    }
    Some(match route {
        PageRoute::Asset(content_type, body) => respond(StatusCode::OK, content_type, body),
        PageRoute::Store => json(StatusCode::OK, &shared.backend.store_status()),
        PageRoute::Series(guest) => series(shared.backend.as_ref(), &guest, query.unwrap_or("")).await,
    })
}

async fn series(backend: &dyn AdminBackend, guest: &str, query: &str) -> Resp {
    let params = match SeriesParams::parse(query) {
        Ok(params) => params,
        Err(err) => return error(&err),
    };
    match backend.series(guest, &params.measurement, params.limit).await {
        Ok(points) => {
            let body = json!({"guest": guest, "measurement": params.measurement, "points": points});
            json(StatusCode::OK, &body)
        }
        Err(err) => error(&err),
    }
}

/// `measurement=M&limit=N` of a series request.
#[derive(Debug, PartialEq)]
struct SeriesParams {
    measurement: String,
    limit: u32,
}

impl SeriesParams {
    fn parse(query: &str) -> Result<Self, AdminError> {
        let mut measurement = None;
        let mut limit = DEFAULT_SERIES_LIMIT;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)?;
            match key {
                "measurement" => measurement = Some(value),
                "limit" => limit = parse_limit(&value)?,
                other => return Err(bad(format!("unknown query parameter {other:?}; use measurement and limit"))),
            }
        }
        let measurement = measurement.filter(|m| !m.is_empty());
        let measurement = measurement.ok_or_else(|| bad("missing ?measurement=NAME".to_owned()))?;
        Ok(Self { measurement, limit })
    }
}

fn parse_limit(value: &str) -> Result<u32, AdminError> {
    match value.parse::<u32>() {
        Ok(n) if (1..=MAX_SERIES_LIMIT).contains(&n) => Ok(n),
        _ => Err(bad(format!("limit {value:?} is invalid; use a number from 1 to {MAX_SERIES_LIMIT}"))),
    }
}

/// Decodes `%XX` escapes and `+` (a space) of a query value.
fn percent_decode(value: &str) -> Result<String, AdminError> {
    crate::percent::decode_query_value(value).map_err(|e| bad(e.to_string()))
}

fn bad(message: String) -> AdminError {
    AdminError::BadRequest(message)
}

fn error(err: &AdminError) -> Resp {
    json(err.status(), &json!({"error": err.to_string()}))
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Resp {
    respond(status, JSON, serde_json::to_vec(value).unwrap_or_default())
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(PageRoute::parse("/"), Some(PageRoute::Asset(t, _)) if t.starts_with("text/html")));
        assert!(matches!(PageRoute::parse("/assets/app.js"), Some(PageRoute::Asset(t, _)) if t.contains("javascript")));
        assert_eq!(PageRoute::parse("/api/store"), Some(PageRoute::Store));
        assert_eq!(PageRoute::parse("/api/guests/watttime/series"), Some(PageRoute::Series("watttime".into())));
        assert_eq!(PageRoute::parse("/api/guests//series"), None);
        assert_eq!(PageRoute::parse("/api/guests/a/b/series"), None);
        assert_eq!(PageRoute::parse("/guests"), None);
        assert_eq!(PageRoute::parse("/assets/other.js"), None);
    }

    #[test]
    fn series_params() {
        let p = SeriesParams::parse("measurement=carbon%5Fintensity&limit=12").expect("valid");
        assert_eq!(p, SeriesParams { measurement: "carbon_intensity".into(), limit: 12 });
        assert_eq!(SeriesParams::parse("measurement=x").expect("valid").limit, DEFAULT_SERIES_LIMIT);
        for bad in ["", "limit=5", "measurement=x&limit=0", "measurement=x&limit=5000", "measurement=%zz", "m=x"] {
            let err = SeriesParams::parse(bad).expect_err(bad);
            assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{bad}: {err}");
        }
    }

    #[test]
    fn assets_are_self_contained() {
        let js = APP_JS.replace("http://www.w3.org/2000/svg", "");
        for asset in [INDEX_HTML, js.as_str(), STYLE_CSS] {
            assert!(!asset.contains("http://") && !asset.contains("https://"), "assets must not load from a CDN");
        }
        assert!(!APP_JS.contains("innerHTML"), "guest text must never go through innerHTML");
        assert!(INDEX_HTML.contains("/assets/app.js") && INDEX_HTML.contains("/assets/style.css"));
    }
}
