//! A real OCI registry for the tests: Debian's `docker-registry` (CNCF
//! distribution 2.8) started in a temp dir on a free loopback port, with
//! filesystem storage there (so a test can alter a stored blob) and its
//! access log captured (so a test can see which blobs were downloaded). It
//! is killed when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REGISTRY: &str = "/usr/bin/docker-registry";

/// A token service the registry trusts (see `registry_token.rs`).
pub struct TokenAuth {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    pub cert_pem: String,
}

/// A running (or stopped) registry.
pub struct Registry {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Registry {
    /// Starts the registry and waits for `GET /v2/` to answer.
    pub fn start() -> Registry {
        Registry::start_with(None)
    }

    /// A registry that requires tokens from `auth`'s service.
    pub fn start_with_token_auth(auth: &TokenAuth) -> Registry {
        Registry::start_with(Some(auth))
    }

    fn start_with(auth: Option<&TokenAuth>) -> Registry {
        assert!(
            std::path::Path::new(REGISTRY).exists(),
            "{REGISTRY} is missing: these tests need a real OCI registry; run `apt-get install docker-registry` (Debian's CNCF distribution 2.8)"
        );
        // A port picked as free may be taken before the registry binds it.
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let mut registry = Registry { dir, port, child: None };
            let auth = auth.map(|a| registry.token_section(a)).unwrap_or_default();
            registry.write_config(&auth);
            if registry.spawn() {
                return registry;
            }
        }
        panic!("docker-registry exited at start three times (ports taken?)")
    }

    /// The `auth: token:` section, with the service's certificate beside the config.
    fn token_section(&self, auth: &TokenAuth) -> String {
        let bundle = self.dir.path().join("token-service.pem");
        std::fs::write(&bundle, &auth.cert_pem).expect("write cert bundle");
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
            auth.realm,
            auth.service,
            auth.issuer,
            bundle.display()
        )
    }

    fn write_config(&self, auth: &str) {
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{}\n{auth}",
            self.storage().display(),
            self.port
        );
        std::fs::write(self.dir.path().join("config.yml"), config).expect("write registry config");
    }

    /// Starts the process (again, after [`Registry::stop`]); false when it
    /// exited before answering.
    fn spawn(&mut self) -> bool {
        let open = |name: &str| {
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join(name)).expect("log file")
        };
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(open("access.log"))
            .stderr(open("registry.log"))
            .spawn()
            .expect("spawn docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                return false;
            }
            // 401 when it requires tokens: it answers all the same.
            if status_of(self.port, "/v2/").is_some_and(|status| status == 200 || status == 401) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("docker-registry did not answer /v2/ within 20 s; log:\n{}", self.server_log())
    }

    /// `127.0.0.1:PORT`, as a reference names it.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The registry's storage root.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps the bytes of blob `hex` (sha256).
    pub fn blob_data(&self, hex: &str) -> PathBuf {
        self.storage().join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
    }

    /// The access log so far (one line per request).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The digests of the blobs fetched with GET (status 200) after the
    /// first `skip` access-log lines.
    pub fn blob_gets_after(&self, skip: usize) -> Vec<String> {
        self.access_log()
            .lines()
            .skip(skip)
            .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:") && l.contains("\" 200 "))
            .filter_map(|l| l.split("/blobs/").nth(1)?.split(' ').next().map(str::to_string))
            .collect()
    }

    /// Lines in the access log now.
    pub fn access_lines(&self) -> usize {
        self.access_log().lines().count()
    }

    /// Stops the registry (its storage stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The status of a plain GET, or None when nothing answers.
fn status_of(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
