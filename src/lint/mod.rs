//! Reads SQL without running it: splits a script into statements (squawk's PostgreSQL lexer, so
//! dollar quoting, nested comments and string literals are handled as the server would), tells
//! which statements cannot run inside a transaction, and finds operations that raise a
//! migration's risk. Pure: no I/O.

use crate::domain::Risk;
use squawk_lexer::{TokenKind, tokenize};

/// One statement of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The statement's text from its first significant token, without the terminating
    /// semicolon (comments before the statement are left out).
    pub text: String,
    /// 1-based line of the statement's first significant token in the script.
    pub line: usize,
    /// Upper-cased leading keywords (up to eight), for classification.
    pub keywords: Vec<String>,
}

impl Statement {
    fn starts_with(&self, words: &[&str]) -> bool {
        self.keywords.len() >= words.len() && self.keywords.iter().zip(words).all(|(a, b)| a == b)
    }

    /// `BEGIN`, `START TRANSACTION`, `COMMIT`, `END`: Sluice supplies its own transaction, so
    /// these are dropped from scripts (with a note in the deployment log).
    pub fn is_transaction_wrapper(&self) -> bool {
        let k = &self.keywords;
        let begin = self.starts_with(&["BEGIN"])
            && k.get(1)
                .is_none_or(|w| matches!(w.as_str(), "TRANSACTION" | "WORK" | "ISOLATION"));
        begin
            || self.starts_with(&["START", "TRANSACTION"])
            || (self.starts_with(&["COMMIT"]) && k.len() <= 2)
            || (self.starts_with(&["END"]) && k.len() <= 2)
    }

    /// Statements that end or split the transaction in ways a migration must not.
    pub fn is_forbidden_transaction_control(&self) -> bool {
        ["ROLLBACK", "SAVEPOINT", "RELEASE", "ABORT"]
            .iter()
            .any(|w| self.starts_with(&[w]))
            || self.starts_with(&["PREPARE", "TRANSACTION"])
    }

    /// Statements PostgreSQL refuses to run inside a transaction block.
    pub fn requires_no_transaction(&self) -> bool {
        let concurrently = self.keywords.iter().any(|w| w == "CONCURRENTLY");
        (concurrently
            && (self.starts_with(&["CREATE"])
                || self.starts_with(&["DROP", "INDEX"])
                || self.starts_with(&["REINDEX"])))
            || self.starts_with(&["VACUUM"])
            || self.starts_with(&["CREATE", "DATABASE"])
            || self.starts_with(&["DROP", "DATABASE"])
            || self.starts_with(&["CREATE", "TABLESPACE"])
            || self.starts_with(&["DROP", "TABLESPACE"])
            || self.starts_with(&["ALTER", "SYSTEM"])
            || self.starts_with(&["REINDEX", "DATABASE"])
            || self.starts_with(&["REINDEX", "SYSTEM"])
    }
}

fn is_trivia(kind: TokenKind) -> bool {
    matches!(
        kind,
        TokenKind::Whitespace | TokenKind::LineComment | TokenKind::BlockComment { .. }
    )
}

/// An error in a script's lexical structure, with its line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct SplitError {
    pub line: usize,
    pub message: String,
}

/// Splits a script into statements. Empty statements (only comments or whitespace) are dropped.
pub fn split_statements(sql: &str) -> Result<Vec<Statement>, SplitError> {
    let mut statements = Vec::new();
    let mut offset = 0usize;
    let mut line = 1usize;
    let mut start = 0usize;
    let mut first_line: Option<usize> = None;
    let mut first_offset = 0usize;
    let mut keywords: Vec<String> = Vec::new();
    // Inside `BEGIN ATOMIC ... END` (an SQL-standard function body) semicolons do not end the
    // statement.
    let mut atomic_depth = 0usize;
    let mut previous_word = String::new();
    for token in tokenize(sql) {
        let len = token.len as usize;
        let text = &sql[offset..offset + len];
        let token_line = line;
        match token.kind {
            TokenKind::Literal { kind } => {
                use squawk_lexer::LiteralKind as L;
                let terminated = match kind {
                    L::Str { terminated }
                    | L::NationalStr { terminated }
                    | L::ByteStr { terminated }
                    | L::BitStr { terminated }
                    | L::DollarQuotedString { terminated }
                    | L::UnicodeEscStr { terminated }
                    | L::EscStr { terminated } => terminated,
                    _ => true,
                };
                if !terminated {
                    return Err(SplitError {
                        line: token_line,
                        message: "unterminated string or dollar-quoted literal".into(),
                    });
                }
            }
            TokenKind::BlockComment { terminated: false } => {
                return Err(SplitError {
                    line: token_line,
                    message: "unterminated /* comment".into(),
                });
            }
            TokenKind::QuotedIdent {
                terminated: false, ..
            } => {
                return Err(SplitError {
                    line: token_line,
                    message: "unterminated quoted identifier".into(),
                });
            }
            _ => {}
        }
        line += text.matches('\n').count();
        offset += len;
        if token.kind == TokenKind::Semi && atomic_depth == 0 {
            push_statement(
                &mut statements,
                &sql[first_offset.max(start)..offset - len],
                first_line,
                &mut keywords,
            );
            start = offset;
            first_line = None;
            previous_word.clear();
            continue;
        }
        if is_trivia(token.kind) {
            continue;
        }
        if first_line.is_none() {
            first_line = Some(token_line);
            first_offset = offset - len;
        }
        if token.kind == TokenKind::Ident {
            let word = text.to_ascii_uppercase();
            if word == "ATOMIC" && previous_word == "BEGIN" {
                atomic_depth += 1;
            } else if word == "END" && atomic_depth > 0 {
                atomic_depth -= 1;
            }
            if keywords.len() < 8 {
                keywords.push(word.clone());
            }
            previous_word = word;
        } else if keywords.len() < 8 {
            keywords.push(text.to_owned());
            previous_word.clear();
        }
    }
    push_statement(
        &mut statements,
        &sql[first_offset.max(start)..],
        first_line,
        &mut keywords,
    );
    Ok(statements)
}

