//! How a notice reads in each channel: Slack Block Kit, an email's text and HTML bodies, and
//! the webhook's JSON. Everything a user wrote (descriptions, comments, errors) is escaped for
//! the medium, so a description cannot ping a whole Slack workspace or inject HTML.

use crate::service::Notice;
use serde_json::{Value, json};

/// Slack's mrkdwn escapes: `<`, `>` and `&` (which would otherwise form `<!channel>` or links).
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Cuts `text` to at most `max` characters, saying so.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The lines every medium shows, as (label, value) pairs, in order.
fn facts(notice: &Notice) -> Vec<(&'static str, String)> {
    let mut facts = Vec::new();
    if let Some(environment) = &notice.environment {
        facts.push(("Environment", environment.clone()));
    }
    if let Some(m) = &notice.migration {
        let mut risk = m.effective_risk.to_uppercase();
        if !m.declared_risk.eq_ignore_ascii_case(&m.effective_risk) {
            risk.push_str(&format!(" (declared {})", m.declared_risk.to_uppercase()));
        }
        if !m.why.is_empty() {
            risk.push_str(": ");
            risk.push_str(&m.why.join("; "));
        }
        facts.push(("Risk", risk));
        facts.push(("Author", m.author.clone()));
        if !m.ticket.is_empty() {
            facts.push(("Ticket", m.ticket.clone()));
        }
    }
    if let Some(state) = notice.state {
        facts.push(("State", state.to_string()));
    }
    if !notice.approvals.is_empty() {
        facts.push((
            "Approved by",
            notice
                .approvals
                .iter()
                .map(|a| format!("{} ({})", a.approver, a.role))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    if !notice.missing_roles.is_empty() {
        facts.push((
            "Still needed",
            notice
                .missing_roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    if let Some(deadline) = &notice.deadline {
        facts.push(("Deadline", deadline.clone()));
    }
    if let Some(reason) = &notice.reason {
        facts.push(("Reason", reason.clone()));
    }
    if let Some(error) = &notice.error {
        facts.push(("Error", error.clone()));
    }
    if let Some(note) = &notice.note {
        facts.push(("Note", note.clone()));
    }
    facts.push(("By", notice.actor.clone()));
    facts
}

fn title(notice: &Notice) -> String {
    match &notice.migration {
        Some(m) => format!("{}: {}", notice.kind.headline(), m.id),
        None => match &notice.environment {
            Some(environment) => format!("{}: {environment}", notice.kind.headline()),
            None => notice.kind.headline().to_owned(),
        },
    }
}

/// A Slack incoming-webhook message: a fallback `text` and Block Kit `blocks`.
pub fn slack(notice: &Notice) -> Value {
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": cut(&title(notice), 150)},
    })];
    if let Some(m) = &notice.migration {
        // What users wrote goes out as plain text: no bold, code fence or quote of theirs is
        // read as formatting; `<`, `>` and `&` escaped as Slack asks of every text.
        blocks.push(json!({
            "type": "section",
            "text": {"type": "plain_text", "text": cut(&slack_escape(&m.description), 3000), "emoji": false},
        }));
    }
    let fields: Vec<Value> = facts(notice)
        .into_iter()
        .take(10)
        .map(|(label, value)| {
            json!({"type": "plain_text", "text": cut(&format!("{label}: {}", slack_escape(&value)), 2000), "emoji": false})
        })
        .collect();
    blocks.push(json!({"type": "section", "fields": fields}));
    let mentions: Vec<String> = notice
        .recipients
        .iter()
        .filter_map(|r| r.slack.as_ref().map(|id| format!("<@{id}>")))
        .collect();
    if !mentions.is_empty() {
        let ask = match notice.kind {
            crate::domain::notice::NoticeKind::ApprovalRequested
            | crate::domain::notice::NoticeKind::Reminder
            | crate::domain::notice::NoticeKind::Escalation => "your approval is needed",
            crate::domain::notice::NoticeKind::ReviewOwed => "your review is owed",
            _ => "for your information",
        };
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": format!("{}: {ask}", mentions.join(" "))},
        }));
    }
    if !notice.commands.is_empty() {
        // The commands are built from validated identifiers and fixed words: no user text.
        let text = notice
            .commands
            .iter()
            .map(|c| format!("`{}`", slack_escape(c)))
            .collect::<Vec<_>>()
            .join("\n");
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": cut(&format!("*In a terminal*\n{text}"), 2000)},
        }));
    }
    if let Some(link) = &notice.link {
        blocks.push(json!({
            "type": "actions",
            "elements": [{
                "type": "button",
                "text": {"type": "plain_text", "text": "Open in Sluice"},
                "url": link,
            }],
        }));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": format!("sluice event {} · {}", notice.event_id, notice.at)}],
    }));
    json!({
        "text": slack_escape(&notice.subject()),
        "blocks": blocks,
    })
}

/// An email's plain-text body.
pub fn email_text(notice: &Notice) -> String {
    let mut out = format!("{}\n\n", title(notice));
    if let Some(m) = &notice.migration {
        out.push_str(&m.description);
        out.push_str("\n\n");
    }
    for (label, value) in facts(notice) {
        out.push_str(&format!("{label}: {value}\n"));
    }
    if !notice.commands.is_empty() {
        out.push_str("\nIn a terminal:\n");
        for command in &notice.commands {
            out.push_str(&format!("  {command}\n"));
        }
    }
    if let Some(link) = &notice.link {
        out.push_str(&format!("\n{link}\n"));
    }
    out.push_str(&format!(
        "\n-- \nsluice event {} at {}\n",
        notice.event_id, notice.at
    ));
    out
}

