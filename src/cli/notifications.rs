//! `sluice notifications` and `sluice notify`: what the daemon could not deliver yet, requeueing
//! a dead notification, channel health and test messages.

use super::*;

pub(super) async fn list(
    client: &mut Client,
    dead: bool,
    limit: i64,
    retry: Option<String>,
    output: Output,
) -> CliResult {
    if let Some(id) = retry {
        let request = client.request(pb::RetryNotificationRequest { id })?;
        let n = client
            .inner
            .retry_notification(request)
            .await
            .map_err(|s| client.failed(s))?
            .into_inner();
        return match output {
            Output::Json => print_json(&n),
            Output::Table => {
                println!(
                    "notification {} ({} via {}) requeued: {}",
                    n.id,
                    n.kind,
                    n.channel,
                    printable(&n.subject)
                );
                Ok(())
            }
        };
    }
    let request = client.request(pb::ListNotificationsRequest {
        state: if dead { "dead" } else { "pending" }.into(),
        limit: Some(limit),
    })?;
    let list = client
        .inner
        .list_notifications(request)
        .await
        .map_err(|s| client.failed(s))?
        .into_inner();
    match output {
        Output::Json => print_json(&list),
        Output::Table => {
            if list.notifications.is_empty() {
                println!(
                    "{}",
                    if dead {
                        "no dead notification"
                    } else {
                        "nothing waiting to be delivered"
                    }
                );
                return Ok(());
            }
            println!(
                "{:>6}  {:<10}  {:>8}  {:<24}  SUBJECT / LAST ERROR",
                "ID", "CHANNEL", "ATTEMPTS", "CREATED"
            );
            for n in &list.notifications {
                println!(
                    "{:>6}  {:<10}  {:>8}  {:<24}  {}",
                    n.id,
                    printable(&n.channel),
                    n.attempts,
                    n.created_at,
                    printable(&n.subject)
                );
                if !n.last_error.text().is_empty() {
                    println!("{:>54}  last error: {}", "", printable(n.last_error.text()));
                }
                if !dead && !n.next_attempt_at.text().is_empty() {
                    println!("{:>54}  next attempt: {}", "", n.next_attempt_at.text());
                }
            }
            if dead {
                println!("requeue one with: sluice notifications --retry <ID>");
            }
            Ok(())
        }
    }
}

pub(super) async fn test(client: &mut Client, channel: String, output: Output) -> CliResult {
    let request = client.request(pb::TestNotificationRequest { channel })?;
    let result = client
        .inner
        .test_notification(request)
        .await
        .map_err(|s| client.failed(s))?
        .into_inner();
    match output {
        Output::Json => print_json(&result)?,
        Output::Table => println!(
            "{}: {} in {} ms: {}",
            result.channel,
            if result.delivered {
                "delivered"
            } else {
                "NOT delivered"
            },
            result.duration_ms,
            printable(&result.answer)
        ),
    }
    if result.delivered {
        Ok(())
    } else {
        Err(Failure::operation(format!(
            "the test message through {} was not delivered",
            result.channel
        )))
    }
}

pub(super) async fn channels(client: &mut Client, output: Output) -> CliResult {
    let request = client.request(pb::ListNotificationChannelsRequest {})?;
    let list = client
        .inner
        .list_notification_channels(request)
        .await
        .map_err(|s| client.failed(s))?
        .into_inner();
    match output {
        Output::Json => print_json(&list),
        Output::Table => {
            if list.channels.is_empty() {
                println!("no notification channel (see config/notifications.yml)");
            }
            for c in &list.channels {
                if !c.enabled {
                    println!(
                        "{:<12} off ({})",
                        c.name,
                        printable(c.disabled_reason.text())
                    );
                    continue;
                }
                println!(
                    "{:<12} {:<8} delivered {}, pending {}, dead {}; last success {}",
                    c.name,
                    c.r#type,
                    c.delivered,
                    c.pending,
                    c.dead,
                    if c.last_success_at.text().is_empty() {
                        "never"
                    } else {
                        c.last_success_at.text()
                    }
                );
                if !c.last_error.text().is_empty() {
                    println!(
                        "{:<12} last error at {}: {}",
                        "",
                        c.last_error_at.text(),
                        printable(c.last_error.text())
                    );
                }
            }
            Ok(())
        }
    }
}
