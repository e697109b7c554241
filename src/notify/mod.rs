//! Delivers the outbox: the notifier claims due rows (first in line per migration or
//! environment, so each one's events arrive in order), sends each through its channel (Slack
//! incoming webhook, SMTP email, signed webhook), and records every attempt; failures are
//! retried with exponential backoff and jitter until the row's give-up time, then it is marked
//! dead and stays visible. It never runs inside a request or a worker: a slow or dead receiver
//! delays nothing but its own messages. Secrets (webhook URLs, passwords, HMAC keys) never
//! appear in what it records or logs.

pub mod render;

use crate::config::{ChannelConfig, ChannelKind, DeliverySettings, EmailSettings, SmtpSecurity};
use crate::service::{Notice, Service, millis};
use crate::store::{DeliveryRecord, DeliveryResult, OutboxRow};
use futures_util::StreamExt;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Why a send failed, without any secret in it; `retry` says whether trying again may help.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    pub message: String,
    pub retry: bool,
}

fn retryable(message: impl Into<String>) -> SendError {
    SendError {
        message: message.into(),
        retry: true,
    }
}

/// Sends one notice through one channel.
#[derive(Clone)]
pub struct Sender {
    http: reqwest::Client,
    timeout: Duration,
}

/// `sha256=<hex HMAC-SHA256 of body>`, as X-Sluice-Signature carries it.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret)
        .expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The answer of an HTTP receiver, shortened for the record.
fn answer(status: reqwest::StatusCode, body: &str) -> String {
    let body: String = body.chars().take(200).collect();
    let body = body.trim();
    if body.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {body}")
    }
}

impl Sender {
    pub fn new(delivery: &DeliverySettings) -> anyhow::Result<Sender> {
        // reqwest is built without a default TLS provider: ring is the one in this tree.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let timeout = Duration::from_millis(delivery.timeout_ms);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
            // A redirect would send the signed body (or a Slack payload) somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Sender { http, timeout })
    }

    /// Sends `notice`; the receiver's answer on success.
    pub async fn send(
        &self,
        channel: &ChannelConfig,
        notice: &Notice,
    ) -> Result<String, SendError> {
        match &channel.kind {
            ChannelKind::Slack { url } => {
                let body = serde_json::to_vec(&render::slack(notice))
                    .map_err(|e| retryable(format!("cannot encode the message: {e}")))?;
                self.post(url.expose(), notice, body, None).await
            }
            ChannelKind::Webhook { url, secret } => {
                let body = serde_json::to_vec(notice)
                    .map_err(|e| retryable(format!("cannot encode the message: {e}")))?;
                let signature = signature(secret.expose().as_bytes(), &body);
                self.post(url.expose(), notice, body, Some(signature)).await
            }
            ChannelKind::Email(email) => self.mail(&channel.name, email, notice).await,
        }
    }

    async fn post(
        &self,
        url: &str,
        notice: &Notice,
        body: Vec<u8>,
        signature: Option<String>,
    ) -> Result<String, SendError> {
        let mut request = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("x-sluice-event-id", &notice.event_id)
            .header("x-sluice-event", notice.kind.as_str())
            .body(body);
        if let Some(signature) = signature {
            request = request.header("x-sluice-signature", signature);
        }
        let response = request.send().await.map_err(|e| {
            // reqwest names the URL in its errors; a Slack webhook's URL is its credential.
            let e = e.without_url();
            let what = if e.is_timeout() {
                format!("no answer within {} ms", self.timeout.as_millis())
            } else if e.is_connect() {
                "cannot connect to the receiver".to_owned()
            } else {
                "the request failed".to_owned()
            };
            retryable(format!("{what}: {}", error_chain(&e)))
        })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let answer = answer(status, &text);
        if status.is_success() {
            Ok(answer)
        } else {
            // A client error other than a timeout or rate limit will not go away by itself.
            let retry = status.is_server_error() || matches!(status.as_u16(), 408 | 425 | 429);
            Err(SendError {
                message: answer,
                retry,
            })
        }
    }