fn push_statement(
    statements: &mut Vec<Statement>,
    text: &str,
    first_line: Option<usize>,
    keywords: &mut Vec<String>,
) {
    if let Some(line) = first_line {
        statements.push(Statement {
            text: text.trim().to_owned(),
            line,
            keywords: std::mem::take(keywords),
        });
    }
    keywords.clear();
}

/// A reason the analysis raises a migration's risk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub line: usize,
    pub risk: Risk,
    /// The squawk rule that found it (e.g. `ban-drop-column`), or `sluice` for Sluice's own.
    pub rule: String,
    pub message: String,
}

/// The risk a squawk rule's violation carries, or `None` for rules that do not raise it (style
/// advice, and rules about transactions and timeouts that Sluice itself takes care of).
fn rule_risk(rule: squawk_linter::Rule) -> Option<Risk> {
    use squawk_linter::Rule as R;
    match rule {
        R::BanDropDatabase
        | R::BanDropTable
        | R::BanDropColumn
        | R::BanTruncateCascade
        | R::BanDropSchema => Some(Risk::High),
        R::RequireConcurrentIndexCreation
        | R::RequireConcurrentIndexDeletion
        | R::RequireConcurrentReindex
        | R::RequireConcurrentPartitionDetach
        | R::ChangingColumnType
        | R::AddingNotNullableField
        | R::AddingRequiredField
        | R::AddingForeignKeyConstraint
        | R::ConstraintMissingNotValid
        | R::AddingSerialPrimaryKeyField
        | R::DisallowedUniqueConstraint
        | R::RenamingColumn
        | R::RenamingTable
        | R::BanDropNotNull => Some(Risk::Medium),
        _ => None,
    }
}

fn line_of(sql: &str, offset: usize) -> usize {
    sql[..offset.min(sql.len())].matches('\n').count() + 1
}

/// Finds operations that destroy data or take long exclusive locks: squawk's PostgreSQL rules,
/// plus Sluice's own for statements that change every row of a table.
pub fn analyse(sql: &str, statements: &[Statement]) -> Vec<Finding> {
    let parsed = squawk_syntax::SourceFile::parse(sql);
    let mut linter = squawk_linter::Linter::with_default_rules();
    // Sluice runs a script in one transaction (unless a statement refuses one), so an index on
    // a table the same script creates blocks no one.
    linter.settings.assume_in_transaction = statements
        .iter()
        .all(|statement| !statement.requires_no_transaction());
    let mut findings: Vec<Finding> = linter
        .lint(&parsed, sql)
        .into_iter()
        .filter_map(|violation| {
            let risk = rule_risk(violation.code)?;
            let mut message = violation.message.clone();
            if let Some(help) = &violation.help {
                message.push_str(&format!(" ({help})"));
            }
            Some(Finding {
                line: line_of(sql, usize::from(violation.text_range.start())),
                risk,
                rule: violation.code.to_string(),
                message,
            })
        })
        .collect();
    for statement in statements {
        let message = if statement.starts_with(&["TRUNCATE"]) {
            "truncates a table"
        } else if (statement.starts_with(&["DELETE"]) || statement.starts_with(&["UPDATE"]))
            && !statement.text.to_ascii_uppercase().contains("WHERE")
        {
            "changes every row of a table (no WHERE clause)"
        } else {
            continue;
        };
        findings.push(Finding {
            line: statement.line,
            risk: Risk::High,
            rule: "sluice".into(),
            message: message.into(),
        });
    }
    findings.sort_by_key(|f| f.line);
    findings
}

