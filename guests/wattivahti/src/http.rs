//! One wasi:http exchange: send a request, read the whole response.
//!
//! The guest never holds a secret: headers and bodies carry `${secret:...}`
//! placeholders that the host fills in at egress for granted hosts. Native
//! builds (unit tests) cannot send; they return an error.

/// A request to send.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// Absolute URL (`https://host[:port]/path?query`).
    pub url: String,
    /// Header name/value pairs.
    pub headers: Vec<(&'static str, String)>,
    /// Request body (empty for GET).
    pub body: String,
}

/// Splits an absolute URL into scheme, authority and path-with-query.
pub fn split_url(url: &str) -> Result<(&str, &str, &str), String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("{url:?} is not an absolute URL"))?;
    Ok(match rest.find('/') {
        Some(i) => (scheme, &rest[..i], &rest[i..]),
        None => (scheme, rest, "/"),
    })
}

/// Sends `request`; returns the status and the body as text.
#[cfg(target_arch = "wasm32")]
pub fn send(request: &Request) -> Result<(u16, String), String> {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::OutgoingBody;
    let outgoing = build(request)?;
    let body = outgoing.body().map_err(|()| "request body unavailable".to_string())?;
    let future = outgoing_handler::handle(outgoing, None).map_err(|e| format!("{e:?}"))?;
    {
        let stream = body.write().map_err(|()| "request body stream unavailable".to_string())?;
        for chunk in request.body.as_bytes().chunks(4096) {
            stream.blocking_write_and_flush(chunk).map_err(|e| format!("writing request body: {e:?}"))?;
        }
    }
    OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))?;
    future.subscribe().block();
    let response = future
        .get()
        .ok_or("no response")?
        .map_err(|()| "response taken twice".to_string())?
        .map_err(|e| format!("{e:?}"))?;
    read(response)
}

/// Without wasi:http (native unit tests) nothing can be sent.
#[cfg(not(target_arch = "wasm32"))]
pub fn send(_request: &Request) -> Result<(u16, String), String> {
    Err("HTTP needs the wasm32-wasip2 build".into())
}

#[cfg(target_arch = "wasm32")]
fn build(request: &Request) -> Result<wasip2::http::types::OutgoingRequest, String> {
    use wasip2::http::types::{Fields, Method, OutgoingRequest, Scheme};
    let (scheme, authority, path) = split_url(&request.url)?;
    let headers = Fields::new();
    for (name, value) in &request.headers {
        headers.append(name, value.as_bytes()).map_err(|e| format!("header {name}: {e:?}"))?;
    }
    let outgoing = OutgoingRequest::new(headers);
    let method = if request.method == "POST" { Method::Post } else { Method::Get };
    outgoing.set_method(&method).map_err(|()| "bad method".to_string())?;
    let scheme = if scheme == "http" { Scheme::Http } else { Scheme::Https };
    outgoing.set_scheme(Some(&scheme)).map_err(|()| "bad scheme".to_string())?;
    outgoing.set_authority(Some(authority)).map_err(|()| format!("bad authority {authority:?}"))?;
    outgoing.set_path_with_query(Some(path)).map_err(|()| format!("bad path {path:?}"))?;
    Ok(outgoing)
}

#[cfg(target_arch = "wasm32")]
fn read(response: wasip2::http::types::IncomingResponse) -> Result<(u16, String), String> {
    let status = response.status();
    let incoming = response.consume().map_err(|()| "no response body".to_string())?;
    let mut bytes = Vec::new();
    {
        let stream = incoming.stream().map_err(|()| "no response stream".to_string())?;
        loop {
            match stream.blocking_read(65536) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(wasip2::io::streams::StreamError::Closed) => break,
                Err(e) => return Err(format!("reading response body: {e:?}")),
            }
        }
    }
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls() {
        assert_eq!(split_url("https://a.test:9999/p?q=1"), Ok(("https", "a.test:9999", "/p?q=1")));
        assert_eq!(split_url("https://a.test"), Ok(("https", "a.test", "/")));
        assert!(split_url("a.test/p").is_err());
        assert!(
            send(&Request { method: "GET", url: "https://a.test".into(), headers: vec![], body: String::new() })
                .is_err()
        );
    }
}
