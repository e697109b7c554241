//! Migration script files as the seed's create-migration.sh wrote them: scripts/NNN_..._slug.sql
//! and rollbacks/NNN_..._slug_rollback.sql, with the metadata in a header comment block that
//! `submit` and `validate` read back. Works offline.

use crate::domain::{MigrationKind, Risk, slugify};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The metadata in a script's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub id: Option<String>,
    pub kind: MigrationKind,
    pub description: String,
    pub risk: Risk,
    pub estimated_duration: String,
    pub author: Option<String>,
    pub ticket: String,
    pub depends_on: Vec<String>,
    /// The rollback script, relative to the folder holding scripts/ and rollbacks/.
    pub rollback: Option<String>,
}

/// A problem in a script file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Problem {
    pub path: PathBuf,
    pub line: usize,
    /// 1-based; 0 when only the line is known.
    pub column: usize,
    pub message: String,
    /// The finding's rule; None for errors (header, syntax, forbidden statements).
    pub rule: Option<String>,
    /// The finding's risk; None for errors.
    pub risk: Option<crate::domain::Risk>,
    pub fix: Option<String>,
    /// The reason of the `-- sluice:ignore` that silenced it: shown, not counted.
    pub ignored: Option<String>,
    /// A rollback script's finding that does not raise the risk (it drops what the up
    /// script made): shown, not counted.
    pub rollback_note: bool,
    /// Only a parser that lags the database's grammar refuses it (MySQL): shown, not counted.
    pub advisory: bool,
}

impl Problem {
    fn new(path: &Path, line: usize, message: String) -> Problem {
        Problem {
            path: path.to_owned(),
            line,
            message,
            ..Problem::default()
        }
    }

    /// Whether it fails validation (not when silenced or a rollback script's note).
    pub fn counts(&self) -> bool {
        self.ignored.is_none() && !self.rollback_note && !self.advisory
    }

    /// error (errors, high risk), warning (medium) or note (low, silenced, rollback notes).
    pub fn level(&self) -> &'static str {
        use crate::domain::Risk;
        match (!self.counts(), self.risk) {
            (true, _) | (false, Some(Risk::Low)) => "note",
            (false, Some(Risk::Medium)) => "warning",
            _ => "error",
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)?;
        if self.column > 0 {
            write!(f, ":{}", self.column)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(rule) = &self.rule {
            write!(f, " [{rule}]")?;
        }
        if let Some(reason) = &self.ignored {
            write!(f, " (ignored: {reason})")?;
        }
        if self.rollback_note {
            write!(f, " (rollback script: undoes the up script, not counted)")?;
        }
        if self.advisory {
            write!(
                f,
                " (sqlparser's grammar lags the database's: check it on development; not counted)"
            )?;
        }
        if let Some(fix) = &self.fix {
            write!(f, "\n    fix: {fix}")?;
        }
        Ok(())
    }
}

fn kind_label(kind: MigrationKind) -> &'static str {
    match kind {
        MigrationKind::SchemaChange => "SCHEMA_CHANGE",
        MigrationKind::DataMigration => "DATA_MIGRATION",
        MigrationKind::Hotfix => "HOTFIX",
    }
}

