//! A small client for the running host's admin API, used by `invoke` and
//! `status`.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;

use crate::config::Config;

/// An answer from the admin API.
pub struct Reply {
    pub status: u16,
    pub body: serde_json::Value,
}

/// Sends one request to the admin API named in `config`.
pub async fn request(
    config: &Config,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<Reply> {
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    request_bytes(config, method, path, bytes.into()).await
}

/// Sends raw bytes (a component for `swap`) to the admin API.
///
/// Through the host's Unix socket in `state_dir` when it answers, after
/// checking (SO_PEERCRED) that the process behind it runs as this user or
/// root; only there does the admin token go, and only with a POST. A GET
/// may fall back to `admin_listen` over TCP, without the token: whoever
/// listens there while the host is down (any local user can bind a free
/// port) learns nothing.
pub async fn request_bytes(config: &Config, method: &str, path: &str, bytes: Bytes) -> anyhow::Result<Reply> {
    let post = method == "POST";
    match connect_socket(config).await {
        Ok(stream) => {
            let token = if post { admin_token(config) } else { None };
            exchange(Box::new(stream), "localhost", method, path, bytes, token).await
        }
        Err(why) if post => bail!(
            "{why}; changes are sent only through the host's socket (is `wattedge run --config {}` running, and are you its user?)",
            config.path.display()
        ),
        Err(why) => {
            let addr = config.host.admin_listen;
            let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| {
                format!(
                    "cannot reach the wattedge admin API at {addr} ({why}); is `wattedge run --config {}` running?",
                    config.path.display()
                )
            })?;
            exchange(Box::new(stream), &addr.to_string(), method, path, bytes, None).await
        }
    }
}

/// Connects to the admin socket and checks that its server runs as this
/// user or as root.
async fn connect_socket(config: &Config) -> Result<tokio::net::UnixStream, String> {
    let path = config.host.state_dir.join(crate::host::ADMIN_SOCKET);
    let stream = tokio::net::UnixStream::connect(&path)
        .await
        .map_err(|e| format!("cannot reach the admin socket {}: {e}", path.display()))?;
    let server = stream.peer_cred().map_err(|e| format!("{}: cannot tell who serves it: {e}", path.display()))?;
    // SAFETY: geteuid cannot fail and has no side effects.
    let me = unsafe { libc::geteuid() };
    if server.uid() != me && server.uid() != 0 {
        return Err(format!(
            "{} is served by uid {}, neither this user (uid {me}) nor root; refusing to talk to it",
            path.display(),
            server.uid()
        ));
    }
    Ok(stream)
}

/// One HTTP/1.1 exchange on `stream`.
/// (One stream type, so hyper's client is compiled once: see
/// `admin::Stream`.)
async fn exchange(
    stream: Box<dyn crate::admin::Stream>,
    host: &str,
    method: &str,
    path: &str,
    bytes: Bytes,
    token: Option<String>,
) -> anyhow::Result<Reply> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut builder = Request::builder().method(method).uri(path).header("host", host);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let response =
        sender.send_request(builder.header("content-type", "application/json").body(Full::new(bytes))?).await?;
    let status = response.status().as_u16();
    let raw = response.into_body().collect().await?.to_bytes();
    let body = serde_json::from_slice(&raw)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&raw).into()));
    Ok(Reply { status, body })
}

fn admin_token(config: &Config) -> Option<String> {
    let store = crate::secrets::SecretStore::open(&config.host.secrets_file).ok()?;
    store.value(crate::secrets::ADMIN_TOKEN_SECRET)
}

/// Text from the admin API (a guest's name, status, error, counters) made
/// safe for the terminal: no escape sequences, no line breaks, bounded.
fn safe(text: &str) -> std::borrow::Cow<'_, str> {
    crate::guest_text::escape(text, 2048)
}