    async fn mail(
        &self,
        channel: &str,
        settings: &EmailSettings,
        notice: &Notice,
    ) -> Result<String, SendError> {
        use lettre::message::{Mailbox, MultiPart};
        use lettre::transport::smtp::authentication::Credentials;
        use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
        use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

        let mut to: Vec<String> = settings.recipients.clone();
        to.extend(notice.recipients.iter().filter_map(|r| r.email.clone()));
        to.extend(notice.addresses.iter().cloned());
        let mut seen = std::collections::BTreeSet::new();
        to.retain(|a| seen.insert(a.to_ascii_lowercase()));
        if to.is_empty() {
            return Err(SendError {
                message: "no recipient: the channel lists none and no user concerned has an email in users.yml".into(),
                retry: false,
            });
        }
        let permanent = |message: String| SendError {
            message,
            retry: false,
        };
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|e| permanent(format!("from: {e}")))?;
        let mut builder = Message::builder()
            .from(from)
            .subject(notice.subject())
            // One Message-ID per event and channel: a mail client shows a duplicate once.
            .message_id(Some(format!("<{}.{channel}@sluice>", notice.event_id)));
        for address in &to {
            let mailbox: Mailbox = address
                .parse()
                .map_err(|e| permanent(format!("recipient {address}: {e}")))?;
            builder = builder.to(mailbox);
        }
        let message = builder
            .multipart(MultiPart::alternative_plain_html(
                render::email_text(notice),
                render::email_html(notice),
            ))
            .map_err(|e| permanent(format!("cannot build the message: {e}")))?;
        let tls = match settings.security {
            SmtpSecurity::None => Tls::None,
            security => {
                let mut parameters = TlsParameters::builder(settings.host.clone());
                if let Some(pem) = &settings.ca_pem {
                    parameters = parameters.add_root_certificate(
                        Certificate::from_pem(pem)
                            .map_err(|e| permanent(format!("ca_file: {e}")))?,
                    );
                }
                let parameters = parameters
                    .build_rustls()
                    .map_err(|e| permanent(format!("TLS settings: {e}")))?;
                if security == SmtpSecurity::Tls {
                    Tls::Wrapper(parameters)
                } else {
                    // STARTTLS is required: a server that does not offer it gets no mail.
                    Tls::Required(parameters)
                }
            }
        };
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
            .port(settings.port)
            .tls(tls)
            .timeout(Some(self.timeout));
        let transport = match (&settings.username, &settings.password) {
            (Some(user), Some(password)) => transport.credentials(Credentials::new(
                user.expose().to_owned(),
                password.expose().to_owned(),
            )),
            _ => transport,
        }
        .build();
        let sent = tokio::time::timeout(self.timeout, transport.send(message)).await;
        match sent {
            Err(_) => Err(retryable(format!(
                "no answer from {}:{} within {} ms",
                settings.host,
                settings.port,
                self.timeout.as_millis()
            ))),
            Ok(Err(e)) => Err(SendError {
                retry: !e.is_permanent(),
                message: format!(
                    "SMTP {}:{}: {}",
                    settings.host,
                    settings.port,
                    error_chain(&e)
                ),
            }),
            Ok(Ok(response)) => Ok(format!(
                "SMTP {} {}",
                response.code(),
                response.message().collect::<Vec<_>>().join(" ")
            )),
        }
    }
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Audit records emptied of their events per fan-out transaction, at most.
const FAN_OUT_BATCH: usize = 500;

/// Moves the events that audit records carry to the outbox until cancelled (whether or not
/// this daemon delivers them): a few milliseconds after a commit wrote some, so that one
/// transaction takes a burst, and every second (another daemon's, or those a stop left).
pub async fn fan_out(service: Service, cancel: CancellationToken) {
    const COALESCE: Duration = Duration::from_millis(5);
    let wake = service.signals.fan_out.clone();
    let mut failures = 0u32;
    loop {
        let wait = match service.fan_out_events(FAN_OUT_BATCH).await {
            Ok(n) => {
                failures = 0;
                if n > 0 {
                    service.signals.outbox.notify_one();
                }
                if n == FAN_OUT_BATCH {
                    Duration::ZERO
                } else {
                    Duration::from_secs(1)
                }
            }
            Err(e) => {
                failures = (failures + 1).min(6);
                tracing::error!(error = %e, "fanning out notification events failed; they stay on their audit records");
                Duration::from_millis(500 << failures)
            }
        };
        if wait.is_zero() {
            if cancel.is_cancelled() {
                break;
            }
            continue;
        }
        let woken = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = wake.notified() => true,
            _ = tokio::time::sleep(wait) => false,
        };
        if woken {
            tokio::time::sleep(COALESCE).await;
        }
    }
}