/// Reads the header block (leading `-- Key: value` comment lines).
/// (A Problem is large for an error; this runs once per script file.)
#[allow(clippy::result_large_err)]
pub fn read_header(path: &Path, text: &str) -> Result<Header, Problem> {
    let problem = |line: usize, message: String| Problem::new(path, line, message);
    let mut fields: Vec<(usize, String, String)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let Some(comment) = trimmed.strip_prefix("--") else {
            break;
        };
        if let Some((key, value)) = comment.split_once(':') {
            let key = key.trim().to_ascii_lowercase().replace([' ', '_'], "-");
            fields.push((index + 1, key, value.trim().to_owned()));
        }
    }
    let get = |key: &str| fields.iter().find(|(_, k, _)| k == key);
    // A file with no header at all is plain SQL (another tool's migration): say how to take it.
    let plain = !["type", "risk", "description", "ticket"]
        .iter()
        .any(|k| get(k).is_some());
    let required = |key: &str, label: &str| {
        get(key)
            .filter(|(_, _, v)| !v.is_empty())
            .cloned()
            .ok_or_else(|| {
                let hint = if plain {
                    "; a plain SQL file (golang-migrate, Flyway, dbmate) is taken by `sluice import <its folder>`"
                } else {
                    ""
                };
                problem(
                    1,
                    format!(
                        "the header has no \"-- {label}: ...\" line (`sluice new` writes one){hint}"
                    ),
                )
            })
    };
    let (line, _, kind) = required("type", "Type")?;
    let kind: MigrationKind = kind
        .parse()
        .map_err(|e: crate::domain::DomainError| problem(line, format!("Type: {e}")))?;
    let (line, _, risk) = required("risk", "Risk")?;
    let risk: Risk = risk
        .parse()
        .map_err(|e: crate::domain::DomainError| problem(line, format!("Risk: {e}")))?;
    let (_, _, description) = required("description", "Description")?;
    let (_, _, ticket) = required("ticket", "Ticket")?;
    let estimated_duration = match get("estimated-duration").or_else(|| get("duration")) {
        Some((line, _, value)) if !value.is_empty() => {
            // The same rule as the server's: refused here, not only at submit.
            check_duration(value)
                .map_err(|e| problem(*line, format!("Estimated-Duration: {e}")))?;
            value.clone()
        }
        _ => "5m".into(),
    };
    let depends_on = get("depends-on")
        .map(|(_, _, v)| {
            v.split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok(Header {
        id: get("migration").map(|(_, _, v)| v.clone()),
        kind,
        description,
        risk,
        estimated_duration,
        author: get("author").map(|(_, _, v)| v.clone()),
        ticket,
        depends_on,
        rollback: get("rollback")
            .map(|(_, _, v)| v.clone())
            .filter(|v| !v.is_empty()),
    })
}

/// An estimated duration as the server takes it (30s, 5m, 2h, 1h30m).
pub fn check_duration(value: &str) -> Result<(), String> {
    match crate::domain::freeze::parse_duration(value) {
        Some(_) => Ok(()),
        None => Err(format!(
            "\"{value}\" is not a duration like 30s, 5m, 2h or 1h30m"
        )),
    }
}

/// Where a script's rollback is: the header's `Rollback:` (relative to the folder holding
/// scripts/), else rollbacks/<name>_rollback.sql beside scripts/.
pub fn rollback_path(script: &Path, header: &Header) -> PathBuf {
    let scripts_dir = script.parent().unwrap_or(Path::new("."));
    let root = scripts_dir.parent().unwrap_or(Path::new("."));
    match &header.rollback {
        Some(relative) => root.join(relative),
        None => {
            let stem = script
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("migration");
            root.join("rollbacks").join(format!("{stem}_rollback.sql"))
        }
    }
}

/// The SQL a new migration's template is written in: the targets' (a PostgreSQL-only
/// template would not run on the SQLite files the shipped environments.yml targets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TemplateDialect {
    Postgres,
    Mysql,
    Sqlite,
}

impl TemplateDialect {
    /// The dialect of a target database from its URL's scheme (as the daemon shows it).
    pub fn of_url(url: &str) -> Option<TemplateDialect> {
        let scheme = url.split_once("://")?.0.to_ascii_lowercase();
        match scheme.as_str() {
            "postgres" | "postgresql" => Some(TemplateDialect::Postgres),
            "mysql" | "mariadb" => Some(TemplateDialect::Mysql),
            "sqlite" => Some(TemplateDialect::Sqlite),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TemplateDialect::Postgres => "postgres",
            TemplateDialect::Mysql => "mysql",
            TemplateDialect::Sqlite => "sqlite",
        }
    }

