use super::*;

fn lookup(name: &str) -> Result<String, EgressError> {
    match name {
        "user" => Ok("alice".into()),
        "pass" => Ok("p@ss w&rd=\"1\"".into()),
        "other" => Err(EgressError::NotGranted { name: name.into(), destination: "https://x:443".into() }),
        _ => Err(EgressError::NotSet { name: name.into() }),
    }
}

#[test]
fn encodes_for_each_place() {
    let mut s = Substituter::new(&lookup);
    assert_eq!(s.apply("no placeholders", Encoding::Raw).unwrap(), None);
    assert_eq!(
        s.apply("k=${secret:pass}&u=${secret:user}", Encoding::Percent).unwrap().unwrap(),
        "k=p%40ss%20w%26rd%3D%221%22&u=alice"
    );
    assert_eq!(s.apply(r#"{"p":"${secret:pass}"}"#, Encoding::Json).unwrap().unwrap(), r#"{"p":"p@ss w&rd=\"1\""}"#);
    assert_eq!(s.apply("X ${secret:pass}", Encoding::Raw).unwrap().unwrap(), "X p@ss w&rd=\"1\"");
    assert!(s.inserted.contains(&"p%40ss%20w%26rd%3D%221%22".to_string()));
    assert!(s.inserted.contains(&"p@ss w&rd=\"1\"".to_string()));
}

#[test]
fn basic_auth_from_two_secrets() {
    let mut s = Substituter::new(&lookup);
    let out = s.apply("Basic ${secret-basic:user:pass}", Encoding::Raw).unwrap().unwrap();
    let expected = base64::engine::general_purpose::STANDARD.encode("alice:p@ss w&rd=\"1\"");
    assert_eq!(out, format!("Basic {expected}"));
    assert!(s.inserted.contains(&expected), "the derived credential is scrubbed from responses too");
}

#[test]
fn refusals_name_the_secret_only() {
    let mut s = Substituter::new(&lookup);
    let err = s.apply("${secret:other}", Encoding::Raw).unwrap_err();
    assert!(matches!(&err, EgressError::NotGranted { name, .. } if name == "other"));
    let err = s.apply("Basic ${secret-basic:user:missing}", Encoding::Raw).unwrap_err();
    assert_eq!(err, EgressError::NotSet { name: "missing".into() });
    assert!(!err.to_string().contains("alice"), "{err}");
    for bad in ["${secret:}", "${secret:a b}", "${secret:x", "${secretx}", "${secret-basic:onlyone}"] {
        assert!(matches!(s.apply(bad, Encoding::Raw), Err(EgressError::Malformed(_))), "{bad}");
    }
}

#[test]
fn seal_rewrites_query_headers_and_body() {
    let req = http::Request::builder()
        .uri("https://api.test/login?user=${secret:user}&x=1")
        .header("authorization", "Basic ${secret-basic:user:pass}")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(())
        .unwrap();
    let (mut parts, ()) = req.into_parts();
    let mut s = Substituter::new(&lookup);
    let body = seal(&mut parts, bytes::Bytes::from("p=${secret:pass}"), &mut s).unwrap();
    assert_eq!(parts.uri.to_string(), "https://api.test/login?user=alice&x=1");
    assert!(parts.headers["authorization"].is_sensitive());
    assert_eq!(&body[..], b"p=p%40ss%20w%26rd%3D%221%22");
}

#[test]
fn seal_refuses_placeholders_in_the_path() {
    let req = http::Request::builder().uri("https://api.test/a/$%7Bsecret:user%7D").body(()).unwrap();
    let (mut parts, ()) = req.into_parts();
    let err = seal(&mut parts, bytes::Bytes::new(), &mut Substituter::new(&lookup)).unwrap_err();
    assert_eq!(err, EgressError::Placement("URL path"));
}

#[test]
fn body_encodings() {
    assert_eq!(body_encoding(Some("application/json; charset=utf-8")), Encoding::Json);
    assert_eq!(body_encoding(Some("application/vnd.api+json")), Encoding::Json);
    assert_eq!(body_encoding(Some("Application/X-WWW-Form-Urlencoded")), Encoding::Percent);
    assert_eq!(body_encoding(None), Encoding::Raw);
}

#[test]
fn at_most_64_placeholders_per_request() {
    let mut s = Substituter::new(&lookup);
    let sixty_four = "${secret:user}".repeat(MAX_PLACEHOLDERS);
    assert_eq!(s.apply(&sixty_four, Encoding::Raw).unwrap().unwrap(), "alice".repeat(MAX_PLACEHOLDERS));
    let err = s.apply("${secret:user}", Encoding::Raw).unwrap_err();
    assert_eq!(err, EgressError::TooManyPlaceholders, "the count is per request, across its texts");
    assert_eq!(err.kind(), "oversize");
    let mut fresh = Substituter::new(&lookup);
    let four_mib = "${secret:user}".repeat((4 << 20) / "${secret:user}".len());
    assert_eq!(fresh.apply(&four_mib, Encoding::Raw).unwrap_err(), EgressError::TooManyPlaceholders);
}

#[test]
fn the_sealed_request_obeys_the_body_limit() {
    // "alice" is 5 bytes: 10 placeholders write 50.
    let mut s = Substituter::new(&lookup).limited(40);
    let err = s.apply(&"${secret:user}".repeat(10), Encoding::Raw).unwrap_err();
    assert_eq!(err, EgressError::Oversize(40));
    assert!(err.to_string().contains("http_max_body (40 bytes)"), "{err}");
    let mut s = Substituter::new(&lookup).limited(40);
    assert_eq!(s.apply(&format!("{}${{secret:user}}", "x".repeat(36)), Encoding::Raw), Err(EgressError::Oversize(40)));
    let mut s = Substituter::new(&lookup).limited(12);
    assert_eq!(s.apply("a ${secret:user}", Encoding::Raw).unwrap().unwrap(), "a alice");
    assert_eq!(s.apply("${secret:user}", Encoding::Raw).unwrap().unwrap(), "alice");
    assert_eq!(s.apply("${secret:user}", Encoding::Raw), Err(EgressError::Oversize(12)), "15 bytes of values in all");
}
