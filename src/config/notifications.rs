//! notifications.yml: the channels (Slack incoming webhooks, SMTP email, signed HTTPS webhooks)
//! with their routing, the delivery retry policy, reminder points and escalation. `${VAR}` and
//! `${VAR:-default}` are resolved as in environments.yml; the legacy framework's
//! SLACK_WEBHOOK_URL, EMAIL_RECIPIENTS and SMTP_SERVER feed the shipped file. A channel whose
//! address resolves to nothing is off; anything else wrong is a start-up error naming the key.

use super::{ConfigError, EnvironmentConfig, Secret, err, interpolate, read};
use crate::domain::notice::{NoticeKind, Route};
use crate::domain::{Risk, Role};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Everything about notifications, validated.
#[derive(Debug, Clone, Default)]
pub struct NotificationConfig {
    pub delivery: DeliverySettings,
    pub reminders: ReminderSettings,
    /// Per environment: who hears at the last reminder before an approval deadline.
    pub escalate_to: BTreeMap<String, Vec<Recipient>>,
    /// The channels that are on, in the file's order.
    pub channels: Vec<ChannelConfig>,
    /// Channels present in the file but off (their address resolved to nothing), with why.
    pub disabled: Vec<(String, String)>,
}

impl NotificationConfig {
    pub fn channel(&self, name: &str) -> Option<&ChannelConfig> {
        self.channels.iter().find(|c| c.name == name)
    }
}

#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub first_retry_ms: u64,
    pub max_retry_ms: u64,
    pub give_up_after_ms: u64,
    pub timeout_ms: u64,
    /// How long a claimed row stays another daemon's (longer than any send can take).
    pub claim_ms: u64,
    pub batch_size: u32,
    /// Delivered rows are deleted after this long (dead ones stay until requeued).
    pub keep_delivered_ms: u64,
    /// Whether this daemon delivers (false: it writes events to the outbox and leaves sending
    /// them to the other replicas on the same store).
    pub enabled: bool,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            first_retry_ms: 1_000,
            max_retry_ms: 600_000,
            give_up_after_ms: 24 * 3_600_000,
            timeout_ms: 10_000,
            claim_ms: 60_000,
            batch_size: 50,
            keep_delivered_ms: 7 * 24 * 3_600_000,
            enabled: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ReminderSettings {
    /// Fractions of the approval wait (request to deadline) at which reminders go out.
    pub at: Vec<f64>,
    /// How often the holders of an owed post-emergency review are reminded.
    pub review_every_ms: i64,
}

impl Default for ReminderSettings {
    fn default() -> Self {
        ReminderSettings {
            at: vec![0.5, 0.9],
            review_every_ms: 24 * 3_600_000,
        }
    }
}

/// Someone to tell: the holders of a role, or a fixed address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    Role(Role),
    Address(String),
}

#[derive(Debug, Clone)]
pub struct ChannelConfig {
    pub name: String,
    pub kind: ChannelKind,
    pub route: Route,
}

#[derive(Debug, Clone)]
pub enum ChannelKind {
    Slack { url: Secret },
    Webhook { url: Secret, secret: Secret },
    Email(EmailSettings),
}

impl ChannelKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ChannelKind::Slack { .. } => "slack",
            ChannelKind::Webhook { .. } => "webhook",
            ChannelKind::Email(_) => "email",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain SMTP upgraded with STARTTLS (port 587), refused if the server cannot.
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS: only for a relay on the same host or network.
    None,
}

#[derive(Debug, Clone)]
pub struct EmailSettings {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<Secret>,
    pub password: Option<Secret>,
    pub from: String,
    /// Sent every routed event, besides the users the event concerns.
    pub recipients: Vec<String>,
    /// A PEM file of CA certificates trusted besides the public roots (a private relay).
    pub ca_pem: Option<Vec<u8>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    delivery: DeliveryEntry,
    #[serde(default)]
    reminders: RemindersEntry,
    #[serde(default)]
    escalate_to: BTreeMap<String, OneOrMany>,
    #[serde(default)]
    channels: BTreeMap<String, ChannelEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveryEntry {
    first_retry_seconds: Option<f64>,
    max_retry_seconds: Option<f64>,
    give_up_after_hours: Option<f64>,
    timeout_seconds: Option<f64>,
    claim_seconds: Option<f64>,
    batch_size: Option<u32>,
    keep_delivered_days: Option<f64>,
    enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RemindersEntry {
    at: Option<Vec<f64>>,
    review_every_hours: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// A list, or one string of comma-separated items (EMAIL_RECIPIENTS="a@x,b@x").
    fn items(&self) -> Vec<String> {
        let all = match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        };
        all.iter()
            .flat_map(|s| s.split(','))
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChannelEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    smtp_server: Option<String>,
    #[serde(default)]
    security: Option<SmtpSecurity>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    recipients: Option<OneOrMany>,
    #[serde(default)]
    ca_file: Option<String>,
    #[serde(default)]
    events: Option<Vec<NoticeKind>>,
    #[serde(default)]
    environments: Option<Vec<String>>,
    #[serde(default)]
    min_risk: Option<Risk>,
}

fn seconds(path: &Path, at: &str, value: Option<f64>, default: u64) -> Result<u64, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if v.is_finite() && v > 0.0 => Ok((v * 1000.0).round().max(1.0) as u64),
        Some(v) => Err(err(path, format!("{at}: {v} is not a positive duration"))),
    }
}