    /// How `validate` reads scripts of this dialect.
    pub fn lint(self) -> crate::lint::Dialect {
        match self {
            TemplateDialect::Postgres => crate::lint::Dialect::Postgres,
            TemplateDialect::Mysql => crate::lint::Dialect::MySql,
            TemplateDialect::Sqlite => crate::lint::Dialect::Sqlite,
        }
    }
}

/// What `new` needs to write a migration.
pub struct NewMigration {
    pub kind: MigrationKind,
    pub description: String,
    pub risk: Risk,
    pub duration: String,
    pub author: String,
    pub ticket: String,
    pub dialect: TemplateDialect,
}

/// Writes scripts/NNN_YYYYMMDD_HHMMSS_slug.sql and rollbacks/..._rollback.sql under `root`,
/// numbering after the highest number already in scripts/. Returns both paths.
pub fn write_new(
    root: &Path,
    spec: &NewMigration,
    timestamp: &str,
) -> std::io::Result<(PathBuf, PathBuf)> {
    let scripts = root.join("scripts");
    let rollbacks = root.join("rollbacks");
    std::fs::create_dir_all(&scripts)?;
    std::fs::create_dir_all(&rollbacks)?;
    let mut highest = 0;
    for entry in std::fs::read_dir(&scripts)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name.split('_').next().and_then(|n| n.parse::<u64>().ok()) {
            highest = highest.max(n);
        }
    }
    let slug = match slugify(&spec.description) {
        s if s.is_empty() => "migration".to_owned(),
        s => s,
    };
    let name = format!("{:03}_{timestamp}_{slug}", highest + 1);
    let script_path = scripts.join(format!("{name}.sql"));
    let rollback_relative = format!("rollbacks/{name}_rollback.sql");
    let rollback_path = root.join(&rollback_relative);
    let mut header = String::new();
    let _ = writeln!(header, "-- Migration: {name}");
    let _ = writeln!(header, "-- Type: {}", kind_label(spec.kind));
    let _ = writeln!(header, "-- Description: {}", spec.description);
    let _ = writeln!(header, "-- Risk: {}", spec.risk.as_str().to_uppercase());
    let _ = writeln!(header, "-- Estimated-Duration: {}", spec.duration);
    let _ = writeln!(header, "-- Author: {}", spec.author);
    let _ = writeln!(header, "-- Ticket: {}", spec.ticket);
    let _ = writeln!(header, "-- Depends-On:");
    let _ = writeln!(header, "-- Rollback: {rollback_relative}");
    let body = template(spec.kind, spec.dialect);
    std::fs::write(&script_path, format!("{header}\n{body}"))?;
    std::fs::write(
        &rollback_path,
        format!(
            "-- Rollback of {name}: undo every change of the migration, newest first.\n{ROLLBACK_TEMPLATE}"
        ),
    )?;
    Ok((script_path, rollback_path))
}

/// The example a new script starts from, in its targets' dialect.
fn template(kind: MigrationKind, dialect: TemplateDialect) -> &'static str {
    use TemplateDialect::*;
    match (kind, dialect) {
        (MigrationKind::SchemaChange, Postgres) => SCHEMA_TEMPLATE,
        (MigrationKind::SchemaChange, Mysql) => SCHEMA_TEMPLATE_MYSQL,
        (MigrationKind::SchemaChange, Sqlite) => SCHEMA_TEMPLATE_SQLITE,
        (MigrationKind::DataMigration, Postgres) => DATA_TEMPLATE,
        (MigrationKind::DataMigration, Mysql | Sqlite) => DATA_TEMPLATE_PLAIN,
        (MigrationKind::Hotfix, Postgres | Sqlite) => HOTFIX_TEMPLATE,
        (MigrationKind::Hotfix, Mysql) => HOTFIX_TEMPLATE_MYSQL,
    }
}

