//! The InfluxDB v2 backend: the 2.x HTTP API (`/api/v2/write` line protocol
//! into an org's bucket, `/api/v2/query` Flux answered as annotated CSV).
//!
//! Writes go to the same durable [`Outbox`] and [`forwarder`](super::forwarder)
//! as v1; only the [`Sink`] differs. Queries go straight to the server,
//! translated by [`flux`](super::flux); field types come from the `#datatype`
//! annotation of each answer table, so no schema lookup is needed.
//!
//! Why not the `influxdb2` crate (which issue 4 suggested): it brings a second
//! HTTP and TLS stack (reqwest 0.11, hyper 0.14, rustls 0.21) next to the
//! hyper 1 / rustls 0.23 the host already has, which costs build time and
//! binary size on the Pi; its annotated-CSV reader `unwrap()`s the server's
//! time values and body (a malformed answer would panic the host); and its
//! client fixes the token at construction, while the token here is a secret
//! read at each request so a rotated one needs no restart. The outbox
//! already produces gzip line protocol, so its write API would add nothing.
//! This backend therefore uses the small client of the v1 backend.
//!
//! Error text taken from the server's answers (which reaches guests and the
//! log) is scrubbed of the token before anything clips it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use super::forwarder::{Delivery, ForwardSettings, Sink, SinkFuture};
use super::influx_v1::client;
use super::multi::{self, MultiQuery, MultiTable};
use super::outbox::Outbox;
use super::remote::Forwarded;
use super::table::Table;
use super::{Point, Query, Row, SortedPoint, StoreError, StoreFuture, StoreStatus, TimeSeriesStore, flux};
use crate::metrics::Writer;
use crate::secrets::SecretStore;
use crate::secrets::scrub::{self, Scrubber};

/// InfluxDB 2.x stores unsigned integers: nothing is refused for them.
const NO_UNSIGNED: Option<&str> = None;
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the backend needs from `[influx]` (the token is a secret *name*).
#[derive(Debug, Clone)]
pub struct V2Settings {
    pub url: String,
    pub org: String,
    pub bucket: String,
    pub token_secret: String,
    pub outbox_max_bytes: u64,
    pub forward: ForwardSettings,
}

impl V2Settings {
    /// The settings of a `backend = "v2"` config; `None` for other backends.
    pub fn from_config(config: &crate::config::InfluxConfig) -> Option<V2Settings> {
        let crate::config::InfluxConfig::V2 { url, org, bucket, token, outbox } = config else {
            return None;
        };
        Some(V2Settings {
            url: url.clone(),
            org: org.clone(),
            bucket: bucket.clone(),
            token_secret: token.clone(),
            outbox_max_bytes: outbox.max_bytes,
            forward: ForwardSettings::from(outbox),
        })
    }
}

/// The remote InfluxDB 2.x store with its outbox and forwarder.
pub struct InfluxV2Backend {
    api: Arc<Api>,
    forwarded: Forwarded,
}

impl InfluxV2Backend {
    /// Opens the outbox in `outbox_dir` and starts the forwarder. Must be
    /// called inside a tokio runtime.
    pub fn open(settings: V2Settings, outbox_dir: &Path, secrets: Arc<SecretStore>) -> Result<Self, StoreError> {
        let endpoint = client::Endpoint::parse(&settings.url).map_err(StoreError::Invalid)?;
        let client = client::Client::new(endpoint).map_err(StoreError::Unavailable)?;
        let api = Arc::new(Api {
            client,
            org: settings.org,
            bucket: settings.bucket,
            token_secret: settings.token_secret,
            secrets,
        });
        if let Err(e) = api.auth_header() {
            tracing::warn!("{e}");
        }
        let forwarded =
            Forwarded::start(outbox_dir, settings.outbox_max_bytes, api.clone(), settings.forward, NO_UNSIGNED)?;
        Ok(InfluxV2Backend { api, forwarded })
    }

    /// The outbox (for tests and tools).
    pub fn outbox(&self) -> &Arc<Outbox> {
        self.forwarded.outbox()
    }

    async fn select(&self, q: Query) -> Result<Vec<Row>, StoreError> {
        if q.measurement.is_empty() {
            return Err(StoreError::Invalid("query measurement is empty".into()));
        }
        let Some(script) = flux::script(&self.api.bucket, &q) else { return Ok(Vec::new()) };
        let csv = self.api.query(&script).await?;
        flux::rows(&csv, &q)
    }
}

impl InfluxV2Backend {
    /// `query-multi` in one Flux script over every measurement.
    async fn select_multi(&self, q: MultiQuery) -> Result<MultiTable, StoreError> {
        q.check()?;
        let Some(script) = multi::flux_script(&self.api.bucket, &q) else { return Ok(MultiTable::default()) };
        let csv = self.api.query(&script).await?;
        multi::flux_rows(&csv, &q)
    }
}

