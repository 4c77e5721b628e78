//! The InfluxDB v1 backend: the 1.x HTTP API (`/write` line protocol,
//! `/query` InfluxQL), which InfluxDB 2.x and 3.x also serve.
//!
//! Writes go to the durable [`Outbox`] and return once fsynced; the
//! [`forwarder`](super::forwarder) delivers them. Queries go straight to the
//! server (a query cannot be answered from a queue), translated by
//! [`influxql`](super::influxql); field types come from `SHOW FIELD KEYS`
//! (cached per measurement) so integers, floats, strings and booleans come
//! back with exactly the type they were written with.
//!
//! Credentials are secrets (`${secret:NAME}` in the config), looked up at each
//! request so a rotated token is picked up without a restart; they are sent
//! as headers (`Authorization: Basic` or `Token`), never in URLs. Error text
//! taken from the server's answers (which reaches guests and the log) is
//! scrubbed of those credentials before anything clips it.

pub(super) mod client;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use super::forwarder::{Delivery, ForwardSettings, Sink, SinkFuture};
use super::multi::{self, MultiQuery, MultiTable};
use super::outbox::Outbox;
use super::remote::Forwarded;
use super::table::Table;
use super::{Point, Query, Row, SortedPoint, StoreError, StoreFuture, StoreStatus, TimeSeriesStore, influxql};
use crate::metrics::Writer;
use crate::secrets::SecretStore;
use crate::secrets::scrub::{self, Scrubber};

/// InfluxDB 1.x stores no unsigned integers: a point with one is refused at `write`.
const NO_UNSIGNED: Option<&str> = Some("InfluxDB 1.x");
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// How the backend authenticates (secret *names*, never values).
#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    None,
    /// HTTP Basic with a username and the password secret.
    Password {
        username: String,
        secret: String,
    },
    /// `Authorization: Token <secret>` (InfluxDB 2.x/3.x v1 compatibility, or 1.x behind a proxy).
    Token {
        secret: String,
    },
}

/// Everything the backend needs from `[influx]`.
#[derive(Debug, Clone)]
pub struct V1Settings {
    pub url: String,
    pub database: String,
    pub auth: Auth,
    pub outbox_max_bytes: u64,
    pub forward: ForwardSettings,
}

impl V1Settings {
    /// The settings of a `backend = "v1"` config; `None` for other backends.
    pub fn from_config(config: &crate::config::InfluxConfig) -> Option<V1Settings> {
        let crate::config::InfluxConfig::V1 { url, database, username, password, token, outbox } = config else {
            return None;
        };
        let auth = match (username, password, token) {
            (Some(username), Some(secret), _) => Auth::Password { username: username.clone(), secret: secret.clone() },
            (_, _, Some(secret)) => Auth::Token { secret: secret.clone() },
            _ => Auth::None,
        };
        Some(V1Settings {
            url: url.clone(),
            database: database.clone(),
            auth,
            outbox_max_bytes: outbox.max_bytes,
            forward: ForwardSettings::from(outbox),
        })
    }
}

/// The remote InfluxDB 1.x-API store with its outbox and forwarder.
pub struct InfluxV1Backend {
    api: Arc<Api>,
    forwarded: Forwarded,
    field_types: Mutex<HashMap<String, BTreeMap<String, String>>>,
}

impl InfluxV1Backend {
    /// Opens the outbox in `outbox_dir` and starts the forwarder. Must be
    /// called inside a tokio runtime.
    pub fn open(settings: V1Settings, outbox_dir: &Path, secrets: Arc<SecretStore>) -> Result<Self, StoreError> {
        let endpoint = client::Endpoint::parse(&settings.url).map_err(StoreError::Invalid)?;
        let client = client::Client::new(endpoint).map_err(StoreError::Unavailable)?;
        let api = Arc::new(Api { client, database: settings.database, auth: settings.auth, secrets });
        if let Err(e) = api.auth_header() {
            tracing::warn!("{e}");
        }
        let forwarded =
            Forwarded::start(outbox_dir, settings.outbox_max_bytes, api.clone(), settings.forward, NO_UNSIGNED)?;
        Ok(InfluxV1Backend { api, forwarded, field_types: Mutex::default() })
    }

    /// The outbox (for tests and tools).
    pub fn outbox(&self) -> &Arc<Outbox> {
        self.forwarded.outbox()
    }

