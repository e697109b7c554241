//! `sluice validate`'s machine-readable outputs: JSON, SARIF 2.1.0 (GitHub code scanning and
//! other CI tools read it) and GitHub Actions workflow commands (annotations on the diff).

use super::scripts::Problem;
use serde_json::{Value, json};

/// The rule id of a problem that is not a finding (header, syntax, forbidden statement).
const ERROR_RULE: &str = "sluice-script-error";

pub(super) fn json(p: &Problem) -> Value {
    json!({
        "path": p.path,
        "line": p.line,
        "column": p.column,
        "rule": p.rule.as_deref().unwrap_or(ERROR_RULE),
        "severity": p.level(),
        "risk": p.risk.map(|r| r.as_str()),
        "message": p.message,
        "fix": p.fix,
        "ignored": p.ignored,
    })
}

pub(super) fn sarif(problems: &[Problem]) -> Value {
    let mut rules: Vec<&str> = problems
        .iter()
        .map(|p| p.rule.as_deref().unwrap_or(ERROR_RULE))
        .collect();
    rules.sort_unstable();
    rules.dedup();
    let results: Vec<Value> = problems
        .iter()
        .map(|p| {
            let mut text = p.message.clone();
            if let Some(fix) = &p.fix {
                text.push_str(&format!(" Fix: {fix}"));
            }
            let mut region = json!({"startLine": p.line.max(1)});
            if p.column > 0 {
                region["startColumn"] = p.column.into();
            }
            let mut result = json!({
                "ruleId": p.rule.as_deref().unwrap_or(ERROR_RULE),
                "level": p.level(),
                "message": {"text": text},
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": {"uri": uri(&p.path)},
                        "region": region,
                    }
                }],
            });
            if let Some(reason) = &p.ignored {
                result["suppressions"] = json!([{"kind": "inSource", "justification": reason}]);
            }
            result
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {
                "driver": {
                    "name": "sluice",
                    "version": env!("CARGO_PKG_VERSION"),
                    "rules": rules.iter().map(|r| json!({"id": r})).collect::<Vec<_>>(),
                }
            },
            "results": results,
        }]
    })
}

/// A relative path with forward slashes, as SARIF's artifact URIs want.
fn uri(path: &std::path::Path) -> String {
    path.to_string_lossy()
        .trim_start_matches("./")
        .replace('\\', "/")
}

/// `::error file=...,line=...,col=...,title=...::message` (notice for silenced findings).
pub(super) fn github(p: &Problem) -> String {
    let command = match p.level() {
        "note" => "notice",
        level => level,
    };
    let mut properties = format!("file={},line={}", property(&uri(&p.path)), p.line.max(1));
    if p.column > 0 {
        properties.push_str(&format!(",col={}", p.column));
    }
    properties.push_str(&format!(
        ",title={}",
        property(p.rule.as_deref().unwrap_or(ERROR_RULE))
    ));
    let mut text = p.message.clone();
    if let Some(fix) = &p.fix {
        text.push_str(&format!("\nFix: {fix}"));
    }
    if let Some(reason) = &p.ignored {
        text.push_str(&format!("\nIgnored: {reason}"));
    }
    format!("::{command} {properties}::{}", data(&text))
}

/// Workflow command escaping of the message.
fn data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Workflow command escaping of a property value.
fn property(text: &str) -> String {
    data(text).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Risk;

    #[test]
    fn github_annotations_escape_what_would_end_them() {
        let p = Problem {
            path: "scripts/a,b:c.sql".into(),
            line: 3,
            column: 5,
            message: "50% of rows\nare gone".into(),
            rule: Some("sluice-unguarded-delete".into()),
            risk: Some(Risk::High),
            fix: None,
            ignored: None,
            rollback_note: false,
            advisory: false,
        };
        assert_eq!(
            github(&p),
            "::error file=scripts/a%2Cb%3Ac.sql,line=3,col=5,title=sluice-unguarded-delete::50%25 of rows%0Aare gone"
        );
    }
}