const SCHEMA_TEMPLATE: &str = "-- Schema change. Sluice runs the script in one transaction (no BEGIN/COMMIT needed)\n\
-- unless a statement cannot run in one (CREATE INDEX CONCURRENTLY, VACUUM, ...).\n\
CREATE TABLE example_table (\n    id BIGSERIAL PRIMARY KEY,\n    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP\n);\n";

const SCHEMA_TEMPLATE_MYSQL: &str = "-- Schema change. MySQL and MariaDB commit each DDL statement as it runs (no transaction\n\
-- holds the script): keep each statement one change that can stand on its own.\n\
CREATE TABLE example_table (\n    id BIGINT AUTO_INCREMENT PRIMARY KEY,\n    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP\n);\n";

const SCHEMA_TEMPLATE_SQLITE: &str = "-- Schema change. Sluice runs the script in one transaction (no BEGIN/COMMIT needed).\n\
-- SQLite: INTEGER PRIMARY KEY is the row id; times are TEXT (CURRENT_TIMESTAMP is UTC).\n\
CREATE TABLE example_table (\n    id INTEGER PRIMARY KEY,\n    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP\n);\n";

const DATA_TEMPLATE: &str = "-- Data migration in batches, reporting progress (RAISE NOTICE lines reach the deployment log).\n\
DO $$\nDECLARE\n    batch_size INTEGER := 1000;\n    processed INTEGER := 0;\n    total INTEGER;\nBEGIN\n    SELECT COUNT(*) INTO total FROM legacy_table;\n    WHILE processed < total LOOP\n        INSERT INTO new_table (column1, column2)\n        SELECT old_column1, old_column2\n        FROM legacy_table\n        ORDER BY id\n        LIMIT batch_size OFFSET processed;\n\n        processed := processed + batch_size;\n        RAISE NOTICE 'Processed % of % records', LEAST(processed, total), total;\n    END LOOP;\nEND $$;\n";

/// MySQL and SQLite have no anonymous procedural block: the copy is one statement.
const DATA_TEMPLATE_PLAIN: &str = "-- Data migration: copy the rows in one statement (no procedural block here); split a copy\n\
-- too large for one run into several migrations, each a range of ids.\n\
INSERT INTO new_table (column1, column2)\nSELECT old_column1, old_column2\nFROM legacy_table\nWHERE id BETWEEN 1 AND 100000;\n";

const HOTFIX_TEMPLATE: &str = "-- Hotfix: the smallest change that fixes the problem, guarded so it touches only bad rows.\n\
UPDATE configuration\nSET value = 'fixed_value'\nWHERE key = 'problematic_setting'\n  AND value = 'problematic_value';\n";

/// `key` is a reserved word in MySQL: quoted.
const HOTFIX_TEMPLATE_MYSQL: &str = "-- Hotfix: the smallest change that fixes the problem, guarded so it touches only bad rows.\n\
UPDATE configuration\nSET value = 'fixed_value'\nWHERE `key` = 'problematic_setting'\n  AND value = 'problematic_value';\n";