    async fn types(&self, measurement: &str, refresh: bool) -> Result<BTreeMap<String, String>, StoreError> {
        if !refresh && let Some(t) = self.field_types.lock().unwrap_or_else(|e| e.into_inner()).get(measurement) {
            return Ok(t.clone());
        }
        let types = influxql::field_types(&self.api.query(&influxql::show_field_keys(measurement)).await?)?;
        if !types.is_empty() {
            self.field_types.lock().unwrap_or_else(|e| e.into_inner()).insert(measurement.to_string(), types.clone());
        }
        Ok(types)
    }

    async fn select(&self, q: Query) -> Result<Vec<Row>, StoreError> {
        if q.measurement.is_empty() {
            return Err(StoreError::Invalid("query measurement is empty".into()));
        }
        let mut types = self.types(&q.measurement, false).await?;
        let mut fields: Vec<String> = q.fields.iter().filter(|f| types.contains_key(*f)).cloned().collect();
        if fields.len() < q.fields.len() {
            types = self.types(&q.measurement, true).await?;
            fields = q.fields.iter().filter(|f| types.contains_key(*f)).cloned().collect();
            if fields.is_empty() {
                return Ok(Vec::new()); // none of the asked fields exists
            }
        }
        let Some(statement) = influxql::select(&q, &fields) else { return Ok(Vec::new()) };
        let body = self.api.query(&statement).await?;
        if has_unknown_columns(&body, &types) {
            types = self.types(&q.measurement, true).await?;
        }
        influxql::rows(&body, &q, &types)
    }
}

impl InfluxV1Backend {
    /// `query-multi` in one `SELECT` over every measurement (see
    /// [`multi::influxql_select`]); each measurement's field types come from
    /// the cache, refreshed for one whose answer has a column it lacks.
    async fn select_multi(&self, q: MultiQuery) -> Result<MultiTable, StoreError> {
        q.check()?;
        let mut types = Vec::with_capacity(q.measurements.len());
        for m in &q.measurements {
            types.push(self.types(m, false).await?);
        }
        let Some(statement) = multi::influxql_select(&q) else { return Ok(MultiTable::default()) };
        let body = self.api.query(&statement).await?;
        for series in influxql::series(&body)? {
            let name = series.get("name").and_then(Value::as_str).unwrap_or_default();
            if let Some(i) = q.measurements.iter().position(|m| m == name) {
                let one = serde_json::json!({ "results": [{ "series": [series] }] });
                if has_unknown_columns(&one, &types[i]) {
                    types[i] = self.types(name, true).await?;
                }
            }
        }
        multi::influxql_rows(&body, &q, &types)
    }
}

fn has_unknown_columns(body: &Value, types: &BTreeMap<String, String>) -> bool {
    influxql::series(body).unwrap_or_default().iter().any(|s| {
        s.get("columns")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .any(|c| c != "time" && !types.contains_key(c))
    })
}

impl TimeSeriesStore for InfluxV1Backend {
    fn write(&self, points: Vec<Point>) -> StoreFuture<'_, u32> {
        self.forwarded.write(points)
    }

    fn write_sorted(&self, points: Vec<SortedPoint>) -> StoreFuture<'_, u32> {
        self.forwarded.write(points)
    }

    fn write_table(&self, measurement: String, rows: Table) -> StoreFuture<'_, u32> {
        self.forwarded.write_table(measurement, rows)
    }

    fn query(&self, query: Query) -> StoreFuture<'_, Vec<Row>> {
        Box::pin(async move { self.select(query).await.map_err(|e| self.api.scrub_error(e)) })
    }

    fn query_multi(&self, query: MultiQuery) -> StoreFuture<'_, MultiTable> {
        Box::pin(self.select_multi(query))
    }

    fn kind(&self) -> &'static str {
        "influxdb-v1"
    }

    fn close(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(self.forwarded.stop())
    }

    fn status(&self) -> StoreStatus {
        self.forwarded.status(self.kind())
    }

    fn write_counters(&self, w: &mut Writer) {
        self.forwarded.write_counters(w);
    }
}

/// The HTTP side: writes for the forwarder, queries for guests.
struct Api {
    client: client::Client,
    database: String,
    auth: Auth,
    secrets: Arc<SecretStore>,
}

impl Api {
    /// What an echoing server could hand back of the credentials: the
    /// secret values and the Basic pair they make.
    fn scrubber(&self) -> Scrubber {
        use base64::Engine as _;
        let mut values = Vec::new();
        match &self.auth {
            Auth::None => {}
            Auth::Password { username, secret } => {
                if let Some(password) = self.secrets.value(secret) {
                    let pair = format!("{username}:{password}");
                    values.push(base64::engine::general_purpose::STANDARD.encode(pair));
                    values.push(password);
                }
            }
            Auth::Token { secret } => values.extend(self.secrets.value(secret)),
        }
        Scrubber::new(scrub::with_json_forms(values))
    }

