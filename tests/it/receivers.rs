//! Real receivers on loopback for notification tests: an HTTP server standing in for Slack and
//! for a webhook endpoint (it can be down, answer 500 or answer too late), and an SMTP server
//! (mailin-embedded) that keeps every mail it gets.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Ok,
    Status(u16),
    /// Answers 200 only after this long (beyond the sender's timeout).
    Slow(Duration),
}

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub json: Value,
    /// What the receiver answered (a slow answer counts as 200, sent too late).
    pub answered: u16,
    pub mode: Mode,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

struct Inner {
    requests: Mutex<Vec<Received>>,
    mode: Mutex<Mode>,
}

pub struct Receiver {
    pub port: u16,
    inner: Arc<Inner>,
    server: Mutex<Option<CancellationToken>>,
}

async fn receive(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let mode = *inner.mode.lock().unwrap();
    let answered = match mode {
        Mode::Status(code) => code,
        _ => 200,
    };
    inner.requests.lock().unwrap().push(Received {
        path: uri.path().to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        json: serde_json::from_slice(&body).unwrap_or(Value::Null),
        body: body.to_vec(),
        answered,
        mode,
    });
    if let Mode::Slow(delay) = mode {
        tokio::time::sleep(delay).await;
    }
    (
        StatusCode::from_u16(answered).unwrap(),
        if answered == 200 {
            "ok".into()
        } else {
            "receiver trouble".into()
        },
    )
}

impl Receiver {
    /// A receiver serving on a fresh port.
    pub async fn start() -> Receiver {
        let receiver = Receiver::reserved().await;
        receiver.up().await;
        receiver
    }

    /// A port that nothing listens on yet (connections are refused until `up`).
    pub async fn reserved() -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        Receiver {
            port,
            inner: Arc::new(Inner {
                requests: Mutex::new(Vec::new()),
                mode: Mutex::new(Mode::Ok),
            }),
            server: Mutex::new(None),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn up(&self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("receiver binds its port again");
        let cancel = CancellationToken::new();
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(self.inner.clone());
        let stop = cancel.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        });
        *self.server.lock().unwrap() = Some(cancel);
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.inner.mode.lock().unwrap() = mode;
    }

    pub fn requests(&self) -> Vec<Received> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// The requests answered 200 in time, on one path.
    pub fn delivered(&self, path: &str) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path && r.answered == 200 && !matches!(r.mode, Mode::Slow(_)))
            .collect()
    }

    /// Waits (up to 30 s) until `done` holds for what was delivered on `path`.
    pub async fn wait_for(
        &self,
        path: &str,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        for _ in 0..600 {
            let delivered = self.delivered(path);
            if done(&delivered) {
                return delivered;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let kinds: Vec<String> = self
            .requests()
            .iter()
            .map(|r| format!("{} {} {}", r.path, r.header("x-sluice-event"), r.answered))
            .collect();
        panic!("the receiver never got {what}; it got: {kinds:#?}");
    }
}

/// The event kinds delivered, first delivery of each event id only, in arrival order.
pub fn kinds_once(requests: &[Received]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    requests
        .iter()
        .filter(|r| seen.insert(r.header("x-sluice-event-id").to_owned()))
        .map(|r| r.header("x-sluice-event").to_owned())
        .collect()
}

#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

impl Mail {
    /// The Subject header, unfolded.
    pub fn subject(&self) -> String {
        let mut lines = self
            .data
            .lines()
            .skip_while(|l| !l.starts_with("Subject: "));
        let Some(first) = lines.next() else {
            return String::new();
        };
        let mut subject = first.trim_start_matches("Subject: ").to_owned();
        for line in lines.take_while(|l| l.starts_with(' ') || l.starts_with('\t')) {
            subject.push(' ');
            subject.push_str(line.trim());
        }
        subject
    }
}

#[derive(Clone)]
struct SinkHandler {
    mails: Arc<Mutex<Vec<Mail>>>,
    current: Option<Mail>,
}

impl mailin_embedded::Handler for SinkHandler {
    fn data_start(
        &mut self,
        _domain: &str,
        from: &str,
        _is8bit: bool,
        to: &[String],
    ) -> mailin_embedded::Response {
        self.current = Some(Mail {
            from: from.to_owned(),
            to: to.to_vec(),
            data: String::new(),
        });
        mailin_embedded::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if let Some(mail) = &mut self.current {
            mail.data.push_str(&String::from_utf8_lossy(buf));
        }
        Ok(())
    }

    fn data_end(&mut self) -> mailin_embedded::Response {
        if let Some(mail) = self.current.take() {
            self.mails.lock().unwrap().push(mail);
        }
        mailin_embedded::response::OK
    }
}

/// An SMTP server on a fresh port that keeps what it receives.
pub struct SmtpSink {
    pub port: u16,
    mails: Arc<Mutex<Vec<Mail>>>,
}

impl SmtpSink {
    pub fn start() -> SmtpSink {
        SmtpSink::start_with(mailin_embedded::SslConfig::None)
    }

    /// A server offering STARTTLS with this certificate and key (PEM files).
    pub fn start_tls(cert_path: &str, key_path: &str) -> SmtpSink {
        SmtpSink::start_with(mailin_embedded::SslConfig::SelfSigned {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
        })
    }

    fn start_with(ssl: mailin_embedded::SslConfig) -> SmtpSink {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let mut server = mailin_embedded::Server::new(SinkHandler {
            mails: mails.clone(),
            current: None,
        });
        server
            .with_name("sink.test")
            .with_ssl(ssl)
            .unwrap()
            .with_tcp_listener(listener);
        // serve() never returns: the thread ends with the test process.
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        SmtpSink { port, mails }
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Mail]) -> bool) -> Vec<Mail> {
        for _ in 0..600 {
            let mails = self.mails();
            if done(&mails) {
                return mails;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let subjects: Vec<String> = self.mails().iter().map(|m| m.subject()).collect();
        panic!("the SMTP sink never got {what}; it got: {subjects:#?}");
    }
}

/// An implicit-TLS front (as on port 465) for a plain SMTP sink: TLS with this certificate and
/// key (PEM files) from the first byte, then the sink's conversation inside it. Returns its port.
pub async fn implicit_tls_front(cert_path: &str, key_path: &str, plain_port: u16) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = vec![CertificateDer::from_pem_file(cert_path).unwrap()];
    let key = PrivateKeyDer::from_pem_file(key_path).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return; // the client refused the certificate
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", plain_port)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    port
}