/// The higher of the declared risk and the risk the findings show.
pub fn effective_risk(declared: Risk, findings: &[Finding]) -> Risk {
    findings
        .iter()
        .map(|f| f.risk)
        .fold(declared, std::cmp::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_BATCH: &str = r#"-- Data migration
UPDATE users SET email = LOWER(email) WHERE email != LOWER(email);

DO $$
DECLARE
    batch_size INTEGER := 1000;
    processed INTEGER := 0;
BEGIN
    WHILE processed < 3 LOOP
        processed := processed + 1;
        RAISE NOTICE 'Processed % records; it''s fine', processed;
    END LOOP;
END $$;
"#;

    #[test]
    fn splits_the_seed_batch_loop_as_two_statements() {
        let statements = split_statements(SEED_BATCH).unwrap();
        assert_eq!(statements.len(), 2);
        assert_eq!(statements[0].line, 2);
        assert!(statements[0].text.starts_with("UPDATE users"));
        assert_eq!(statements[1].line, 4);
        assert!(statements[1].text.starts_with("DO $$"));
        assert!(statements[1].text.ends_with("END $$"));
    }

    #[test]
    fn semicolons_in_strings_comments_and_quoted_identifiers_do_not_split() {
        let sql = "INSERT INTO t VALUES ('a;b', E'c\\';d'); /* x; /* nested; */ y; */\nSELECT \"we;ird\" FROM t; -- trailing; comment\n";
        let statements = split_statements(sql).unwrap();
        assert_eq!(statements.len(), 2, "{statements:?}");
        assert_eq!(statements[1].line, 2);
        assert!(statements[1].text.contains("\"we;ird\""));
    }

    #[test]
    fn custom_dollar_tags_and_atomic_bodies() {
        let sql = "CREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;\nCREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END;\nSELECT 3";
        let statements = split_statements(sql).unwrap();
        assert_eq!(statements.len(), 3, "{statements:?}");
        assert!(statements[1].text.ends_with("END"));
        assert_eq!(statements[2].text, "SELECT 3");
    }

    #[test]
    fn reports_unterminated_literals_with_their_line() {
        let err = split_statements("SELECT 1;\nSELECT 'oops;\n").unwrap_err();
        assert_eq!(err.line, 2);
        let err = split_statements("DO $$ BEGIN\nEND;\n").unwrap_err();
        assert_eq!(err.line, 1);
    }

    #[test]
    fn classifies_transaction_needs() {
        let statements = split_statements(
            "BEGIN;\nCREATE INDEX CONCURRENTLY i ON t (a);\nVACUUM t;\nCREATE TABLE x (id int);\nCOMMIT;\nROLLBACK;",
        )
        .unwrap();
        let flags: Vec<(bool, bool, bool)> = statements
            .iter()
            .map(|s| {
                (
                    s.is_transaction_wrapper(),
                    s.requires_no_transaction(),
                    s.is_forbidden_transaction_control(),
                )
            })
            .collect();
        assert_eq!(
            flags,
            [
                (true, false, false),
                (false, true, false),
                (false, true, false),
                (false, false, false),
                (true, false, false),
                (false, false, true),
            ]
        );
    }

    #[test]
    fn analysis_raises_risk() {
        let sql = "ALTER TABLE users DROP COLUMN legacy;\nCREATE INDEX i ON t (a);\nCREATE INDEX CONCURRENTLY j ON t (b);\nUPDATE t SET a = 1 WHERE id = 2;";
        let statements = split_statements(sql).unwrap();
        let findings = analyse(sql, &statements);
        assert_eq!(findings.len(), 2, "{findings:?}");
        assert_eq!(findings[0].risk, Risk::High);
        assert_eq!(findings[1].line, 2);
        assert_eq!(effective_risk(Risk::Low, &findings), Risk::High);
        assert_eq!(effective_risk(Risk::Medium, &[]), Risk::Medium);
    }

    #[test]
    fn indexing_a_table_the_script_creates_is_not_a_finding() {
        let sql = "CREATE TABLE IF NOT EXISTS prefs (id int);\nCREATE INDEX prefs_id ON prefs (id);\nCREATE INDEX other_id ON other(id);";
        let statements = split_statements(sql).unwrap();
        let findings = analyse(sql, &statements);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].line, 3);
        assert_eq!(findings[0].rule, "require-concurrent-index-creation");
    }

    #[test]
    fn data_wide_changes_and_style_advice() {
        let sql =
            "DELETE FROM sessions;\nCREATE TABLE t (id int, name varchar(10));\nTRUNCATE audit;";
        let statements = split_statements(sql).unwrap();
        let findings = analyse(sql, &statements);
        let lines: Vec<(usize, Risk)> = findings.iter().map(|f| (f.line, f.risk)).collect();
        // prefer-bigint-over-int and prefer-text-field are advice: they raise nothing.
        assert_eq!(lines, [(1, Risk::High), (3, Risk::High)], "{findings:?}");
    }
}