    /// `body` without the credentials, before anything clips it.
    fn scrubbed(&self, body: &[u8]) -> Bytes {
        self.scrubber().scrub(body).map_or_else(|| Bytes::copy_from_slice(body), Bytes::from)
    }

    /// `e` without the credentials (e.g. an `error` a server echoed them in).
    fn scrub_error(&self, e: StoreError) -> StoreError {
        let scrubber = self.scrubber();
        match e {
            StoreError::Invalid(m) => StoreError::Invalid(scrubber.scrub_str(&m).into_owned()),
            StoreError::Unavailable(m) => StoreError::Unavailable(scrubber.scrub_str(&m).into_owned()),
        }
    }

    fn auth_header(&self) -> Result<Option<String>, String> {
        use base64::Engine as _;
        let secret = |name: &str| {
            self.secrets.value(name).filter(|v| !crate::secrets::is_placeholder(v)).ok_or_else(|| {
                format!("InfluxDB credential secret {name:?} is not set; run `wattedge secrets set {name}`")
            })
        };
        Ok(match &self.auth {
            Auth::None => None,
            Auth::Password { username, secret: name } => {
                let pair = format!("{username}:{}", secret(name)?);
                Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair)))
            }
            Auth::Token { secret: name } => Some(format!("Token {}", secret(name)?)),
        })
    }

    fn request(&self, method: http::Method) -> Result<http::request::Builder, String> {
        let mut builder = http::Request::builder().method(method);
        if let Some(value) = self.auth_header()? {
            builder = builder.header(http::header::AUTHORIZATION, value);
        }
        Ok(builder)
    }

    async fn query(&self, statement: &str) -> Result<Value, StoreError> {
        let form = format!("db={}&epoch=ns&q={}", client::encode(&self.database), client::encode(statement));
        let request = self
            .request(http::Method::POST)
            .map_err(StoreError::Unavailable)?
            .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        let response = self
            .client
            .send(request, "/query", Bytes::from(form), QUERY_TIMEOUT)
            .await
            .map_err(StoreError::Unavailable)?;
        match serde_json::from_slice::<Value>(&response.body) {
            Ok(body) if body.is_object() && (response.status == 200 || body.get("error").is_some()) => Ok(body),
            _ => Err(StoreError::Unavailable(format!(
                "InfluxDB answered HTTP {} to a query, not JSON results: {}",
                response.status,
                snippet(&self.scrubbed(&response.body))
            ))),
        }
    }

    async fn write(&self, gzipped: Bytes) -> Delivery {
        let path = format!("/write?db={}&precision=ns", client::encode(&self.database));
        let request = match self.request(http::Method::POST) {
            Ok(r) => r.header(http::header::CONTENT_ENCODING, "gzip").header(http::header::CONTENT_TYPE, "text/plain"),
            Err(message) => return Delivery::Retry { message, reachable: true },
        };
        match self.client.send(request, &path, gzipped, WRITE_TIMEOUT).await {
            Ok(response) => self.judge_write(response.status, &response.body),
            Err(message) => Delivery::Retry { message, reachable: false },
        }
    }

    fn judge_write(&self, status: u16, body: &[u8]) -> Delivery {
        let body = &self.scrubbed(body)[..];
        let message = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| snippet(body));
        match status {
            200..=299 => Delivery::Stored,
            400 => Delivery::Rejected {
                dropped: dropped_count(&message),
                partial: message.starts_with("partial write"),
                message,
            },
            413 => Delivery::Rejected {
                message: format!("HTTP 413, the batch is larger than the server's max-body-size: {message}"),
                dropped: 0,
                partial: false,
            },
            404 => Delivery::Retry {
                message: format!(
                    "database {:?} does not exist ({message}); create it with CREATE DATABASE",
                    self.database
                ),
                reachable: true,
            },
            401 | 403 => Delivery::Retry {
                message: format!(
                    "InfluxDB refused the credentials (HTTP {status}: {message}); check the influx.username/password/token secrets"
                ),
                reachable: true,
            },
            _ => Delivery::Retry { message: format!("InfluxDB answered HTTP {status}: {message}"), reachable: true },
        }
    }
}

impl Sink for Api {
    fn send(&self, gzipped: Bytes, _points: u64) -> SinkFuture<'_, Delivery> {
        Box::pin(self.write(gzipped))
    }

    fn ping(&self) -> SinkFuture<'_, bool> {
        Box::pin(async move {
            let Ok(request) = self.request(http::Method::GET) else { return false };
            matches!(self.client.send(request, "/ping", Bytes::new(), Duration::from_secs(5)).await, Ok(r) if r.status == 204)
        })
    }
}