impl TimeSeriesStore for InfluxV2Backend {
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
        "influxdb-v2"
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

/// The HTTP side: writes for the forwarder, Flux queries for guests.
struct Api {
    client: client::Client,
    org: String,
    bucket: String,
    token_secret: String,
    secrets: Arc<SecretStore>,
}

impl Api {
    /// What an echoing server could hand back of the token.
    fn scrubber(&self) -> Scrubber {
        Scrubber::new(scrub::with_json_forms(self.secrets.value(&self.token_secret).into_iter().collect()))
    }

    /// The error message of an answer, without the token (scrubbed before
    /// [`message`] clips it).
    fn message(&self, body: &[u8]) -> String {
        message(self.scrubber().scrub(body).as_deref().unwrap_or(body))
    }

    /// `e` without the token (e.g. an error a server echoed it in).
    fn scrub_error(&self, e: StoreError) -> StoreError {
        let scrubber = self.scrubber();
        match e {
            StoreError::Invalid(m) => StoreError::Invalid(scrubber.scrub_str(&m).into_owned()),
            StoreError::Unavailable(m) => StoreError::Unavailable(scrubber.scrub_str(&m).into_owned()),
        }
    }

    fn auth_header(&self) -> Result<String, String> {
        let name = &self.token_secret;
        let token =
            self.secrets.value(name).filter(|v| !crate::secrets::is_placeholder(v)).ok_or_else(|| {
                format!("InfluxDB token secret {name:?} is not set; run `wattedge secrets set {name}`")
            })?;
        Ok(format!("Token {token}"))
    }

    fn request(&self, method: http::Method) -> Result<http::request::Builder, String> {
        Ok(http::Request::builder().method(method).header(http::header::AUTHORIZATION, self.auth_header()?))
    }

    async fn query(&self, script: &str) -> Result<String, StoreError> {
        let request = self
            .request(http::Method::POST)
            .map_err(StoreError::Unavailable)?
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/csv");
        let path = format!("/api/v2/query?org={}", client::encode(&self.org));
        let body = Bytes::from(flux::request_body(script));
        let response = self.client.send(request, &path, body, QUERY_TIMEOUT).await.map_err(StoreError::Unavailable)?;
        if response.status != 200 {
            return Err(StoreError::Unavailable(format!(
                "InfluxDB answered HTTP {} to a query: {}",
                response.status,
                self.message(&response.body)
            )));
        }
        String::from_utf8(response.body.to_vec())
            .map_err(|_| StoreError::Unavailable("InfluxDB answered a query with non-UTF-8 CSV".into()))
    }

    async fn write(&self, gzipped: Bytes) -> Delivery {
        let path = format!(
            "/api/v2/write?org={}&bucket={}&precision=ns",
            client::encode(&self.org),
            client::encode(&self.bucket)
        );
        let request = match self.request(http::Method::POST) {
            Ok(r) => r
                .header(http::header::CONTENT_ENCODING, "gzip")
                .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            Err(message) => return Delivery::Retry { message, reachable: true },
        };
        match self.client.send(request, &path, gzipped, WRITE_TIMEOUT).await {
            Ok(response) => self.judge_write(response.status, &self.message(&response.body)),
            Err(message) => Delivery::Retry { message, reachable: false },
        }
    }

    /// 400 (unparsable) and 422 (field type conflict, outside retention)
    /// can never succeed; auth and a missing bucket can be fixed, so they wait.
    fn judge_write(&self, status: u16, message: &str) -> Delivery {
        let message = message.to_string();
        match status {
            200..=299 => Delivery::Stored,
            400 | 422 => Delivery::Rejected {
                dropped: dropped_count(&message),
                partial: status == 422 && message.contains("partial write"),
                message,
            },
            413 => Delivery::Rejected {
                message: format!("HTTP 413, the batch is larger than the server accepts: {message}"),
                dropped: 0,
                partial: false,
            },
            404 => Delivery::Retry {
                message: format!(
                    "org {:?} or bucket {:?} does not exist ({message}); create the bucket with `influx bucket create`",
                    self.org, self.bucket
                ),
                reachable: true,
            },
            401 | 403 => Delivery::Retry {
                message: format!(
                    "InfluxDB refused the token (HTTP {status}: {message}); check the secret {:?} and its write permission on the bucket",
                    self.token_secret
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
            let request = http::Request::builder().method(http::Method::GET);
            matches!(self.client.send(request, "/ping", Bytes::new(), Duration::from_secs(5)).await, Ok(r) if r.status == 204)
        })
    }
}

/// The `message` of InfluxDB 2's JSON error body, or the start of the body.
fn message(body: &[u8]) -> String {
    if let Some(m) = serde_json::from_slice::<Value>(body).ok().and_then(|v| v["message"].as_str().map(str::to_string))
    {
        return m;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() { "(empty body)".to_string() } else { text.chars().take(200).collect() }
}

/// `dropped=N` at the end of InfluxDB's partial-write message.
fn dropped_count(message: &str) -> u64 {
    message.rsplit_once("dropped=").and_then(|(_, n)| n.trim().parse().ok()).unwrap_or(0)
}
