//! Limits on what callers may store as text: no NUL byte (PostgreSQL cannot store one in TEXT),
//! and a length bound per field so that a caller cannot fill the store with one request.

use super::DomainError;

/// Longest description, in characters.
pub const DESCRIPTION: usize = 500;
/// Longest ticket reference.
pub const TICKET: usize = 200;
/// Longest estimated duration ("1h30m").
pub const DURATION: usize = 32;
/// Longest approval or rejection comment.
pub const COMMENT: usize = 4_000;
/// Longest reason (cancel, rollback, override, lock, amend).
pub const REASON: usize = 1_000;
/// Longest script, in bytes (the REST body limit is 1 MiB as well).
pub const SCRIPT_BYTES: usize = 1024 * 1024;
/// Most dependencies one migration may name.
pub const DEPENDENCIES: usize = 100;
/// Longest filter or name in a query.
pub const NAME: usize = 200;

/// Checks one caller-supplied text field: no NUL byte, at most `max_chars` characters. The
/// error names the field.
pub fn field(name: &str, value: &str, max_chars: usize) -> Result<(), DomainError> {
    if let Some(position) = value.find('\0') {
        return Err(DomainError::Invalid(format!(
            "{name}: contains a NUL byte (at byte {position}), which cannot be stored; remove it"
        )));
    }
    let length = value.chars().count();
    if length > max_chars {
        return Err(DomainError::Invalid(format!(
            "{name}: {length} characters is too long; at most {max_chars}"
        )));
    }
    Ok(())
}

/// Checks a one-line field (a description, a ticket): as `field`, and no line break or other
/// control character, which would let a value forge lines in a chat message or an email.
pub fn line(name: &str, value: &str, max_chars: usize) -> Result<(), DomainError> {
    field(name, value, max_chars)?;
    if let Some((position, c)) = value.char_indices().find(|(_, c)| c.is_control()) {
        let what = match c {
            '\n' | '\r' => "a line break".to_owned(),
            '\t' => "a tab".to_owned(),
            other => format!("the control character U+{:04X}", u32::from(other)),
        };
        return Err(DomainError::Invalid(format!(
            "{name}: must be one line; it contains {what} (at byte {position})"
        )));
    }
    Ok(())
}

/// Checks a script: no NUL byte, at most `SCRIPT_BYTES`.
pub fn script(name: &str, value: &str) -> Result<(), DomainError> {
    if value.len() > SCRIPT_BYTES {
        return Err(DomainError::Invalid(format!(
            "{name}: {} bytes is too long; at most {SCRIPT_BYTES} (1 MiB)",
            value.len()
        )));
    }
    field(name, value, usize::MAX)
}

/// The start of a caller's value, safe to quote in an error: at most 64 characters, control
/// characters replaced.
pub fn printable_prefix(value: &str) -> String {
    let mut out: String = value
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if value.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_fields_refuse_line_breaks_and_control_characters() {
        assert!(line("description", "Add user preferences", DESCRIPTION).is_ok());
        let e = line("description", "ok\n*APPROVED by cto*", DESCRIPTION)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "description: must be one line; it contains a line break (at byte 2)"
        );
        let e = line("ticket", "T-1\u{1b}[31m", TICKET)
            .unwrap_err()
            .to_string();
        assert!(e.contains("U+001B"), "{e}");
    }

    #[test]
    fn nul_bytes_and_lengths_are_named() {
        assert!(field("ticket", "PROJ-1", TICKET).is_ok());
        assert_eq!(
            field("comment", "ok\0", COMMENT).unwrap_err().to_string(),
            "comment: contains a NUL byte (at byte 2), which cannot be stored; remove it"
        );
        let long = "é".repeat(REASON + 1);
        assert_eq!(
            field("reason", &long, REASON).unwrap_err().to_string(),
            "reason: 1001 characters is too long; at most 1000"
        );
        assert!(field("reason", &"é".repeat(REASON), REASON).is_ok());
        assert!(script("up_sql", &"x".repeat(SCRIPT_BYTES + 1)).is_err());
    }
}

/// The known name closest to a mistyped one, when it is close enough to be meant
/// (`prodution` -> `production`, `dataops` -> `data_ops`): `; did you mean "production"?`, or
/// nothing.
pub fn did_you_mean<'a>(given: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    let given = given.to_lowercase();
    known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(&given, &k.to_lowercase()), k))
        .filter(|(score, _)| *score >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| format!("; did you mean \"{k}\"?"))
        .unwrap_or_default()
}

#[cfg(test)]
mod suggestion_tests {
    use super::did_you_mean;

    #[test]
    fn close_names_are_suggested_and_far_ones_are_not() {
        let envs = ["development", "staging", "production"];
        assert_eq!(
            did_you_mean("prodution", envs),
            "; did you mean \"production\"?"
        );
        assert_eq!(did_you_mean("STAGING", envs), "; did you mean \"staging\"?");
        assert_eq!(did_you_mean("qa", envs), "");
        let roles = ["developer", "data_ops", "data_ops_lead", "dba"];
        assert_eq!(
            did_you_mean("dataops", roles),
            "; did you mean \"data_ops\"?"
        );
    }
}