/// `dropped=N` at the end of InfluxDB's partial-write message.
fn dropped_count(message: &str) -> u64 {
    message.rsplit_once("dropped=").and_then(|(_, n)| n.trim().parse().ok()).unwrap_or(0)
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() { "(empty body)".to_string() } else { text.chars().take(200).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers every request (the forwarder's ping too) with `response`;
    /// returns the URL and the heads of the `/query` requests.
    async fn server(response: &'static str) -> (String, Arc<Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = vec![0u8; 8192];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                if head.starts_with("POST /query") {
                    seen.lock().unwrap().push(head);
                }
                let _ = socket.write_all(response.as_bytes()).await;
            }
        });
        (url, heads)
    }

    fn backend(url: String, auth: Auth, dir: &Path) -> InfluxV1Backend {
        let secrets = Arc::new(SecretStore::open(&dir.join("secrets.toml")).unwrap());
        secrets.set("influx.token", "tok-123", None, false).unwrap();
        secrets.set("influx.password", "pw", None, false).unwrap();
        let forward = ForwardSettings {
            batch_points: 10,
            flush_interval: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(1),
        };
        let settings = V1Settings { url, database: "db".into(), auth, outbox_max_bytes: 1 << 20, forward };
        InfluxV1Backend::open(settings, &dir.join("outbox"), secrets).unwrap()
    }

    #[tokio::test]
    async fn an_html_error_page_is_unavailable_naming_the_status() {
        let (url, _heads) = server(
            "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: 20\r\nConnection: close\r\n\r\n<html>oops</html>\n\n\n",
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let err =
            backend(url, Auth::None, dir.path()).select(Query { measurement: "m".into(), ..Query::default() }).await;
        assert!(
            matches!(&err, Err(StoreError::Unavailable(m)) if m.contains("HTTP 502") && m.contains("<html>")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn credentials_are_sent_as_headers_from_secrets() {
        let reply = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 32\r\nConnection: close\r\n\r\n{\"results\":[{\"statement_id\":0}]}";
        let dir = tempfile::tempdir().unwrap();
        for (auth, expected) in [
            (Auth::Token { secret: "influx.token".into() }, "authorization: Token tok-123".to_string()),
            (
                Auth::Password { username: "pi".into(), secret: "influx.password".into() },
                "authorization: Basic cGk6cHc=".to_string(),
            ),
        ] {
            let (url, heads) = server(reply).await;
            let b = backend(url, auth, &dir.path().join(expected.len().to_string()));
            assert!(b.select(Query { measurement: "m".into(), ..Query::default() }).await.unwrap().is_empty());
            let head = heads.lock().unwrap().concat();
            assert!(head.to_ascii_lowercase().contains(&expected.to_ascii_lowercase()), "{head}");
            assert!(
                !head.lines().next().unwrap().contains("tok-123") && !head.lines().next().unwrap().contains("pw"),
                "never in the URL: {head}"
            );
        }
    }

    #[tokio::test]
    async fn credentials_echoed_in_error_text_are_scrubbed_before_it_is_clipped() {
        const PASSWORD: &str = "influx-PASSWORD-4f7a9c2e1b";
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("pi:{PASSWORD}"));
        // An error page that echoes the credentials, the password straddling
        // the 200 characters the message keeps; and an `error` in results.
        let page = format!("{}{PASSWORD} Basic {basic}", "e".repeat(190));
        let json =
            format!("{{\"results\":[{{\"statement_id\":0,\"error\":\"authorization failed for pi:{PASSWORD}\"}}]}}");
        for (status, body) in [("502 Bad Gateway", page), ("200 OK", json)] {
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let (url, _) = server(Box::leak(reply.into_boxed_str())).await;
            let dir = tempfile::tempdir().unwrap();
            let b = backend(url, Auth::Password { username: "pi".into(), secret: "influx.long".into() }, dir.path());
            b.api.secrets.set("influx.long", PASSWORD, None, false).unwrap();
            let err = b.query(Query { measurement: "m".into(), ..Query::default() }).await.unwrap_err().to_string();
            assert!(err.contains("[redacted]"), "{err}");
            assert!(!err.contains(&PASSWORD[..10]) && !err.contains(&basic[..10]), "no part of a credential: {err}");
        }
    }

    #[test]
    fn partial_write_counts() {
        assert_eq!(dropped_count("partial write: field type conflict: ... dropped=3"), 3);
        assert_eq!(dropped_count("unable to parse 'x': invalid number"), 0);
    }
}