/// A plausible mailbox: one @, something on both sides, no spaces or angle brackets.
fn check_address(path: &Path, at: &str, address: &str) -> Result<(), ConfigError> {
    let ok = address.parse::<lettre::Address>().is_ok();
    if ok {
        Ok(())
    } else {
        Err(err(
            path,
            format!("{at}: \"{address}\" is not an email address"),
        ))
    }
}

fn check_http_url(path: &Path, at: &str, url: &str) -> Result<(), ConfigError> {
    match url::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => {
            Ok(())
        }
        // The URL is a secret (a Slack webhook's path is its credential): name only the key.
        _ => Err(err(
            path,
            format!("{at}: not an http(s) URL with a host (value not shown: it may be secret)"),
        )),
    }
}

/// Reads notifications.yml (no file: no channels, default timings).
pub fn load_notifications(
    path: &Path,
    environments: &[EnvironmentConfig],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<NotificationConfig, ConfigError> {
    if !path.exists() {
        return Ok(NotificationConfig::default());
    }
    let text = read(path)?;
    let mut document: serde_norway::Value =
        serde_norway::from_str(&text).map_err(|e| err(path, e))?;
    if document.is_null() {
        return Ok(NotificationConfig::default());
    }
    interpolate(path, "", &mut document, env)?;
    let file: File = serde_path_to_error::deserialize(document)
        .map_err(|e| err(path, format!("{}: {}", e.path(), e.inner())))?;
    let defaults = DeliverySettings::default();
    let d = &file.delivery;
    let delivery = DeliverySettings {
        first_retry_ms: seconds(
            path,
            "delivery.first_retry_seconds",
            d.first_retry_seconds,
            defaults.first_retry_ms,
        )?,
        max_retry_ms: seconds(
            path,
            "delivery.max_retry_seconds",
            d.max_retry_seconds,
            defaults.max_retry_ms,
        )?,
        give_up_after_ms: seconds(
            path,
            "delivery.give_up_after_hours",
            d.give_up_after_hours.map(|h| h * 3600.0),
            defaults.give_up_after_ms,
        )?,
        timeout_ms: seconds(
            path,
            "delivery.timeout_seconds",
            d.timeout_seconds,
            defaults.timeout_ms,
        )?,
        claim_ms: seconds(
            path,
            "delivery.claim_seconds",
            d.claim_seconds,
            defaults.claim_ms,
        )?,
        batch_size: d.batch_size.unwrap_or(defaults.batch_size).clamp(1, 1000),
        keep_delivered_ms: seconds(
            path,
            "delivery.keep_delivered_days",
            d.keep_delivered_days.map(|days| days * 86_400.0),
            defaults.keep_delivered_ms,
        )?,
        enabled: d.enabled.unwrap_or(true),
    };
    if delivery.claim_ms <= delivery.timeout_ms {
        return Err(err(
            path,
            "delivery.claim_seconds: must be longer than delivery.timeout_seconds (a claim must outlive the send it covers)",
        ));
    }
    let mut reminders = ReminderSettings::default();
    if let Some(at) = &file.reminders.at {
        for (i, f) in at.iter().enumerate() {
            if !(f.is_finite() && *f > 0.0 && *f < 1.0) {
                return Err(err(
                    path,
                    format!(
                        "reminders.at[{i}]: {f} is not a fraction of the approval wait between 0 and 1 (0.5 = half way to the deadline)"
                    ),
                ));
            }
        }
        reminders.at = at.clone();
    }
    if let Some(hours) = file.reminders.review_every_hours {
        reminders.review_every_ms = seconds(
            path,
            "reminders.review_every_hours",
            Some(hours * 3600.0),
            0,
        )? as i64;
    }
    let known_environments = || {
        environments
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut escalate_to = BTreeMap::new();
    for (environment, who) in &file.escalate_to {
        if !environments.iter().any(|e| e.name.as_str() == environment) {
            return Err(err(
                path,
                format!(
                    "escalate_to.{environment}: unknown environment (known: {})",
                    known_environments()
                ),
            ));
        }
        let mut recipients = Vec::new();
        for (i, item) in who.items().into_iter().enumerate() {
            let at = format!("escalate_to.{environment}[{i}]");
            if item.contains('@') {
                check_address(path, &at, &item)?;
                recipients.push(Recipient::Address(item));
            } else {
                let role: Role = item
                    .parse()
                    .map_err(|e| err(path, format!("{at}: {e} (or give an email address)")))?;
                recipients.push(Recipient::Role(role));
            }
        }
        escalate_to.insert(environment.clone(), recipients);
    }
    let mut channels = Vec::new();
    let mut disabled = Vec::new();
    for (name, entry) in &file.channels {
        let at = format!("channels.{name}");
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(err(
                path,
                format!("{at}: a channel name is 1 to 64 letters, digits, - or _"),
            ));
        }
        if let Some(list) = &entry.environments {
            for (i, environment) in list.iter().enumerate() {
                if !environments.iter().any(|e| e.name.as_str() == environment) {
                    return Err(err(
                        path,
                        format!(
                            "{at}.environments[{i}]: unknown environment \"{environment}\" (known: {})",
                            known_environments()
                        ),
                    ));
                }
            }
        }
        let route = Route {
            kinds: entry.events.clone(),
            environments: entry.environments.clone(),
            min_risk: entry.min_risk,
        };
        let unused = |fields: &[(&str, bool)]| -> Result<(), ConfigError> {
            match fields.iter().find(|(_, present)| *present) {
                Some((field, _)) => Err(err(
                    path,
                    format!("{at}.{field}: not a setting of a {} channel", entry.kind),
                )),
                None => Ok(()),
            }
        };
        let present = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
        let kind = match entry.kind.as_str() {
            "slack" | "webhook" => {
                unused(&[
                    ("ca_file", entry.ca_file.is_some()),
                    ("smtp_server", entry.smtp_server.is_some()),
                    ("security", entry.security.is_some()),
                    ("username", entry.username.is_some()),
                    ("password", entry.password.is_some()),
                    ("from", entry.from.is_some()),
                    ("recipients", entry.recipients.is_some()),
                ])?;
                let url = entry.url.as_deref().unwrap_or("").trim().to_owned();
                if url.is_empty() {
                    disabled.push((name.clone(), format!("{at}.url is empty")));
                    continue;
                }
                check_http_url(path, &format!("{at}.url"), &url)?;
                if entry.kind == "slack" {
                    unused(&[("secret", entry.secret.is_some())])?;
                    ChannelKind::Slack {
                        url: Secret::new(url),
                    }
                } else {
                    if !present(&entry.secret) {
                        return Err(err(
                            path,
                            format!(
                                "{at}.secret: a webhook needs a shared secret to sign its bodies (X-Sluice-Signature); give it as ${{VAR}}"
                            ),
                        ));
                    }
                    ChannelKind::Webhook {
                        url: Secret::new(url),
                        secret: Secret::new(entry.secret.clone().unwrap_or_default()),
                    }
                }
            }
            "email" => {
                unused(&[
                    ("url", entry.url.is_some()),
                    ("secret", entry.secret.is_some()),
                ])?;
                let server = entry.smtp_server.as_deref().unwrap_or("").trim().to_owned();
                if server.is_empty() {
                    disabled.push((name.clone(), format!("{at}.smtp_server is empty")));
                    continue;
                }
                let security = entry.security.unwrap_or(SmtpSecurity::Starttls);
                let (host, port) = match server.rsplit_once(':') {
                    Some((host, port)) => (
                        host.to_owned(),
                        port.parse::<u16>().map_err(|_| {
                            err(
                                path,
                                format!("{at}.smtp_server: \"{port}\" is not a port number"),
                            )
                        })?,
                    ),
                    None => (
                        server.clone(),
                        match security {
                            SmtpSecurity::Tls => 465,
                            SmtpSecurity::Starttls => 587,
                            SmtpSecurity::None => 25,
                        },
                    ),
                };
                if host.is_empty() || host.contains('/') || host.contains(' ') {
                    return Err(err(
                        path,
                        format!("{at}.smtp_server: give host or host:port"),
                    ));
                }
                let from = entry
                    .from
                    .clone()
                    .unwrap_or_else(|| "sluice@localhost".into());
                check_address(path, &format!("{at}.from"), &from)?;
                let recipients = entry
                    .recipients
                    .as_ref()
                    .map(OneOrMany::items)
                    .unwrap_or_default();
                for (i, r) in recipients.iter().enumerate() {
                    check_address(path, &format!("{at}.recipients[{i}]"), r)?;
                }
                let ca_pem = match entry.ca_file.as_deref().map(str::trim) {
                    None | Some("") => None,
                    Some(file) => {
                        let pem = std::fs::read(file).map_err(|e| {
                            err(path, format!("{at}.ca_file: cannot read {file}: {e}"))
                        })?;
                        lettre::transport::smtp::client::Certificate::from_pem(&pem).map_err(
                            |e| {
                                err(
                                    path,
                                    format!("{at}.ca_file: {file} holds no PEM certificate: {e}"),
                                )
                            },
                        )?;
                        if security == SmtpSecurity::None {
                            return Err(err(
                                path,
                                format!(
                                    "{at}.ca_file: given with security: none, which uses no TLS"
                                ),
                            ));
                        }
                        Some(pem)
                    }
                };
                if present(&entry.username) != present(&entry.password) {
                    return Err(err(
                        path,
                        format!("{at}: give both username and password, or neither"),
                    ));
                }
                ChannelKind::Email(EmailSettings {
                    host,
                    port,
                    security,
                    username: entry
                        .username
                        .clone()
                        .filter(|s| !s.trim().is_empty())
                        .map(Secret::new),
                    password: entry
                        .password
                        .clone()
                        .filter(|s| !s.is_empty())
                        .map(Secret::new),
                    from,
                    recipients,
                    ca_pem,
                })
            }
            other => {
                return Err(err(
                    path,
                    format!(
                        "{at}.type: unknown channel type \"{other}\" (known: slack, email, webhook)"
                    ),
                ));
            }
        };
        channels.push(ChannelConfig {
            name: name.clone(),
            kind,
            route,
        });
    }
    Ok(NotificationConfig {
        delivery,
        reminders,
        escalate_to,
        channels,
        disabled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<NotificationConfig, ConfigError> {
        let dir = std::env::temp_dir().join(format!(
            "sluice-notify-config-{}",
            std::process::id() as u64 * 1000 + text.len() as u64
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notifications.yml");
        std::fs::write(&path, text).unwrap();
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let environments = super::super::tests_support::environments();
        load_notifications(&path, &environments, &|name| env.get(name).cloned())
    }

    #[test]
    fn legacy_variables_feed_the_channels_and_empty_ones_turn_them_off() {
        let text = "channels:\n  slack:\n    type: slack\n    url: ${SLACK_WEBHOOK_URL:-}\n  email:\n    type: email\n    smtp_server: ${SMTP_SERVER:-}\n    recipients: ${EMAIL_RECIPIENTS:-}\n";
        let off = load(text, &[]).unwrap();
        assert!(off.channels.is_empty());
        assert_eq!(off.disabled.len(), 2);
        let on = load(
            text,
            &[
                (
                    "SLACK_WEBHOOK_URL",
                    "https://hooks.slack.com/services/T/B/x",
                ),
                ("SMTP_SERVER", "smtp.company.com"),
                ("EMAIL_RECIPIENTS", "admin@company.com, dataops@company.com"),
            ],
        )
        .unwrap();
        assert_eq!(on.channels.len(), 2);
        let ChannelKind::Email(email) = &on.channel("email").unwrap().kind else {
            panic!("email channel")
        };
        assert_eq!((email.host.as_str(), email.port), ("smtp.company.com", 587));
        assert_eq!(email.recipients.len(), 2);
    }

    #[test]
    fn mistakes_name_the_key_and_never_show_a_secret() {
        let bad_url = load(
            "channels:\n  ops:\n    type: slack\n    url: ${HOOK}\n",
            &[("HOOK", "hooks.slack.com/services/SECRETPART")],
        )
        .unwrap_err()
        .to_string();
        assert!(bad_url.contains("channels.ops.url"), "{bad_url}");
        assert!(!bad_url.contains("SECRETPART"), "{bad_url}");
        let kind = load(
            "channels:\n  ops:\n    type: teams\n    url: https://x\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            kind.contains("channels.ops.type: unknown channel type \"teams\""),
            "{kind}"
        );
        let event = load(
            "channels:\n  ops:\n    type: slack\n    url: https://x.example\n    events: [aproved]\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(event.contains("channels.ops.events[0]"), "{event}");
        assert!(event.contains("unknown event \"aproved\""), "{event}");
        let secret = load(
            "channels:\n  sink:\n    type: webhook\n    url: https://x.example/in\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(secret.contains("channels.sink.secret"), "{secret}");
        let ca = load(
            "channels:\n  mail:\n    type: email\n    smtp_server: relay.internal\n    ca_file: /nonexistent/ca.pem\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            ca.contains("channels.mail.ca_file: cannot read /nonexistent/ca.pem"),
            "{ca}"
        );
        let fraction = load("reminders:\n  at: [0.5, 1.5]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(fraction.contains("reminders.at[1]"), "{fraction}");
        let escalation = load("escalate_to:\n  prod: cto\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            escalation.contains("escalate_to.prod: unknown environment"),
            "{escalation}"
        );
        let role = load("escalate_to:\n  production: [cfo]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(role.contains("escalate_to.production[0]"), "{role}");
    }
}