/// The line where a template's example statement, left as `sluice new` wrote it, begins.
fn template_left(text: &str) -> Option<usize> {
    [
        SCHEMA_TEMPLATE,
        SCHEMA_TEMPLATE_MYSQL,
        SCHEMA_TEMPLATE_SQLITE,
        DATA_TEMPLATE,
        DATA_TEMPLATE_PLAIN,
        HOTFIX_TEMPLATE,
        HOTFIX_TEMPLATE_MYSQL,
    ]
    .iter()
    .filter_map(|template| {
        // The template's statements, without its leading comment lines.
        let body: String = template
            .lines()
            .skip_while(|l| l.starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        text.find(&body)
    })
    .map(|offset| text[..offset].matches('\n').count() + 1)
    .min()
}

const ROLLBACK_TEMPLATE: &str = "DROP TABLE IF EXISTS example_table;\n";

/// Checks one script file without a daemon: header, lexing, forbidden statements, findings.
/// Returns the problems (errors and findings), each with its line.
pub fn validate_file(path: &Path, dialect: crate::lint::Dialect) -> Vec<Problem> {
    let at = |line: usize, message: String| Problem::new(path, line, message);
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return vec![at(0, format!("cannot read: {e}"))],
    };
    let mut problems = Vec::new();
    let header = match read_header(path, &text) {
        Ok(header) => Some(header),
        Err(problem) => {
            problems.push(problem);
            None
        }
    };
    // PostgreSQL's grammar reads every statement: a typo fails here, not on development.
    let syntax = |file: &Path, text: &str, problems: &mut Vec<Problem>| {
        use crate::lint::Dialect;
        let grammars: &[(Dialect, &str)] = match dialect {
            Dialect::Postgres => &[(Dialect::Postgres, "")],
            Dialect::Sqlite => &[(Dialect::Sqlite, "")],
            Dialect::MySql => &[(Dialect::MySql, "")],
            Dialect::Both => &[
                (Dialect::Postgres, " (PostgreSQL)"),
                (Dialect::MySql, " (MySQL)"),
            ],
        };
        for (grammar, label) in grammars {
            let (found, database) = match grammar {
                Dialect::MySql => (crate::lint::mysql_syntax_problems(text), "MySQL"),
                Dialect::Sqlite => (crate::lint::sqlite_syntax_problems(text), "SQLite"),
                _ => (crate::lint::syntax_problems(text), "PostgreSQL"),
            };
            for p in found {
                let what = if p.certain {
                    "syntax error".to_owned()
                } else {
                    format!("not read by the {database} grammar")
                };
                problems.push(Problem {
                    column: p.column,
                    advisory: !p.certain,
                    ..Problem::new(file, p.line, format!("{what}{label}: {}", p.message))
                });
            }
        }
    };

    syntax(path, &text, &mut problems);
    if let Some(line) = template_left(&text) {
        problems.push(at(
            line,
            "the template's example is still here (example_table, legacy_table or problematic_setting): write the migration in its place".into(),
        ));
    }
    if let Some(down) = header
        .as_ref()
        .map(|h| rollback_path(path, h))
        .filter(|p| p.exists())
        && let Ok(down_text) = std::fs::read_to_string(&down)
    {
        syntax(&down, &down_text, &mut problems);
        if let Some(line) = down_text
            .lines()
            .position(|l| l.trim() == ROLLBACK_TEMPLATE.trim())
        {
            problems.push(Problem::new(
                &down,
                line + 1,
                "the template's rollback is still here (DROP TABLE IF EXISTS example_table): undo what the migration does".into(),
            ));
        }
    }
    match crate::lint::split_statements_for(&text, dialect) {
        Err(e) => problems.push(at(e.line, e.message)),
        Ok(statements) => {
            for (line, problem) in crate::lint::script_problems(&statements, dialect) {
                problems.push(at(line, problem));
            }
            // The rollback script is linted with it (its own problems under its own path).
            let down = header
                .as_ref()
                .map(|h| rollback_path(path, h))
                .filter(|p| p.exists())
                .and_then(|p| {
                    let text = std::fs::read_to_string(&p).ok()?;
                    match crate::lint::split_statements_for(&text, dialect) {
                        Ok(statements) => {
                            // Submission checks the rollback script the same way.
                            for (line, problem) in
                                crate::lint::script_problems(&statements, dialect)
                            {
                                problems.push(Problem::new(&p, line, problem));
                            }
                            Some((p, text, statements))
                        }
                        Err(e) => {
                            problems.push(Problem::new(&p, e.line, e.message));
                            None
                        }
                    }
                });
            let findings = crate::lint::analyse_migration(
                &text,
                &statements,
                down.as_ref()
                    .map(|(_, text, s)| (text.as_str(), s.as_slice())),
                dialect,
            );
            let declared = header.as_ref().map(|h| h.risk);
            for finding in findings {
                let note = match declared {
                    Some(risk) if risk < finding.risk && finding.raises_risk() => format!(
                        " (raises the declared risk {} to {})",
                        risk.as_str().to_uppercase(),
                        finding.risk.as_str().to_uppercase()
                    ),
                    _ => String::new(),
                };
                let file = match (&finding.script, &down) {
                    (Some(_), Some((down_path, _, _))) => down_path.as_path(),
                    _ => path,
                };
                problems.push(Problem {
                    column: finding.column,
                    rule: Some(finding.rule.clone()),
                    risk: Some(finding.risk),
                    fix: finding.fix.clone(),
                    ignored: finding.ignored.clone(),
                    rollback_note: finding.script.is_some()
                        && finding.ignored.is_none()
                        && !finding.raises_risk(),
                    ..Problem::new(
                        file,
                        finding.line,
                        format!(
                            "{} risk: {}{note}",
                            finding.risk.as_str().to_uppercase(),
                            finding.message
                        ),
                    )
                });
            }
        }
    }
    if let Some(header) = &header {
        let rollback = rollback_path(path, header);
        if header.rollback.is_some() && !rollback.exists() {
            problems.push(at(
                1,
                format!("the rollback script {} does not exist", rollback.display()),
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_writes_numbered_scripts_whose_header_reads_back() {
        let root = std::env::temp_dir().join(format!("sluice-new-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let spec = NewMigration {
            kind: MigrationKind::SchemaChange,
            description: "Add user preferences table".into(),
            risk: Risk::Low,
            duration: "5m".into(),
            author: "john.doe".into(),
            ticket: "PROJ-123".into(),
            dialect: TemplateDialect::Postgres,
        };
        let (first, _) = write_new(&root, &spec, "20261125_101500").unwrap();
        let (second, rollback) = write_new(&root, &spec, "20261125_101501").unwrap();
        assert!(first.ends_with("scripts/001_20261125_101500_add_user_preferences_table.sql"));
        assert!(second.ends_with("scripts/002_20261125_101501_add_user_preferences_table.sql"));
        let text = std::fs::read_to_string(&second).unwrap();
        let header = read_header(&second, &text).unwrap();
        assert_eq!(header.kind, MigrationKind::SchemaChange);
        assert_eq!(header.risk, Risk::Low);
        assert_eq!(header.ticket, "PROJ-123");
        assert_eq!(header.author.as_deref(), Some("john.doe"));
        assert_eq!(rollback_path(&second, &header), rollback);
        // Untouched, the template is not a migration yet: its example and its rollback are
        // named, each in its own file.
        let problems = validate_file(&second, crate::lint::Dialect::Postgres);
        let counted: Vec<String> = problems
            .iter()
            .filter(|p| p.counts())
            .map(|p| p.to_string())
            .collect();
        assert_eq!(counted.len(), 2, "{counted:?}");
        assert!(counted[0].contains("template's example"), "{counted:?}");
        assert!(
            counted
                .iter()
                .any(|c| c.contains("_rollback.sql:") && c.contains("template's rollback")),
            "{counted:?}"
        );
        // Edited, it passes; the rollback dropping the table the up script creates is a note.
        for file in [&second, &rollback] {
            let text = std::fs::read_to_string(file).unwrap();
            std::fs::write(file, text.replace("example_table", "user_preferences")).unwrap();
        }
        let problems = validate_file(&second, crate::lint::Dialect::Postgres);
        assert!(problems.iter().all(|p| !p.counts()), "{problems:?}");
        let _ = std::fs::remove_dir_all(&root);
    }

    /// Issue 19: the template a newcomer gets runs on their targets. For each dialect and
    /// kind, `validate` in that dialect finds nothing but the template's example and rollback
    /// left in place (no syntax error, nothing the dialect lacks), and nothing PostgreSQL-only
    /// reaches SQLite or MySQL.
    #[test]
    fn each_dialect_gets_a_template_its_database_reads() {
        use TemplateDialect::*;
        for dialect in [Postgres, Mysql, Sqlite] {
            for kind in [
                MigrationKind::SchemaChange,
                MigrationKind::DataMigration,
                MigrationKind::Hotfix,
            ] {
                let root = std::env::temp_dir().join(format!(
                    "sluice-template-{}-{}-{kind:?}",
                    std::process::id(),
                    dialect.as_str()
                ));
                let _ = std::fs::remove_dir_all(&root);
                let spec = NewMigration {
                    kind,
                    description: "Template check".into(),
                    risk: Risk::Low,
                    duration: "5m".into(),
                    author: "john.doe".into(),
                    ticket: "PROJ-1".into(),
                    dialect,
                };
                let (script, _) = write_new(&root, &spec, "20261125_101500").unwrap();
                let text = std::fs::read_to_string(&script).unwrap();
                if dialect != Postgres {
                    for postgres_only in ["CONCURRENTLY", "timestamptz", "BIGSERIAL", "DO $$"] {
                        assert!(
                            !text.contains(postgres_only),
                            "{dialect:?} {kind:?}: {postgres_only}"
                        );
                    }
                }
                let problems: Vec<String> = validate_file(&script, dialect.lint())
                    .iter()
                    .filter(|p| p.counts() && p.rule.is_none())
                    .map(|p| p.to_string())
                    .collect();
                assert_eq!(problems.len(), 2, "{dialect:?} {kind:?}: {problems:?}");
                assert!(
                    problems.iter().all(|p| p.contains("template's")),
                    "{dialect:?} {kind:?}: {problems:?}"
                );
                let _ = std::fs::remove_dir_all(&root);
            }
        }
        assert_eq!(
            TemplateDialect::of_url("sqlite://data/development.db"),
            Some(Sqlite)
        );
        assert_eq!(
            TemplateDialect::of_url("postgresql://u:***@h/db"),
            Some(Postgres)
        );
        assert_eq!(TemplateDialect::of_url("mariadb://h/db"), Some(Mysql));
        assert_eq!(TemplateDialect::of_url("host=x dbname=y"), None);
    }

    #[test]
    fn validation_names_file_and_line() {
        let root = std::env::temp_dir().join(format!("sluice-validate-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let path = root.join("bad.sql");
        std::fs::write(
            &path,
            "-- Type: HOTFIX\n-- Description: x\n-- Risk: LOW\n-- Ticket: T-1\nUPDATE t SET a = 1;\nROLLBACK;\n",
        )
        .unwrap();
        let problems: Vec<String> = validate_file(&path, crate::lint::Dialect::Postgres)
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].ends_with("bad.sql:6: \"ROLLBACK\" is not allowed in a migration: it would end or split the transaction Sluice runs the script in"), "{problems:?}");
        assert!(
            problems[1].contains("bad.sql:5:1: HIGH risk"),
            "{problems:?}"
        );
        std::fs::write(&path, "SELECT 1;\n").unwrap();
        let problems: Vec<String> = validate_file(&path, crate::lint::Dialect::Postgres)
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert!(problems[0].contains("Type"), "{problems:?}");
        assert!(problems[0].contains("sluice import"), "{problems:?}");
        // A header missing one line names it, without the plain-SQL hint.
        std::fs::write(
            &path,
            "-- Type: HOTFIX\n-- Description: x\n-- Risk: LOW\nSELECT 1;\n",
        )
        .unwrap();
        let problems: Vec<String> = validate_file(&path, crate::lint::Dialect::Postgres)
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert!(problems[0].contains("\"-- Ticket: ...\""), "{problems:?}");
        assert!(!problems[0].contains("sluice import"), "{problems:?}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