/// An email's HTML body.
pub fn email_html(notice: &Notice) -> String {
    let mut out = format!(
        "<!DOCTYPE html><html><body><h2>{}</h2>",
        html_escape(&title(notice))
    );
    if let Some(m) = &notice.migration {
        out.push_str(&format!("<p>{}</p>", html_escape(&m.description)));
    }
    out.push_str("<table>");
    for (label, value) in facts(notice) {
        out.push_str(&format!(
            "<tr><th align=\"left\">{label}</th><td>{}</td></tr>",
            html_escape(&value)
        ));
    }
    out.push_str("</table>");
    if !notice.commands.is_empty() {
        out.push_str("<p>In a terminal:</p><pre>");
        for command in &notice.commands {
            out.push_str(&html_escape(command));
            out.push('\n');
        }
        out.push_str("</pre>");
    }
    if let Some(link) = &notice.link {
        out.push_str(&format!(
            "<p><a href=\"{0}\">{0}</a></p>",
            html_escape(link)
        ));
    }
    out.push_str(&format!(
        "<p style=\"color:#888\">sluice event {} at {}</p></body></html>",
        html_escape(&notice.event_id),
        html_escape(&notice.at)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::notice::NoticeKind;
    use crate::service::notifications::{NoticeMigration, NoticeRecipient};

    fn notice(description: &str) -> Notice {
        Notice {
            event_id: "e1".into(),
            kind: NoticeKind::ApprovalRequested,
            at: "2026-11-25T10:00:00.000Z".into(),
            actor: "dev".into(),
            environment: Some("production".into()),
            deployment_id: Some("d".into()),
            state: None,
            migration: Some(NoticeMigration {
                id: "20261125100000_add_index".into(),
                description: description.into(),
                kind: "schema_change".into(),
                author: "dev".into(),
                ticket: "DATA-1".into(),
                declared_risk: "low".into(),
                effective_risk: "medium".into(),
                why: vec!["line 1: CREATE INDEX without CONCURRENTLY".into()],
            }),
            approvals: vec![],
            missing_roles: vec![crate::domain::Role::Dba],
            deadline: Some("2026-11-26T10:00:00.000Z".into()),
            error: None,
            reason: None,
            link: None,
            commands: vec![
                "sluice show 20261125100000_add_index production".into(),
                "sluice approve 20261125100000_add_index dba <your name> \"<what you checked>\" --environment production".into(),
            ],
            recipients: vec![NoticeRecipient {
                name: "dba".into(),
                email: None,
                slack: Some("U123ABC".into()),
            }],
            addresses: vec![],
            note: None,
        }
    }

    #[test]
    fn slack_messages_escape_what_users_wrote_and_mention_approvers() {
        let message = slack(&notice("<!channel> drop *everything* & more\n> quoted"));
        let text = message.to_string();
        // What users wrote is only ever in plain_text objects (Slack reads no mention, link
        // or formatting there); every mrkdwn object is Sluice's own words.
        let mut objects = Vec::new();
        for block in message["blocks"].as_array().unwrap() {
            objects.extend(block.get("text").cloned());
            for field in block["fields"].as_array().into_iter().flatten() {
                objects.push(field.clone());
            }
        }
        for object in &objects {
            let body = object["text"].as_str().unwrap();
            if body.contains("everything") || body.contains("Author") {
                assert_eq!(object["type"], "plain_text", "{object}");
            }
            if object["type"] == "mrkdwn" {
                assert!(!body.contains("<!channel>"), "{object}");
            }
        }
        assert!(!text.contains("<!channel>"), "{text}");
        assert!(text.contains("&lt;!channel&gt;"), "{text}");
        assert!(
            text.contains("<@U123ABC>: your approval is needed"),
            "{text}"
        );
        assert!(text.contains("MEDIUM (declared LOW)"), "{text}");
        assert_eq!(message["blocks"][0]["type"], "header");
    }

    #[test]
    fn email_subjects_sort_and_html_is_escaped() {
        let n = notice("<script>alert(1)</script>");
        assert_eq!(
            n.subject(),
            "[sluice][production] approval needed: 20261125100000_add_index (MEDIUM)"
        );
        let html = email_html(&n);
        assert!(!html.contains("<script>"), "{html}");
        assert!(email_text(&n).contains("Still needed: dba"));
    }

    #[test]
    fn every_medium_says_what_to_run_and_links_no_rest_url() {
        let n = notice("add an index");
        let slack = slack(&n).to_string();
        let text = email_text(&n);
        let html = email_html(&n);
        for body in [&slack, &text, &html] {
            assert!(
                body.contains("sluice show 20261125100000_add_index production"),
                "{body}"
            );
            assert!(
                body.contains("sluice approve 20261125100000_add_index dba"),
                "{body}"
            );
            assert!(!body.contains("/api/v1/"), "{body}");
            assert!(!body.contains("Open in Sluice"), "{body}");
        }
    }
}