/// `wattedge invoke GUEST key=value...`: queues a run and follows it.
pub async fn invoke(config_path: &Path, guest: &str, args: &[String], no_wait: bool) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let mut object = serde_json::Map::new();
    for arg in args {
        let Some((k, v)) = arg.split_once('=') else {
            bail!("argument {arg:?} is not key=value, e.g. start=2024-01-01");
        };
        object.insert(k.to_string(), v.into());
    }
    let before = request(&config, "GET", &format!("/guests/{guest}"), None).await?;
    if before.status != 200 {
        bail!("{}", error_text(&before));
    }
    let finished_before = before.body["runs"].as_u64().unwrap_or(0);
    let reply = request(&config, "POST", &format!("/guests/{guest}/invoke"), Some(object.into())).await?;
    if reply.status != 202 {
        bail!("invoke refused ({}): {}", reply.status, error_text(&reply));
    }
    println!("{guest}: run queued");
    if no_wait {
        return Ok(ExitCode::SUCCESS);
    }
    follow_run(&config, guest, finished_before).await
}

/// Polls the guest until its run count passes `finished_before`, printing
/// counter changes as progress.
async fn follow_run(config: &Config, guest: &str, finished_before: u64) -> anyhow::Result<ExitCode> {
    let mut last_counters = serde_json::Value::Null;
    let spinner = ['|', '/', '-', '\\'];
    for tick in 0usize.. {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let snap = request(config, "GET", &format!("/guests/{guest}"), None).await?.body;
        if snap["counters"] != last_counters {
            last_counters = snap["counters"].clone();
            eprintln!("  progress: {}", safe(&compact(&last_counters)));
        } else {
            eprint!("\r{} running...", spinner[tick % spinner.len()]);
        }
        if snap["runs"].as_u64().unwrap_or(0) > finished_before {
            let run = &snap["last_run"];
            let outcome = safe(run["outcome"].as_str().unwrap_or("?"));
            eprintln!(
                "\r{guest}: run finished: {outcome}{}",
                run["detail"].as_str().map(|d| format!(" ({})", safe(d))).unwrap_or_default()
            );
            return Ok(if outcome == "ok" { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
    }
    unreachable!("the loop above only ends by returning")
}

fn compact(value: &serde_json::Value) -> String {
    match value.as_object() {
        Some(map) => map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
        None => value.to_string(),
    }
}

fn error_text(reply: &Reply) -> String {
    let text = reply.body["error"].as_str().map(str::to_string).unwrap_or_else(|| reply.body.to_string());
    safe(&text).into_owned()
}

/// `wattedge status`: one line per guest.
pub async fn status(config_path: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let reply = request(&config, "GET", "/guests", None).await?;
    let Some(guests) = reply.body.as_array() else {
        bail!("unexpected answer from the admin API: {}", safe(&reply.body.to_string()));
    };
    println!("{:<12} {:<9} {:>6} {:>8}  detail", "guest", "state", "runs", "failures");
    for g in guests {
        println!(
            "{:<12} {:<9} {:>6} {:>8}  {}",
            safe(g["name"].as_str().unwrap_or("?")),
            safe(g["state"].as_str().unwrap_or("?")),
            safe(&g["runs"].to_string()),
            safe(&g["failures"].to_string()),
            safe(g["detail"].as_str().unwrap_or(""))
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `wattedge swap GUEST FILE`: uploads the component to the running host.
pub async fn swap(config_path: &Path, guest: &str, file: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let reply = request_bytes(&config, "POST", &format!("/guests/{guest}/swap"), bytes.into()).await?;
    report_swap(guest, &reply)
}

/// `wattedge rollback GUEST`.
pub async fn rollback(config_path: &Path, guest: &str) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path)?;
    let reply = request(&config, "POST", &format!("/guests/{guest}/rollback"), None).await?;
    report_swap(guest, &reply)
}

fn report_swap(guest: &str, reply: &Reply) -> anyhow::Result<ExitCode> {
    if reply.status != 200 {
        bail!("{guest}: refused ({}): {}", reply.status, error_text(reply));
    }
    let version = reply.body["version"].as_str().unwrap_or("?");
    let when = if reply.body["installed"] == true { "now serving" } else { "serves from the next run" };
    println!("{guest}: version {} {when}", safe(crate::guest_text::cut(version, 12)));
    Ok(ExitCode::SUCCESS)
}