/// The outbox's delivery loop.
#[derive(Clone)]
pub struct Notifier {
    service: Service,
    sender: Sender,
    /// Names this daemon's claims.
    owner: String,
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    pub delivered: usize,
    pub failed: usize,
    pub dead: usize,
}

impl Round {
    pub fn handled(&self) -> usize {
        self.delivered + self.failed + self.dead
    }
}

impl Notifier {
    pub fn new(service: Service) -> anyhow::Result<Notifier> {
        let sender = Sender::new(&service.config.notifications.delivery)?;
        let owner = format!(
            "{}-{}",
            std::process::id(),
            crate::service::notifications::new_event_id(0)
        );
        Ok(Notifier {
            service,
            sender,
            owner,
        })
    }

    fn now(&self) -> i64 {
        millis(self.service.clock.now())
    }

    /// Fans out the events audit records carry, then claims what is due and sends it, each
    /// channel's rows concurrently.
    pub async fn run_once(&self) -> Result<Round, crate::service::ServiceError> {
        while self.service.fan_out_events(FAN_OUT_BATCH).await? == FAN_OUT_BATCH {}
        let batch = self.service.config.notifications.delivery.batch_size as usize;
        let (rows, token) = self.claim(batch).await?;
        let records: Vec<DeliveryRecord> = futures_util::stream::iter(rows)
            .map(|row| self.send_row(row, &token))
            .buffer_unordered(16)
            .collect()
            .await;
        self.service.store.record_deliveries(&records).await?;
        let mut round = Round::default();
        for record in &records {
            match record.result {
                DeliveryResult::Delivered => round.delivered += 1,
                DeliveryResult::Retry(_) => round.failed += 1,
                DeliveryResult::Dead => round.dead += 1,
            }
        }
        Ok(round)
    }

    /// Claims up to `limit` due rows under a fresh token.
    async fn claim(
        &self,
        limit: usize,
    ) -> Result<(Vec<OutboxRow>, String), crate::store::StoreError> {
        let delivery = &self.service.config.notifications.delivery;
        let now = self.now();
        let token = format!(
            "{}-{}",
            self.owner,
            crate::service::notifications::new_event_id(now)
        );
        let limit = limit.min(delivery.batch_size as usize) as i64;
        let rows = self
            .service
            .store
            .claim_outbox(now, now + delivery.claim_ms as i64, &token, limit)
            .await?;
        Ok((rows, token))
    }

    /// Sends one claimed row and says what to record.
    async fn send_row(&self, row: OutboxRow, token: &str) -> DeliveryRecord {
        let started = Instant::now();
        let outcome = match (
            self.service.config.notifications.channel(&row.channel),
            serde_json::from_str::<Notice>(&row.payload),
        ) {
            (None, _) => Err(SendError {
                message: format!(
                    "channel \"{}\" is no longer in notifications.yml (or is off)",
                    row.channel
                ),
                retry: true,
            }),
            (_, Err(e)) => Err(SendError {
                message: format!("unreadable event in the outbox: {e}"),
                retry: false,
            }),
            (Some(channel), Ok(notice)) => self.sender.send(channel, &notice).await,
        };
        let at = self.now();
        let duration_ms = started.elapsed().as_millis() as i64;
        let (result, answer) = match outcome {
            Ok(answer) => (DeliveryResult::Delivered, answer),
            Err(e) if !e.retry || at >= row.give_up_at => (DeliveryResult::Dead, e.message),
            Err(e) => {
                let next = (at + self.backoff_ms(row.attempts)).min(row.give_up_at);
                (DeliveryResult::Retry(next), e.message)
            }
        };
        crate::telemetry::notification_sent(
            &row.channel,
            match result {
                DeliveryResult::Delivered => "delivered",
                DeliveryResult::Retry(_) => "failed",
                DeliveryResult::Dead => "dead",
            },
            started.elapsed().as_secs_f64(),
        );
        match &result {
            DeliveryResult::Delivered => {
                tracing::debug!(channel = %row.channel, event = %row.event_id, kind = %row.kind, "notification delivered")
            }
            DeliveryResult::Retry(next) => {
                tracing::warn!(channel = %row.channel, event = %row.event_id, kind = %row.kind, error = %answer, retry_in_ms = next - at, "notification not delivered; will retry")
            }
            DeliveryResult::Dead => {
                tracing::error!(channel = %row.channel, event = %row.event_id, kind = %row.kind, error = %answer, "notification given up (dead); `sluice notifications --dead` lists it")
            }
        }
        DeliveryRecord {
            id: row.id,
            token: token.to_owned(),
            at,
            duration_ms,
            answer,
            result,
        }
    }

    /// The wait before retry `attempts + 1`: the first retry wait doubled per attempt, capped,
    /// then drawn between half of it and all of it (so that many failed rows don't retry in
    /// one burst).
    fn backoff_ms(&self, attempts: i64) -> i64 {
        let delivery = &self.service.config.notifications.delivery;
        let doubled = delivery
            .first_retry_ms
            .saturating_mul(1u64 << attempts.clamp(0, 30))
            .min(delivery.max_retry_ms);
        let mut byte = [0u8; 2];
        let _ = getrandom::fill(&mut byte);
        let fraction = 0.5 + 0.5 * f64::from(u16::from_le_bytes(byte)) / f64::from(u16::MAX);
        ((doubled as f64) * fraction).max(1.0) as i64
    }

    /// Runs until cancelled. Each row is sent by a task of its own (at most
    /// `MAX_IN_FLIGHT` at once), so that a slow channel holds up only its own rows: the loop
    /// claims more as soon as a send finishes, when a commit wrote to the outbox, or when the
    /// next retry falls due (at least every second, so that another daemon's rows are noticed).
    pub async fn run(self, cancel: CancellationToken) {
        const MAX_IN_FLIGHT: usize = 32;
        const COALESCE: Duration = Duration::from_millis(5);
        let wake = self.service.signals.outbox.clone();
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        let tasks = tokio_util::task::TaskTracker::new();
        // Attempts are recorded by one task, as many per transaction as have finished: a
        // burst of events costs the state store a few commits, not two per event.
        let (records, mut finished) = tokio::sync::mpsc::unbounded_channel::<DeliveryRecord>();
        let recorder = {
            let notifier = self.clone();
            tokio::spawn(async move {
                let mut batch = Vec::new();
                while finished.recv_many(&mut batch, 256).await > 0 {
                    if let Err(e) = notifier.service.store.record_deliveries(&batch).await {
                        tracing::error!(error = %e, "cannot record notification attempts; the rows are retried after their claims expire");
                    }
                    batch.clear();
                    notifier.service.signals.outbox.notify_one();
                }
            })
        };
        let mut failures = 0u32;
        loop {
            let free = permits.available_permits();
            let wait = if free == 0 {
                Duration::from_millis(1000)
            } else {
                match self.claim(free).await {
                    Ok((rows, token)) if !rows.is_empty() => {
                        failures = 0;
                        for row in rows {
                            let Ok(permit) = permits.clone().try_acquire_owned() else {
                                break; // cannot happen: as many rows as free permits
                            };
                            let notifier = self.clone();
                            let token = token.clone();
                            let records = records.clone();
                            tasks.spawn(async move {
                                let record = notifier.send_row(row, &token).await;
                                drop(permit);
                                let _ = records.send(record);
                            });
                        }
                        Duration::ZERO
                    }
                    Ok(_) => {
                        failures = 0;
                        let due = self.service.store.next_outbox_due().await.ok().flatten();
                        let until_due = due
                            .map(|due| (due - self.now()).max(0) as u64)
                            .unwrap_or(u64::MAX);
                        Duration::from_millis(until_due.clamp(50, 1000))
                    }
                    Err(e) => {
                        failures = (failures + 1).min(6);
                        tracing::error!(error = %e, "notifier round failed");
                        Duration::from_millis(500 << failures)
                    }
                }
            };
            if wait.is_zero() {
                if cancel.is_cancelled() {
                    break;
                }
                continue;
            }
            let woken = tokio::select! {
                _ = cancel.cancelled() => break,
                _ = wake.notified() => true,
                _ = tokio::time::sleep(wait) => false,
            };
            if woken {
                // A fan-out wrote to the outbox: let a burst gather for a few milliseconds, so
                // that one claim takes it all (each claim is a write to the state store, which
                // API calls are waiting for too).
                tokio::time::sleep(COALESCE).await;
            }
        }
        // Sends in flight finish (each is bounded by the send timeout) and are recorded;
        // unsent claims expire.
        tasks.close();
        tasks.wait().await;
        drop(records);
        let _ = recorder.await;
    }
}
