//! Reads SQL without running it: splits a script into statements (squawk's PostgreSQL lexer, so
//! dollar quoting, nested comments and string literals are handled as the server would), tells
//! which statements cannot run inside a transaction, and finds operations that raise a
//! migration's risk. Pure: no I/O.

use crate::domain::Risk;
use squawk_lexer::{TokenKind, tokenize};
use squawk_syntax::SyntaxKind;
use squawk_syntax::ast::AstNode;

/// How a statement stands to the transaction Sluice runs the script in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionControl {
    /// An ordinary statement.
    None,
    /// `BEGIN` / `START TRANSACTION`: skipped when it opens the script.
    Begin,
    /// `COMMIT` / `END` (without AND CHAIN): skipped when it closes the script.
    Commit,
    /// Ends, splits or escapes the transaction (ROLLBACK in every form, ABORT, SAVEPOINT,
    /// RELEASE, COMMIT AND CHAIN, PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED): refused.
    Forbidden,
}

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
    /// Decided from the parse tree (PostgreSQL's grammar) when the script parses, from the
    /// leading keywords otherwise.
    pub control: TransactionControl,
    /// Must commit before the statements after it run: `ALTER TYPE ... ADD VALUE 'v'` when a
    /// later statement of the script uses 'v' (PostgreSQL refuses a new enum value in the
    /// transaction that added it), so the script runs statement by statement.
    pub commits_alone: bool,
}

impl Statement {
    fn starts_with(&self, words: &[&str]) -> bool {
        self.keywords.len() >= words.len() && self.keywords.iter().zip(words).all(|(a, b)| a == b)
    }

    /// `BEGIN`, `START TRANSACTION`, `COMMIT`, `END`: Sluice supplies its own transaction, so
    /// these are dropped from scripts (with a note in the deployment log). Only where they wrap
    /// the whole script: `transaction_control_problems` refuses them anywhere else.
    pub fn is_transaction_wrapper(&self) -> bool {
        matches!(
            self.control,
            TransactionControl::Begin | TransactionControl::Commit
        )
    }

    /// Statements that end or split the transaction in ways a migration must not.
    pub fn is_forbidden_transaction_control(&self) -> bool {
        self.control == TransactionControl::Forbidden
    }

    /// Statements PostgreSQL refuses to run inside a transaction block (or in one with the
    /// statements after them: `commits_alone`).
    pub fn requires_no_transaction(&self) -> bool {
        if self.commits_alone {
            return true;
        }
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

/// What is wrong with a script's transaction control, statement by statement: every forbidden
/// form, and BEGIN/COMMIT anywhere but at the very start and end of the script.
pub fn transaction_control_problems(statements: &[Statement]) -> Vec<(usize, String)> {
    let last = statements.len().saturating_sub(1);
    let mut problems = Vec::new();
    for (index, statement) in statements.iter().enumerate() {
        let problem = match statement.control {
            TransactionControl::Forbidden => format!(
                "\"{}\" is not allowed in a migration: it would end or split the transaction Sluice runs the script in",
                excerpt(&statement.text)
            ),
            TransactionControl::Begin if index != 0 => format!(
                "\"{}\" in the middle of the script: only a BEGIN that opens the script is allowed (Sluice supplies the transaction); split it into two migrations",
                excerpt(&statement.text)
            ),
            TransactionControl::Commit if index != last => format!(
                "\"{}\" in the middle of the script would commit part of it: only a COMMIT/END that closes the script is allowed; split it into two migrations",
                excerpt(&statement.text)
            ),
            _ => continue,
        };
        problems.push((statement.line, problem));
    }
    problems
}

/// Every reason a script cannot be run as written, statement by statement with its line:
/// transaction control (`transaction_control_problems`) and statements Sluice cannot run or
/// must not let run (`unrunnable_problems`). The one check behind `sluice validate`, submission
/// and the worker's last look before it applies.
pub fn script_problems(statements: &[Statement], dialect: Dialect) -> Vec<(usize, String)> {
    let mut problems = transaction_control_problems(statements);
    problems.extend(unrunnable_problems(statements, dialect));
    problems.sort_by_key(|(line, _)| *line);
    problems
}

/// The table in every target where Sluice records what is applied (`target`'s history).
pub const HISTORY_TABLE: &str = "sluice_schema_history";

/// Statements Sluice cannot run, or must not let a migration run: `COPY ... FROM STDIN` /
/// `TO STDOUT` (the rows would come from, or go to, a client that has none to give: the server
/// waits for them, or the connection is left in copy mode), MySQL's `LOAD DATA|XML LOCAL
/// INFILE` (a file on the client's machine, which Sluice never sends), and any write to
/// Sluice's own history table (the record of what is applied; a script that drops or edits it
/// makes every later apply and rollback wrong). Read from tokens, so that comments, strings
/// and quoted names do not mislead; what is hidden in dynamic SQL is found when it runs.
pub fn unrunnable_problems(statements: &[Statement], dialect: Dialect) -> Vec<(usize, String)> {
    statements
        .iter()
        .filter_map(|statement| {
            let words = significant_words(&statement.text, dialect)?;
            unrunnable_reason(&words)
                .or_else(|| do_block_reason(&statement.text, &words, dialect))
                .map(|reason| {
                    (
                        statement.line,
                        format!("\"{}\" {reason}", excerpt(&statement.text)),
                    )
                })
        })
        .collect()
}

/// A statement's tokens as words (lower-cased, quotes removed) and punctuation, without
/// comments and literals; `None` when it does not tokenize (the splitter or the server says
/// why).
fn significant_words(text: &str, dialect: Dialect) -> Option<Vec<String>> {
    use sqlparser::tokenizer::{Token, Tokenizer};
    let tokens = match dialect {
        Dialect::MySql => Tokenizer::new(&sqlparser::dialect::MySqlDialect {}, text).tokenize(),
        Dialect::Sqlite => Tokenizer::new(&sqlparser::dialect::SQLiteDialect {}, text).tokenize(),
        Dialect::Postgres | Dialect::Both => {
            Tokenizer::new(&sqlparser::dialect::PostgreSqlDialect {}, text).tokenize()
        }
    }
    .ok()?;
    Some(
        tokens
            .into_iter()
            .filter_map(|token| match token {
                Token::Word(word) => Some(word.value.to_lowercase()),
                Token::Period => Some(".".into()),
                Token::Comma => Some(",".into()),
                Token::LParen => Some("(".into()),
                Token::RParen => Some(")".into()),
                Token::SemiColon => Some(";".into()),
                Token::Whitespace(_) => None,
                _ => Some(String::new()),
            })
            .collect(),
    )
}

/// A PostgreSQL `DO` block's body is statements too: each of them (split at `;` and after
/// BEGIN, THEN, ELSE, LOOP) is held to `unrunnable_reason`. What it builds as text and runs
/// with EXECUTE is found when it runs.
fn do_block_reason(text: &str, words: &[String], dialect: Dialect) -> Option<String> {
    use sqlparser::tokenizer::{Token, Tokenizer};
    if words.first().map(String::as_str) != Some("do") || dialect == Dialect::MySql {
        return None;
    }
    let tokens = Tokenizer::new(&sqlparser::dialect::PostgreSqlDialect {}, text)
        .tokenize()
        .ok()?;
    let body = tokens.into_iter().find_map(|token| match token {
        Token::DollarQuotedString(body) => Some(body.value),
        Token::SingleQuotedString(body) => Some(body),
        _ => None,
    })?;
    let body_words = significant_words(&body, Dialect::Postgres)?;
    body_words
        .split(|w| matches!(w.as_str(), ";" | "begin" | "then" | "else" | "loop"))
        .find_map(|part| {
            let start = part.iter().position(|w| !w.is_empty())?;
            unrunnable_reason(&part[start..])
        })
}

/// Why a statement (as `significant_words`) cannot run in a migration, if it cannot.
fn unrunnable_reason(words: &[String]) -> Option<String> {
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    let follows = |first: &str, second: &str| {
        words
            .windows(2)
            .any(|pair| pair[0] == first && pair[1] == second)
    };
    match word(0) {
        "copy" if follows("from", "stdin") => {
            return Some(
                "cannot run in a migration: COPY ... FROM STDIN reads its rows from the client, and Sluice has none to send (the server would wait for them). Write the rows as INSERT statements, or COPY from a file the database server can read".into(),
            );
        }
        "copy" if follows("to", "stdout") => {
            return Some(
                "cannot run in a migration: COPY ... TO STDOUT sends its rows to the client, and Sluice does not read them. Use COPY ... TO a file on the database server, or leave the export out of the migration".into(),
            );
        }
        "load" if follows("local", "infile") => {
            return Some(
                "cannot run in a migration: LOAD ... LOCAL INFILE reads a file on the client's machine, and Sluice sends none. Use LOAD DATA INFILE with a file on the database server, or INSERT statements".into(),
            );
        }
        _ => {}
    }
    let history_write = (0..words.len())
        .filter(|&i| words[i] == HISTORY_TABLE)
        .any(|i| {
            // Where the name starts, a qualifier (`public.` or `db.`) included.
            let start = if i >= 2 && words[i - 1] == "." {
                i - 2
            } else {
                i
            };
            let mut before = start;
            while before > 0
                && matches!(
                    word(before - 1),
                    "only" | "ignore" | "low_priority" | "high_priority" | "delayed" | "quick"
                )
            {
                before -= 1;
            }
            let previous = if before > 0 { word(before - 1) } else { "" };
            let verb = word(0);
            matches!(verb, "drop" | "alter" | "truncate" | "rename")
                || (verb == "copy" && start == 1 && words.iter().any(|w| w == "from"))
                || previous == "into"
                || previous == "update"
                || (previous == "from" && before >= 2 && {
                    let mut head = before - 1;
                    while head > 0 && matches!(word(head - 1), "low_priority" | "quick" | "ignore")
                    {
                        head -= 1;
                    }
                    head > 0 && word(head - 1) == "delete"
                })
        });
    history_write.then(|| {
        format!(
            "changes {HISTORY_TABLE}, Sluice's own record of what is applied to this database: a migration must not write to it (Sluice keeps it; to undo a migration roll it back, to record one applied by hand use baseline)"
        )
    })
}

fn excerpt(text: &str) -> String {
    let mut short: String = text.chars().take(60).collect();
    if short.len() < text.len() {
        short.push_str("...");
    }
    short
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

/// Deeper nesting than this (parentheses, brackets, CASE) is refused before parsing: the
/// parser recurses once per level.
pub const MAX_NESTING: usize = 500;
/// More operators than this in one expression without a parenthesis or comma between them is
/// refused before parsing (the parser's cost grows with the square of such a chain).
pub const MAX_OPERATORS_IN_A_ROW: usize = 2000;
/// The parser and the linter run on a thread of their own with this much stack, so that what
/// the bounds above let through cannot overflow it.
const PARSER_STACK_BYTES: usize = 256 * 1024 * 1024;

type ParserJob = Box<dyn FnOnce() + Send>;

/// The parser threads: started once, each with `PARSER_STACK_BYTES` of stack, taking jobs from
/// one queue. (A thread per script cost a millisecond under load: mapping and unmapping a large
/// stack is not free.)
fn parser_queue() -> &'static std::sync::Mutex<std::sync::mpsc::Sender<ParserJob>> {
    static QUEUE: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<ParserJob>>> =
        std::sync::OnceLock::new();
    QUEUE.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::channel::<ParserJob>();
        let receiver = std::sync::Arc::new(std::sync::Mutex::new(receiver));
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
        for number in 0..threads {
            let receiver = receiver.clone();
            let started = std::thread::Builder::new()
                .name(format!("sluice-sql-{number}"))
                .stack_size(PARSER_STACK_BYTES)
                .spawn(move || {
                    loop {
                        let job = match receiver.lock() {
                            Ok(queue) => queue.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        // A job that panics reports it to its caller (its result sender is
                        // dropped); the thread lives on.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                });
            if let Err(e) = started {
                tracing::error!(error = %e, "cannot start an SQL parser thread");
            }
        }
        std::sync::Mutex::new(sender)
    })
}

/// Runs `work` on a parser thread (large stack) and waits for its result.
fn on_parser_stack<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let (result_sender, result) = std::sync::mpsc::sync_channel(1);
    let job: ParserJob = Box::new(move || {
        let _ = result_sender.send(work());
    });
    let queued = parser_queue()
        .lock()
        .map_err(|_| ())
        .and_then(|queue| queue.send(job).map_err(|_| ()));
    if queued.is_err() {
        panic!("the SQL parser threads are gone");
    }
    match result.recv() {
        Ok(value) => value,
        Err(_) => panic!("the SQL parser failed on this script"),
    }
}

fn is_operator_token(kind: TokenKind, text: &str) -> bool {
    use TokenKind as T;
    match kind {
        T::Slash
        | T::Minus
        | T::Eq
        | T::Gt
        | T::And
        | T::Lt
        | T::Bang
        | T::Plus
        | T::Tilde
        | T::Pound
        | T::Question
        | T::Or
        | T::Percent
        | T::Caret
        | T::Star
        | T::At
        | T::Colon => true,
        T::Ident => matches!(
            text.to_ascii_uppercase().as_str(),
            "AND" | "OR" | "NOT" | "IS" | "LIKE" | "ILIKE" | "IN" | "BETWEEN" | "COLLATE" | "AT"
        ),
        _ => false,
    }
}

/// The lexical checks every script passes before anything parses it: literals, comments and
/// quoted identifiers are closed, and nesting and operator chains stay within the bounds.
fn check_shape(sql: &str) -> Result<(), SplitError> {
    let mut offset = 0usize;
    let mut line = 1usize;
    let mut depth = 0usize;
    let mut case_depth = 0usize;
    // Operators seen in the current expression frame, one count per open parenthesis.
    let mut operators: Vec<usize> = vec![0];
    for token in tokenize(sql) {
        let len = token.len as usize;
        let text = &sql[offset..offset + len];
        let token_line = line;
        line += text.matches('\n').count();
        offset += len;
        let unterminated = match token.kind {
            TokenKind::Literal { kind } => {
                use squawk_lexer::LiteralKind as L;
                match kind {
                    L::Str { terminated }
                    | L::NationalStr { terminated }
                    | L::ByteStr { terminated }
                    | L::BitStr { terminated }
                    | L::DollarQuotedString { terminated }
                    | L::UnicodeEscStr { terminated }
                    | L::EscStr { terminated } => {
                        (!terminated).then_some("unterminated string or dollar-quoted literal")
                    }
                    _ => None,
                }
            }
            TokenKind::BlockComment { terminated: false } => Some("unterminated /* comment"),
            TokenKind::QuotedIdent {
                terminated: false, ..
            } => Some("unterminated quoted identifier"),
            _ => None,
        };
        if let Some(message) = unterminated {
            return Err(SplitError {
                line: token_line,
                message: message.into(),
            });
        }
        match token.kind {
            TokenKind::OpenParen | TokenKind::OpenBracket | TokenKind::OpenCurly => {
                depth += 1;
                operators.push(0);
            }
            TokenKind::CloseParen | TokenKind::CloseBracket | TokenKind::CloseCurly => {
                depth = depth.saturating_sub(1);
                if operators.len() > 1 {
                    operators.pop();
                }
            }
            TokenKind::Comma => *operators.last_mut().expect("never empty") = 0,
            TokenKind::Semi => {
                depth = 0;
                case_depth = 0;
                operators = vec![0];
            }
            TokenKind::Ident if text.eq_ignore_ascii_case("CASE") => case_depth += 1,
            TokenKind::Ident if text.eq_ignore_ascii_case("END") => {
                case_depth = case_depth.saturating_sub(1)
            }
            _ => {}
        }
        if is_operator_token(token.kind, text) {
            let count = operators.last_mut().expect("never empty");
            *count += 1;
            if *count > MAX_OPERATORS_IN_A_ROW {
                return Err(SplitError {
                    line: token_line,
                    message: format!(
                        "an expression with more than {MAX_OPERATORS_IN_A_ROW} operators in a row; split it up"
                    ),
                });
            }
        }
        if depth + case_depth > MAX_NESTING {
            return Err(SplitError {
                line: token_line,
                message: format!(
                    "nested more than {MAX_NESTING} levels deep (parentheses, brackets, CASE)"
                ),
            });
        }
    }
    Ok(())
}

/// Splits a script into statements. Empty statements (only comments or whitespace) are dropped.
/// Statement boundaries and transaction control come from PostgreSQL's grammar (squawk's
/// parser) when the script parses; a script it cannot parse (another dialect, or an error the
/// server will report) is split at every top-level semicolon, so that nothing can hide a
/// statement from the checks.
pub fn split_statements(sql: &str) -> Result<Vec<Statement>, SplitError> {
    split_statements_as(sql, false)
}

/// `split_statements`, where `sqlite` keeps a SQLite trigger's `BEGIN ... END` body in one
/// statement when the script does not parse as PostgreSQL (only for SQLite targets: elsewhere
/// a word `BEGIN` must not be able to hide the statements after it from the checks).
fn split_statements_as(sql: &str, sqlite: bool) -> Result<Vec<Statement>, SplitError> {
    check_shape(sql)?;
    let sql = sql.to_owned();
    on_parser_stack(move || {
        let parse = squawk_syntax::SourceFile::parse(&sql);
        let mut statements = if parse.errors().is_empty() {
            split_parsed(&sql, &parse.tree())
        } else {
            split_at_semicolons(&sql, sqlite)
        };
        mark_enum_additions(&mut statements);
        Ok(statements)
    })
}

/// A statement PostgreSQL's grammar does not read, where (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxProblem {
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// False where only a parser that lags the database's grammar refuses it: shown, not
    /// failing.
    pub certain: bool,
}

/// The syntax errors of a PostgreSQL script, as squawk's parser (PostgreSQL's grammar) finds
/// them: `SELEC 1`, `CREAT TABLE`, `(id int,,`, an unclosed parenthesis. The first of each
/// line only (one mistake makes the parser report several).
pub fn syntax_problems(sql: &str) -> Vec<SyntaxProblem> {
    let owned = sql.to_owned();
    on_parser_stack(move || {
        let parse = squawk_syntax::SourceFile::parse(&owned);
        let mut problems: Vec<SyntaxProblem> = Vec::new();
        for error in parse.errors() {
            let (line, column) = position(&owned, usize::from(error.range().start()));
            if problems.iter().any(|p| p.line == line) {
                continue;
            }
            problems.push(SyntaxProblem {
                line,
                column,
                message: readable(error.message()),
                certain: true,
            });
        }
        problems
    })
}

/// The statements MySQL and MariaDB start with (outside stored programs), for "unknown
/// statement" with a did-you-mean.
const MYSQL_STATEMENTS: &[&str] = &[
    "ALTER",
    "ANALYZE",
    "BACKUP",
    "BEGIN",
    "BINLOG",
    "CACHE",
    "CALL",
    "CHANGE",
    "CHECK",
    "CHECKSUM",
    "CLONE",
    "COMMIT",
    "CREATE",
    "DEALLOCATE",
    "DELETE",
    "DESC",
    "DESCRIBE",
    "DO",
    "DROP",
    "EXECUTE",
    "EXPLAIN",
    "FLUSH",
    "GET",
    "GRANT",
    "HANDLER",
    "HELP",
    "IMPORT",
    "INSERT",
    "INSTALL",
    "KILL",
    "LOAD",
    "LOCK",
    "OPTIMIZE",
    "PREPARE",
    "PURGE",
    "RELEASE",
    "RENAME",
    "REPAIR",
    "REPLACE",
    "RESET",
    "RESIGNAL",
    "RESTART",
    "REVOKE",
    "ROLLBACK",
    "SAVEPOINT",
    "SELECT",
    "SET",
    "SHOW",
    "SHUTDOWN",
    "SIGNAL",
    "START",
    "STOP",
    "TABLE",
    "TRUNCATE",
    "UNINSTALL",
    "UNLOCK",
    "UPDATE",
    "USE",
    "VALUES",
    "WITH",
    "XA",
];

/// The syntax problems of a MySQL/MariaDB script, each statement read alone (split as the
/// mysql client splits it). Certain (`certain: true`, they fail validation): an unterminated
/// string, quoted name or comment; unbalanced parentheses; an empty list item (`,,`, `(,`,
/// `,)`); a statement that starts with no MySQL statement word (`SELEC`, `CREAT`). Then
/// sqlparser's MySQL grammar reads the statement; it lags MySQL in places (`VARCHAR(10)
/// BINARY`, `ALTER TABLE ... ENGINE=`, `OPTIMIZE TABLE`, partitions, `ADD COLUMN IF NOT
/// EXISTS`), so what only it refuses is reported as uncertain: shown, not failing.
/// Stored programs (procedure, function, trigger, event bodies) and `/*! ... */` versioned
/// comments are left to the server.
pub fn mysql_syntax_problems(sql: &str) -> Vec<SyntaxProblem> {
    // A script the splitter cannot read (an unterminated string) is reported by the splitter's
    // own error, where the script is split; nothing more can be said of its statements.
    let Ok(statements) = split_mysql(sql) else {
        return Vec::new();
    };
    statement_syntax_problems(
        sql,
        &statements,
        &sqlparser::dialect::MySqlDialect {},
        MYSQL_STATEMENTS,
        "MySQL",
    )
}

/// The statements SQLite starts with.
const SQLITE_STATEMENTS: &[&str] = &[
    "ALTER",
    "ANALYZE",
    "ATTACH",
    "BEGIN",
    "COMMIT",
    "CREATE",
    "DELETE",
    "DETACH",
    "DROP",
    "END",
    "EXPLAIN",
    "INSERT",
    "PRAGMA",
    "REINDEX",
    "RELEASE",
    "REPLACE",
    "ROLLBACK",
    "SAVEPOINT",
    "SELECT",
    "UPDATE",
    "VACUUM",
    "VALUES",
    "WITH",
];

/// The syntax problems of a script for a SQLite target, by the same rules as MySQL's (certain:
/// unknown statement word, empty list item, unbalanced parentheses; uncertain: what only
/// sqlparser's SQLite grammar refuses), each statement split as SQLite reads the script.
pub fn sqlite_syntax_problems(sql: &str) -> Vec<SyntaxProblem> {
    let Ok(statements) = split_statements_as(sql, true) else {
        return Vec::new();
    };
    statement_syntax_problems(
        sql,
        &statements,
        &sqlparser::dialect::SQLiteDialect {},
        SQLITE_STATEMENTS,
        "SQLite",
    )
}

fn statement_syntax_problems(
    sql: &str,
    statements: &[Statement],
    dialect: &dyn sqlparser::dialect::Dialect,
    starters: &[&str],
    database: &str,
) -> Vec<SyntaxProblem> {
    use sqlparser::parser::{Parser, ParserError};
    use sqlparser::tokenizer::{Token, Tokenizer};
    let lines: Vec<&str> = sql.lines().collect();
    let mut problems = Vec::new();
    for statement in statements {
        let stored_program = statement.keywords.first().is_some_and(|k| k == "CREATE")
            && statement
                .keywords
                .iter()
                .take(6)
                .any(|k| matches!(k.as_str(), "PROCEDURE" | "FUNCTION" | "TRIGGER" | "EVENT"));
        if stored_program || statement.text.trim_start().starts_with("/*!") {
            continue;
        }
        // Where the statement's own line 1 column 1 is in the script.
        let first_line = lines.get(statement.line.saturating_sub(1)).unwrap_or(&"");
        let head: String = statement.text.chars().take(12).collect();
        let indent = first_line
            .find(head.as_str())
            .map_or(0, |byte| first_line[..byte].chars().count());
        let at = |line_in: u64, column_in: u64| {
            let line_in = (line_in as usize).max(1);
            let column = if line_in == 1 {
                indent + column_in as usize
            } else {
                column_in as usize
            };
            (statement.line + line_in - 1, column.max(1))
        };
        let mut certain = |(line, column): (usize, usize), message: String| {
            problems.push(SyntaxProblem {
                line,
                column,
                message,
                certain: true,
            })
        };
        let tokens = match Tokenizer::new(dialect, &statement.text).tokenize_with_location() {
            Ok(tokens) => tokens,
            Err(e) => {
                certain(at(e.location.line, e.location.column), e.message);
                continue;
            }
        };
        let significant: Vec<_> = tokens
            .iter()
            .filter(|t| !matches!(t.token, Token::Whitespace(_) | Token::EOF))
            .collect();
        let mut found = false;
        if let Some(first) = significant.first()
            && let Token::Word(word) = &first.token
            && word.quote_style.is_none()
        {
            let keyword = word.value.to_ascii_uppercase();
            if !starters.contains(&keyword.as_str()) {
                certain(
                    at(first.span.start.line, first.span.start.column),
                    format!(
                        "\"{}\" starts no {database} statement{}",
                        word.value,
                        crate::domain::text::did_you_mean(&keyword, starters.iter().copied())
                    ),
                );
                found = true;
            }
        }
        let mut open: Vec<&sqlparser::tokenizer::TokenWithSpan> = Vec::new();
        for (i, token) in significant.iter().enumerate() {
            let next = significant.get(i + 1).map(|t| &t.token);
            match (&token.token, next) {
                (Token::LParen, _) => open.push(token),
                (Token::RParen, _) if open.pop().is_none() => {
                    certain(
                        at(token.span.start.line, token.span.start.column),
                        "\")\" closes no \"(\"".into(),
                    );
                    found = true;
                }
                _ => {}
            }
            if let (Token::Comma | Token::LParen, Some(Token::Comma))
            | (Token::Comma, Some(Token::RParen)) = (&token.token, next)
            {
                let after = &significant[i + 1];
                certain(
                    at(after.span.start.line, after.span.start.column),
                    format!(
                        "an empty item in a list: \"{}\" after \"{}\"",
                        after.token, token.token
                    ),
                );
                found = true;
            }
        }
        for unclosed in open {
            certain(
                at(unclosed.span.start.line, unclosed.span.start.column),
                "this \"(\" is never closed".into(),
            );
            found = true;
        }
        if found {
            continue;
        }
        let parsed = Parser::new(dialect)
            .with_recursion_limit(MAX_NESTING)
            .try_with_sql(&statement.text)
            .and_then(|mut parser| parser.parse_statements());
        let message = match parsed {
            Ok(_) => continue,
            Err(ParserError::ParserError(m) | ParserError::TokenizerError(m)) => m,
            Err(ParserError::RecursionLimitExceeded) => continue,
        };
        // "... at Line: 2, Column: 5", counted from the statement's start.
        let (text, place) = message
            .rsplit_once(" at Line: ")
            .map_or((message.as_str(), ""), |(t, p)| (t, p));
        let mut numbers = place
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u64>().ok());
        let (line, column) = at(numbers.next().unwrap_or(1), numbers.next().unwrap_or(1));
        problems.push(SyntaxProblem {
            line,
            column,
            message: text
                .replace("Expected: ", "expected ")
                .replace(", found: ", ", found "),
            certain: false,
        });
    }
    problems
}

/// squawk names tokens by kind (`expected R_PAREN`): the characters read better.
fn readable(message: &str) -> String {
    [
        ("R_PAREN", "\")\""),
        ("L_PAREN", "\"(\""),
        ("SEMICOLON", "\";\""),
        ("COMMA", "\",\""),
        ("R_BRACK", "\"]\""),
        ("L_BRACK", "\"[\""),
        ("DOT", "\".\""),
        ("EQ", "\"=\""),
    ]
    .iter()
    .fold(message.to_owned(), |text, (kind, shown)| {
        text.split(' ')
            .map(|word| {
                if word == *kind {
                    (*shown).to_owned()
                } else {
                    word.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// Splits a script the way the targets of `dialect` read it: MySQL/MariaDB scripts with the
/// MySQL client's rules (`#` comments, backslash escapes in strings, `DELIMITER` blocks for
/// procedures and triggers); everything else with PostgreSQL's grammar.
pub fn split_statements_for(sql: &str, dialect: Dialect) -> Result<Vec<Statement>, SplitError> {
    match dialect {
        Dialect::MySql => split_mysql(sql),
        Dialect::Postgres | Dialect::Both => split_statements(sql),
        Dialect::Sqlite => split_statements_as(sql, true),
    }
}

/// Byte offset of a sqlparser location (1-based line and column, columns in characters).
fn byte_offset(sql: &str, line_starts: &[usize], line: u64, column: u64) -> usize {
    let Some(&start) = line_starts.get((line as usize).saturating_sub(1)) else {
        return sql.len();
    };
    sql[start..]
        .char_indices()
        .nth((column as usize).saturating_sub(1))
        .map_or(sql.len(), |(i, _)| start + i)
}

/// The MySQL splitter: sqlparser's MySQL tokenizer finds strings, quoted names and comments;
/// the delimiter (`;`, or what a `DELIMITER` line sets) ends a statement anywhere else.
/// `/*! ... */` comments are statements the server runs, so they count as content.
fn split_mysql(sql: &str) -> Result<Vec<Statement>, SplitError> {
    use sqlparser::dialect::MySqlDialect;
    use sqlparser::tokenizer::{Token, Tokenizer, Whitespace};
    let tokens = Tokenizer::new(&MySqlDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| SplitError {
            line: e.location.line as usize,
            message: e.message,
        })?;
    let mut line_starts = vec![0usize];
    line_starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
    // Byte ranges inside which nothing ends a statement, and those that are mere trivia.
    let mut protected: Vec<(usize, usize)> = Vec::new();
    let mut trivia: Vec<(usize, usize)> = Vec::new();
    for token in &tokens {
        let start = byte_offset(
            sql,
            &line_starts,
            token.span.start.line,
            token.span.start.column,
        );
        let end = byte_offset(
            sql,
            &line_starts,
            token.span.end.line,
            token.span.end.column,
        );
        match &token.token {
            Token::Whitespace(Whitespace::SingleLineComment { .. }) => {
                protected.push((start, end));
                trivia.push((start, end));
            }
            Token::Whitespace(Whitespace::MultiLineComment(comment)) => {
                protected.push((start, end));
                if !comment.starts_with('!') {
                    trivia.push((start, end));
                }
            }
            Token::Whitespace(_) => trivia.push((start, end)),
            Token::Word(word) if word.quote_style.is_some() => protected.push((start, end)),
            Token::Word(_)
            | Token::Number(..)
            | Token::Char(_)
            | Token::EOF
            | Token::SemiColon
            | Token::Comma
            | Token::LParen
            | Token::RParen => {}
            other if format!("{other:?}").contains("String") => protected.push((start, end)),
            _ => {}
        }
    }
    let inside = |ranges: &[(usize, usize)], at: usize| {
        ranges
            .binary_search_by(|&(start, end)| {
                if end <= at {
                    std::cmp::Ordering::Less
                } else if start > at {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
    };
    let mut statements = Vec::new();
    let mut push = |from: usize, to: usize| {
        let piece = &sql[from..to];
        // The statement starts at its first byte that is neither whitespace nor a comment.
        let Some(first) = piece.char_indices().map(|(i, _)| from + i).find(|&at| {
            // sqlparser reads a version comment's content as SQL and gives its wrapper no
            // token of its own: recognise it by its text.
            sql[at..].starts_with("/*!")
                || (!inside(&trivia, at) && !sql[at..].starts_with(char::is_whitespace))
        }) else {
            return;
        };
        let text = sql[first..to].trim_end();
        if text.is_empty() {
            return;
        }
        let keywords = keywords_of(text);
        statements.push(Statement {
            text: text.to_owned(),
            line: line_of(sql, first),
            control: mysql_control(&keywords),
            keywords,
            commits_alone: false,
        });
    };
    let mut delimiter = ";".to_owned();
    let mut start = 0usize;
    let mut at = 0usize;
    while at < sql.len() {
        let line_start = at == 0 || sql.as_bytes()[at - 1] == b'\n';
        if line_start && !inside(&protected, at) {
            let line_end = sql[at..].find('\n').map_or(sql.len(), |i| at + i);
            let line = sql[at..line_end].trim();
            let mut words = line.split_whitespace();
            if words
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case("DELIMITER"))
                && let Some(new) = words.next()
            {
                push(start, at);
                delimiter = new.to_owned();
                start = line_end;
                at = line_end;
                continue;
            }
        }
        if sql[at..].starts_with(delimiter.as_str()) && !inside(&protected, at) {
            push(start, at);
            at += delimiter.len();
            start = at;
            continue;
        }
        at += sql[at..].chars().next().map_or(1, char::len_utf8);
    }
    push(start, sql.len());
    Ok(statements)
}

/// Transaction control in a MySQL statement: the PostgreSQL forms, and XA transactions and
/// `SET autocommit`, which commit what came before.
fn mysql_control(keywords: &[String]) -> TransactionControl {
    let word = |i: usize| keywords.get(i).map(String::as_str);
    match (word(0), word(1), word(2)) {
        (Some("XA"), _, _) => TransactionControl::Forbidden,
        (Some("SET"), Some("AUTOCOMMIT"), _)
        | (Some("SET"), Some("SESSION" | "LOCAL"), Some("AUTOCOMMIT")) => {
            TransactionControl::Forbidden
        }
        (Some("SET"), Some("@"), _) if keywords.iter().any(|w| w.ends_with("AUTOCOMMIT")) => {
            TransactionControl::Forbidden
        }
        _ => control_of_keywords(keywords),
    }
}

fn control_of_node(node: &squawk_syntax::SyntaxNode) -> TransactionControl {
    use SyntaxKind as K;
    match node.kind() {
        K::BEGIN => TransactionControl::Begin,
        K::COMMIT_TRANSACTION => {
            if node.descendants().any(|n| n.kind() == K::AND_CHAIN) {
                TransactionControl::Forbidden
            } else {
                TransactionControl::Commit
            }
        }
        K::COMMIT_PREPARED
        | K::ROLLBACK_TRANSACTION
        | K::ROLLBACK_TO_SAVEPOINT
        | K::ROLLBACK_PREPARED
        | K::SAVEPOINT_CREATE
        | K::RELEASE_SAVEPOINT
        | K::PREPARE_TRANSACTION => TransactionControl::Forbidden,
        _ => TransactionControl::None,
    }
}

fn split_parsed(sql: &str, tree: &squawk_syntax::SourceFile) -> Vec<Statement> {
    let mut statements = Vec::new();
    for stmt in tree.stmts() {
        let node = stmt.syntax();
        if node.kind() == SyntaxKind::EMPTY_STMT {
            continue;
        }
        let range = node.text_range();
        let start = usize::from(range.start());
        let text = sql[start..usize::from(range.end())].trim();
        let text = text.strip_suffix(';').unwrap_or(text).trim_end();
        if text.is_empty() {
            continue;
        }
        statements.push(Statement {
            text: text.to_owned(),
            line: line_of(sql, start),
            keywords: keywords_of(text),
            control: control_of_node(node),
            commits_alone: false,
        });
    }
    statements
}

/// Upper-cased leading keywords (up to eight) of a statement's text.
fn keywords_of(text: &str) -> Vec<String> {
    let mut keywords = Vec::new();
    let mut offset = 0usize;
    for token in tokenize(text) {
        let len = token.len as usize;
        let word = &text[offset..offset + len];
        offset += len;
        if is_trivia(token.kind) {
            continue;
        }
        keywords.push(if token.kind == TokenKind::Ident {
            word.to_ascii_uppercase()
        } else {
            word.to_owned()
        });
        if keywords.len() == 8 {
            break;
        }
    }
    keywords
}

/// Transaction control from a statement's leading keywords, for scripts the parser does not
/// accept. Errs on the side of refusing.
fn control_of_keywords(keywords: &[String]) -> TransactionControl {
    let word = |i: usize| keywords.get(i).map(String::as_str);
    match (word(0), word(1)) {
        (Some("ROLLBACK" | "ABORT" | "SAVEPOINT" | "RELEASE"), _) => TransactionControl::Forbidden,
        (Some("PREPARE"), Some("TRANSACTION")) => TransactionControl::Forbidden,
        (Some("COMMIT" | "END"), _) => {
            let plain = keywords[1..]
                .iter()
                .all(|w| matches!(w.as_str(), "WORK" | "TRANSACTION"));
            if plain {
                TransactionControl::Commit
            } else {
                TransactionControl::Forbidden
            }
        }
        (Some("BEGIN"), None | Some("TRANSACTION" | "WORK" | "ISOLATION" | "READ" | "NOT")) => {
            TransactionControl::Begin
        }
        (Some("START"), Some("TRANSACTION")) => TransactionControl::Begin,
        _ => TransactionControl::None,
    }
}

/// The fallback splitter: every semicolon outside literals, comments and quoted identifiers
/// ends a statement.
fn split_at_semicolons(sql: &str, sqlite: bool) -> Vec<Statement> {
    let mut statements = Vec::new();
    let mut offset = 0usize;
    let mut line = 1usize;
    let mut first: Option<(usize, usize)> = None;
    // SQLite's `CREATE TRIGGER ... BEGIN ...; ...; END;`: SQLite's own rule (sqlite3_complete):
    // in a trigger, a semicolon ends the statement only right after the word END. Names such
    // as `begin` open nothing, so nothing after the trigger's END can be swallowed by it.
    let mut words: Vec<String> = Vec::new();
    let mut last_word_is_end = false;
    for token in tokenize(sql) {
        let len = token.len as usize;
        let text = &sql[offset..offset + len];
        let token_line = line;
        line += text.matches('\n').count();
        offset += len;
        if token.kind == TokenKind::Semi {
            let trigger = sqlite
                && matches!(
                    words.iter().map(String::as_str).collect::<Vec<_>>()[..],
                    ["CREATE", "TRIGGER", ..] | ["CREATE", "TEMP" | "TEMPORARY", "TRIGGER", ..]
                );
            if trigger && !last_word_is_end {
                continue;
            }
            if let Some((start, first_line)) = first.take() {
                push_statement(&mut statements, &sql[start..offset - len], first_line);
            }
            words.clear();
            last_word_is_end = false;
            continue;
        }
        if is_trivia(token.kind) {
            continue;
        }
        if first.is_none() {
            first = Some((offset - len, token_line));
        }
        let word = if token.kind == TokenKind::Ident {
            text.to_ascii_uppercase()
        } else {
            String::new()
        };
        last_word_is_end = word == "END";
        if words.len() < 3 {
            words.push(word);
        }
    }
    if let Some((start, first_line)) = first {
        push_statement(&mut statements, &sql[start..], first_line);
    }
    statements
}

fn push_statement(statements: &mut Vec<Statement>, text: &str, line: usize) {
    let text = text.trim();
    let keywords = keywords_of(text);
    statements.push(Statement {
        text: text.to_owned(),
        line,
        control: control_of_keywords(&keywords),
        keywords,
        commits_alone: false,
    });
}

/// Marks each `ALTER TYPE ... ADD VALUE 'v'` whose value a later statement uses: it must
/// commit first (PostgreSQL: "unsafe use of new value" inside the transaction that added it).
fn mark_enum_additions(statements: &mut [Statement]) {
    for i in 0..statements.len() {
        if !(statements[i].starts_with(&["ALTER", "TYPE"])
            && statements[i].keywords.iter().any(|w| w == "ADD")
            && statements[i].keywords.iter().any(|w| w == "VALUE"))
        {
            continue;
        }
        let Some(value) = added_enum_value(&statements[i].text) else {
            continue;
        };
        let literal = format!("'{}'", value.replace('\'', "''"));
        if statements[i + 1..]
            .iter()
            .any(|s| s.text.contains(&literal))
        {
            statements[i].commits_alone = true;
        }
    }
}

/// The value of `ALTER TYPE t ADD VALUE [IF NOT EXISTS] 'v' [BEFORE|AFTER 'w']`.
fn added_enum_value(text: &str) -> Option<String> {
    let mut offset = 0usize;
    let mut after_value = false;
    for token in tokenize(text) {
        let len = token.len as usize;
        let raw = &text[offset..offset + len];
        offset += len;
        match token.kind {
            TokenKind::Ident if raw.eq_ignore_ascii_case("VALUE") => after_value = true,
            TokenKind::Literal { .. } if after_value && raw.starts_with('\'') => {
                return Some(raw[1..raw.len().saturating_sub(1)].replace("''", "'"));
            }
            _ => {}
        }
    }
    None
}

/// A reason the analysis raises a migration's risk.
///
/// A migration row keeps its findings as this struct's JSON; `MigrationView` decodes them once.
/// Findings stored before columns and rule ids existed read as column 0 and rule "".
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Finding {
    pub line: usize,
    /// 1-based, in characters.
    #[serde(default)]
    pub column: usize,
    pub risk: Risk,
    /// The squawk rule that found it (e.g. `ban-drop-column`), or Sluice's own (`sluice-...`).
    #[serde(default)]
    pub rule: String,
    pub message: String,
    /// The safer way to do it, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// `down` for a finding in the rollback script (absent: the up script).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// The reason of a `-- sluice:ignore <rule> <reason>` above the statement: shown to
    /// approvers beside the finding, which still raises the risk (the author's word does not
    /// lower the approval tier).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
}

impl Finding {
    fn new(
        (line, column): (usize, usize),
        risk: Risk,
        rule: &str,
        message: impl Into<String>,
        fix: Option<&str>,
    ) -> Finding {
        Finding {
            line,
            column,
            risk,
            rule: rule.to_owned(),
            message: message.into(),
            fix: fix.map(str::to_owned),
            script: None,
            ignored: None,
        }
    }

    /// Whether it raises the migration's risk: not a rollback script's own findings (dropping
    /// what the up script made is its job), except that it drops data the up script did not
    /// create. A `-- sluice:ignore` does not change it: the ignore is written by the
    /// migration's author, and an author never lowers the approval tier of their own
    /// migration (the reason is shown to the approvers beside the finding).
    pub fn raises_risk(&self) -> bool {
        self.script.as_deref() != Some("down") || self.rule == DOWN_DROPS_DATA
    }
}

/// The rule of a rollback script that drops a table or column the up script did not create.
pub const DOWN_DROPS_DATA: &str = "sluice-down-drops-data";

const FIX_WHERE: &str = "add a WHERE clause naming the rows; to change every row of a large table, work in batches by key range";

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
        | R::RenamingTable => Some(Risk::Medium),
        _ => None,
    }
}

fn line_of(sql: &str, offset: usize) -> usize {
    position(sql, offset).0
}

/// The 1-based line and column (in characters) of a byte offset.
fn position(sql: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(sql.len());
    while !sql.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &sql[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Which SQL the targets speak: decides which analysis a script gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
    /// A SQLite target: PostgreSQL's analysis; split as SQLite reads a script (a trigger's
    /// `BEGIN ... END` body is one statement).
    Sqlite,
    /// Environments of both kinds: both analyses, the higher risk wins.
    Both,
}

/// Finds operations that destroy data or take long exclusive locks. PostgreSQL: squawk's rules
/// on its parse tree, plus Sluice's own (statements that change every row, dynamic SQL).
/// MySQL/MariaDB: the `sqlparser` crate's MySQL grammar (backticks, `#` comments), with no
/// PostgreSQL-only advice (CONCURRENTLY, NOT VALID).
pub fn analyse(sql: &str, statements: &[Statement], dialect: Dialect) -> Vec<Finding> {
    if check_shape(sql).is_err() {
        // split_statements refuses such a script before it gets here.
        return Vec::new();
    }
    let (sql, statements) = (sql.to_owned(), statements.to_vec());
    on_parser_stack(move || {
        let mut findings = match dialect {
            Dialect::Postgres | Dialect::Sqlite => analyse_postgres(&sql, &statements),
            Dialect::MySql => analyse_mysql(&statements),
            Dialect::Both => {
                let mut both = analyse_postgres(&sql, &statements);
                both.extend(analyse_mysql(&statements));
                both
            }
        };
        findings.sort_by(|a, b| (a.line, &a.rule, &a.message).cmp(&(b.line, &b.rule, &b.message)));
        findings.dedup_by(|a, b| a.line == b.line && a.message == b.message);
        apply_ignores(&sql, &statements, &mut findings);
        findings
    })
}

/// A migration's findings: the up script's, and the down script's marked `down` (they raise
/// the risk only where the down script drops a table or column the up script did not create:
/// rolling back would lose data).
pub fn analyse_migration(
    up: &str,
    up_statements: &[Statement],
    down: Option<(&str, &[Statement])>,
    dialect: Dialect,
) -> Vec<Finding> {
    let mut findings = analyse(up, up_statements, dialect);
    let Some((down, down_statements)) = down else {
        return findings;
    };
    let (created_tables, created_columns) = named_objects(up_statements, "CREATE", "ADD");
    let (dropped_tables, dropped_columns) = named_objects(down_statements, "DROP", "DROP");
    for f in analyse(down, down_statements, dialect) {
        findings.push(Finding {
            script: Some("down".into()),
            ..f
        });
    }
    let lost = |what: String, line: usize| Finding {
        script: Some("down".into()),
        ..Finding::new(
            (line, 1),
            Risk::High,
            DOWN_DROPS_DATA,
            format!(
                "the rollback drops {what}, which the up script did not create: rolling back loses its data"
            ),
            Some(
                "keep the data when undoing: rename or copy it instead of dropping it, or ship no down script and undo by hand",
            ),
        )
    };
    for (table, line) in dropped_tables {
        if !created_tables.iter().any(|(t, _)| *t == table) {
            findings.push(lost(format!("the table {table}"), line));
        }
    }
    for ((table, column), line) in dropped_columns {
        let made = created_tables.iter().any(|(t, _)| *t == table)
            || created_columns
                .iter()
                .any(|((t, c), _)| *t == table && *c == column);
        if !made {
            findings.push(lost(format!("the column {table}.{column}"), line));
        }
    }
    findings
}

/// A name as the database folds it: unquoted names in lower case, quoted ones as written.
#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String, String),
    Dot,
    Comma,
    Other,
}

fn name_tokens(text: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let mut offset = 0usize;
    for token in tokenize(text) {
        let len = token.len as usize;
        let raw = &text[offset..offset + len];
        offset += len;
        match token.kind {
            TokenKind::Ident => out.push(Tok::Word(raw.to_ascii_uppercase(), raw.to_lowercase())),
            TokenKind::QuotedIdent { .. } => {
                let inner = raw.trim_matches('"').replace("\"\"", "\"");
                out.push(Tok::Word(String::new(), inner));
            }
            TokenKind::Dot => out.push(Tok::Dot),
            TokenKind::Comma => out.push(Tok::Comma),
            TokenKind::Backtick => {}
            kind if is_trivia(kind) => {}
            _ => out.push(Tok::Other),
        }
    }
    out
}

/// The tables (`CREATE TABLE x` / `DROP TABLE x, y`) and columns (`ALTER TABLE t ADD|DROP
/// [COLUMN] c`) the statements name with `table_verb` / `column_verb`, each with its line;
/// schema qualification left out.
#[allow(clippy::type_complexity)]
fn named_objects(
    statements: &[Statement],
    table_verb: &str,
    column_verb: &str,
) -> (Vec<(String, usize)>, Vec<((String, String), usize)>) {
    let mut tables = Vec::new();
    let mut columns = Vec::new();
    for statement in statements {
        let toks = name_tokens(&statement.text);
        let word = |i: usize| match toks.get(i) {
            Some(Tok::Word(upper, _)) => upper.as_str(),
            _ => "",
        };
        // A possibly qualified name from `i`: its last part, and where it ends.
        let name_at = |mut i: usize| -> Option<(String, usize)> {
            let mut last = None;
            while let Some(Tok::Word(_, name)) = toks.get(i) {
                last = Some(name.clone());
                if toks.get(i + 1) == Some(&Tok::Dot) {
                    i += 2;
                } else {
                    i += 1;
                    break;
                }
            }
            last.map(|n| (n, i))
        };
        let skip = |mut i: usize, words: &[&str]| {
            while words.contains(&word(i)) {
                i += 1;
            }
            i
        };
        let first = word(0);
        if first == table_verb {
            let i = skip(1, &["UNLOGGED", "TEMP", "TEMPORARY", "GLOBAL", "LOCAL"]);
            if word(i) == "TABLE" {
                let mut i = skip(i + 1, &["IF", "NOT", "EXISTS"]);
                while let Some((name, end)) = name_at(i) {
                    tables.push((name, statement.line));
                    if table_verb != "DROP" || toks.get(end) != Some(&Tok::Comma) {
                        break;
                    }
                    i = end + 1;
                }
            }
        } else if first == "ALTER" && word(1) == "TABLE" {
            let i = skip(2, &["IF", "EXISTS", "ONLY"]);
            let Some((table, mut i)) = name_at(i) else {
                continue;
            };
            while i < toks.len() {
                if word(i) == column_verb {
                    let j = skip(i + 1, &["COLUMN", "IF", "NOT", "EXISTS"]);
                    let refused = [
                        "CONSTRAINT",
                        "DEFAULT",
                        "NOT",
                        "INDEX",
                        "KEY",
                        "PRIMARY",
                        "FOREIGN",
                        "UNIQUE",
                        "CHECK",
                        "PARTITION",
                        "EXPRESSION",
                        "IDENTITY",
                    ];
                    if !refused.contains(&word(i + 1))
                        && let Some(Tok::Word(_, column)) = toks.get(j)
                    {
                        columns.push(((table.clone(), column.clone()), statement.line));
                    }
                }
                i += 1;
            }
        }
    }
    (tables, columns)
}

/// `-- sluice:ignore <rule> <reason>` in the comment lines right above a statement silences
/// that rule's findings on it: they stay, with the reason, and no longer raise the risk. A
/// directive without a reason, or one that silences nothing, is itself a (low) finding.
fn apply_ignores(sql: &str, statements: &[Statement], findings: &mut Vec<Finding>) {
    let lines: Vec<&str> = sql.lines().collect();
    let mut starts: Vec<usize> = statements.iter().map(|s| s.line).collect();
    starts.sort_unstable();
    starts.dedup();
    let mut directives: Vec<(usize, usize, String, String, bool)> = Vec::new();
    for &start in &starts {
        let mut line = start;
        while line > 1 {
            line -= 1;
            let text = lines.get(line - 1).map_or("", |l| l.trim());
            let Some(comment) = text.strip_prefix("--") else {
                break;
            };
            let Some(rest) = comment.trim_start().strip_prefix("sluice:ignore") else {
                continue;
            };
            let mut parts = rest.trim().splitn(2, char::is_whitespace);
            let rule = parts.next().unwrap_or_default().to_owned();
            let reason = parts.next().unwrap_or_default().trim().to_owned();
            directives.push((line, start, rule, reason, false));
        }
    }
    for finding in findings.iter_mut() {
        let Some(&start) = starts.iter().rev().find(|&&s| s <= finding.line) else {
            continue;
        };
        for directive in directives.iter_mut() {
            if directive.1 == start && directive.2 == finding.rule && !directive.3.is_empty() {
                finding.ignored = Some(directive.3.clone());
                directive.4 = true;
            }
        }
    }
    for (line, _, rule, reason, used) in directives {
        let problem = if rule.is_empty() || reason.is_empty() {
            "needs a rule and a reason (-- sluice:ignore <rule> <reason>): it silences nothing"
                .to_owned()
        } else if !used {
            format!("silences nothing: the statement below has no {rule} finding")
        } else {
            continue;
        };
        findings.push(Finding::new(
            (line, 1),
            Risk::Low,
            "sluice-ignore",
            format!("sluice:ignore {problem}"),
            None,
        ));
    }
    findings.sort_by(|a, b| (a.line, &a.rule, &a.message).cmp(&(b.line, &b.rule, &b.message)));
}

fn analyse_postgres(sql: &str, statements: &[Statement]) -> Vec<Finding> {
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
            Some(Finding::new(
                position(sql, usize::from(violation.text_range.start())),
                risk,
                &violation.code.to_string(),
                violation.message.clone(),
                violation.help.as_deref(),
            ))
        })
        .collect();
    findings.extend(tree_findings(sql, &parsed.tree()));
    if !parsed.errors().is_empty() {
        // Not all of it parsed: the statements' own tokens are read as well.
        findings.extend(statements.iter().filter_map(token_finding));
    }
    findings
}

/// Sluice's own checks on PostgreSQL's parse tree, wherever the statement sits (a DELETE in a
/// CTE counts): DELETE/UPDATE with no WHERE clause or one that names no column, TRUNCATE, and
/// DO blocks or functions that run dynamic SQL or truncate or drop.
fn tree_findings(sql: &str, tree: &squawk_syntax::SourceFile) -> Vec<Finding> {
    use SyntaxKind as K;
    let mut findings = Vec::new();
    for node in tree.syntax().descendants() {
        let at = position(sql, usize::from(node.text_range().start()));
        let high = |rule: &str, message: String, fix: Option<&str>| {
            Finding::new(at, Risk::High, rule, message, fix)
        };
        match node.kind() {
            K::DELETE | K::UPDATE => {
                // A body of a function is not run by defining it.
                if node
                    .ancestors()
                    .skip(1)
                    .any(|a| matches!(a.kind(), K::CREATE_FUNCTION | K::CREATE_PROCEDURE))
                {
                    continue;
                }
                let (verb, rule) = if node.kind() == K::DELETE {
                    ("deletes", "sluice-unguarded-delete")
                } else {
                    ("changes", "sluice-unguarded-update")
                };
                let condition = node
                    .children()
                    .find(|c| matches!(c.kind(), K::WHERE_CLAUSE | K::WHERE_CURRENT_OF));
                match condition {
                    None => findings.push(high(
                        rule,
                        format!("{verb} every row of a table (no WHERE clause)"),
                        Some(FIX_WHERE),
                    )),
                    Some(clause)
                        if clause.kind() == K::WHERE_CLAUSE
                            && !clause.descendants().any(|d| d.kind() == K::NAME_REF) =>
                    {
                        findings.push(high(
                            rule,
                            format!(
                                "{verb} every row of a table or none (the WHERE clause names no column: \"{}\")",
                                excerpt(clause.text().to_string().trim())
                            ),
                            Some(FIX_WHERE),
                        ))
                    }
                    Some(clause)
                        if node.kind() == K::DELETE
                            && clause.descendants().any(|d| {
                                d.kind() == K::BIN_EXPR
                                    && d.children().any(|c| c.kind() == K::NOT_IN)
                                    && d.descendants().any(|s| s.kind() == K::SELECT)
                            }) =>
                    {
                        findings.push(Finding::new(
                            at,
                            Risk::Medium,
                            "sluice-delete-not-in-subquery",
                            "deletes the rows NOT IN a subquery: it deletes nothing at all once the subquery yields one NULL, and on a large table it cannot use an anti-join",
                            Some("use NOT EXISTS (SELECT 1 FROM ... WHERE ... = outer.key), and delete in batches on a large table"),
                        ))
                    }
                    Some(_) => {}
                }
            }
            K::DROP_SEQUENCE => findings.push(Finding::new(
                at,
                Risk::Medium,
                "sluice-drop-sequence",
                "drops a sequence: a column default or an application that still draws from it fails",
                Some("first drop the defaults that use it (ALTER TABLE ... ALTER COLUMN ... DROP DEFAULT) and check that no code calls nextval on it"),
            )),
            K::TRUNCATE => findings.push(high(
                "sluice-truncate",
                "truncates a table".into(),
                None,
            )),
            K::DO | K::CREATE_FUNCTION | K::CREATE_PROCEDURE => {
                let place = if node.kind() == K::DO {
                    "a DO block"
                } else {
                    "a function body"
                };
                for token in node
                    .descendants_with_tokens()
                    .filter_map(|element| element.into_token())
                    .filter(|t| matches!(t.kind(), K::DOLLAR_QUOTED_STRING | K::STRING))
                {
                    let words = body_words(token.text());
                    if words.iter().any(|w| w == "EXECUTE") {
                        findings.push(high(
                            "sluice-dynamic-sql",
                            format!("{place} runs dynamic SQL (EXECUTE), which Sluice cannot analyse: a reviewer must read what it builds"),
                            Some("write the statements out where the script can be read, or list what the EXECUTE builds in the description"),
                        ));
                    } else if let Some(word) = words
                        .iter()
                        .find(|w| matches!(w.as_str(), "TRUNCATE" | "DROP"))
                    {
                        findings.push(high(
                            "sluice-destructive-body",
                            format!("{place} contains {word}"),
                            None,
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    findings
}

/// The upper-cased words of a string literal's content (a PL/pgSQL body), strings and comments
/// inside it left out.
fn body_words(literal: &str) -> Vec<String> {
    let body = if let Some(rest) = literal.strip_prefix('$') {
        // $tag$ ... $tag$
        let tag_end = rest.find('$').map(|i| i + 2).unwrap_or(0);
        let inner = &literal[tag_end..];
        inner
            .strip_suffix(&literal[..tag_end])
            .unwrap_or(inner)
            .to_owned()
    } else {
        literal.trim_matches('\'').replace("''", "'")
    };
    let mut words = Vec::new();
    let mut offset = 0usize;
    for token in tokenize(&body) {
        let len = token.len as usize;
        if token.kind == TokenKind::Ident {
            words.push(body[offset..offset + len].to_ascii_uppercase());
        }
        offset += len;
    }
    words
}

/// The upper-cased identifier and keyword tokens of a statement (strings, comments and quoted
/// names left out).
fn words_of(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut offset = 0usize;
    for token in tokenize(text) {
        let len = token.len as usize;
        if token.kind == TokenKind::Ident {
            words.push(text[offset..offset + len].to_ascii_uppercase());
        }
        offset += len;
    }
    words
}

/// What a statement's tokens show when no parser could read it: TRUNCATE, DELETE/UPDATE with
/// no WHERE token (in strings and comments it does not count), DROP of a table, column, schema
/// or database.
fn token_finding(statement: &Statement) -> Option<Finding> {
    let words = words_of(&statement.text);
    let first = words.first().map(String::as_str);
    let has = |w: &str| words.iter().any(|x| x == w);
    let (rule, message, fix) = match first {
        Some("TRUNCATE") => ("sluice-truncate", "truncates a table".to_owned(), None),
        Some("DELETE") if !has("WHERE") => (
            "sluice-unguarded-delete",
            "deletes every row of a table (no WHERE clause)".into(),
            Some(FIX_WHERE),
        ),
        Some("UPDATE") if !has("WHERE") => (
            "sluice-unguarded-update",
            "changes every row of a table (no WHERE clause)".into(),
            Some(FIX_WHERE),
        ),
        Some("DROP")
            if matches!(
                words.get(1).map(String::as_str),
                Some("TABLE" | "DATABASE" | "SCHEMA")
            ) =>
        {
            (
                "sluice-drop-table",
                format!("drops a {}", words[1].to_ascii_lowercase()),
                None,
            )
        }
        Some("ALTER") if mysql_drops_a_column(&words) => {
            ("sluice-drop-column", "drops a column".into(), None)
        }
        _ => return None,
    };
    Some(Finding::new(
        (statement.line, 1),
        Risk::High,
        rule,
        message,
        fix,
    ))
}

/// `ALTER TABLE t DROP [COLUMN] c`: MySQL lets COLUMN be left out; DROP INDEX/KEY/FOREIGN KEY/
/// PRIMARY KEY/CONSTRAINT/CHECK/PARTITION drop no data.
fn mysql_drops_a_column(words: &[String]) -> bool {
    words.windows(2).any(|pair| {
        pair[0] == "DROP"
            && !matches!(
                pair[1].as_str(),
                "INDEX"
                    | "KEY"
                    | "FOREIGN"
                    | "PRIMARY"
                    | "CONSTRAINT"
                    | "CHECK"
                    | "PARTITION"
                    | "DEFAULT"
                    | "NOT"
            )
    })
}

fn analyse_mysql(statements: &[Statement]) -> Vec<Finding> {
    use sqlparser::dialect::MySqlDialect;
    use sqlparser::parser::Parser;
    let mut findings = Vec::new();
    for statement in statements {
        let parsed = Parser::new(&MySqlDialect {})
            .with_recursion_limit(MAX_NESTING)
            .try_with_sql(&statement.text)
            .and_then(|mut parser| parser.parse_statements());
        match parsed {
            Ok(asts) => {
                for ast in &asts {
                    findings.extend(mysql_findings(statement.line, ast));
                }
            }
            Err(_) => findings.extend(token_finding(statement)),
        }
    }
    findings
}

/// Does an expression name no column (`true`, `1 = 1`, `'a' = 'a'`, `NOT false`)?
fn constant_condition(expr: &sqlparser::ast::Expr) -> bool {
    use sqlparser::ast::Expr as E;
    match expr {
        E::Value(_) => true,
        E::BinaryOp { left, right, .. } => constant_condition(left) && constant_condition(right),
        E::UnaryOp { expr, .. }
        | E::Nested(expr)
        | E::IsNull(expr)
        | E::IsNotNull(expr)
        | E::IsTrue(expr)
        | E::IsNotTrue(expr)
        | E::IsFalse(expr)
        | E::IsNotFalse(expr) => constant_condition(expr),
        _ => false,
    }
}

fn mysql_findings(line: usize, ast: &sqlparser::ast::Statement) -> Vec<Finding> {
    use sqlparser::ast::{
        AlterColumnOperation, AlterTableOperation as Op, ObjectType, Statement as S,
    };
    let medium =
        |rule: &str, message: String| Finding::new((line, 1), Risk::Medium, rule, message, None);
    let high =
        |rule: &str, message: String| Finding::new((line, 1), Risk::High, rule, message, None);
    let unguarded = |verb: &str, rule: &str, selection: &Option<sqlparser::ast::Expr>| {
        let mut finding = match selection {
            None => high(
                rule,
                format!("{verb} every row of a table (no WHERE clause)"),
            ),
            Some(expr) if constant_condition(expr) => high(
                rule,
                format!(
                    "{verb} every row of a table or none (the WHERE clause names no column: \"{expr}\")"
                ),
            ),
            Some(_) => return None,
        };
        finding.fix = Some(FIX_WHERE.into());
        Some(finding)
    };
    let mut findings = Vec::new();
    match ast {
        S::Drop {
            object_type, names, ..
        } if matches!(
            object_type,
            ObjectType::Table | ObjectType::Schema | ObjectType::Database
        ) =>
        {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            findings.push(high(
                "sluice-drop-table",
                format!(
                    "drops {} {}",
                    object_type.to_string().to_ascii_lowercase(),
                    names.join(", ")
                ),
            ));
        }
        S::Truncate(_) => findings.push(high("sluice-truncate", "truncates a table".into())),
        S::Delete(delete) => findings.extend(unguarded(
            "deletes",
            "sluice-unguarded-delete",
            &delete.selection,
        )),
        S::Update(update) => findings.extend(unguarded(
            "changes",
            "sluice-unguarded-update",
            &update.selection,
        )),
        S::AlterTable(alter) => {
            let table = &alter.name;
            for operation in &alter.operations {
                match operation {
                    Op::DropColumn { column_names, .. } => {
                        let names: Vec<String> =
                            column_names.iter().map(|n| n.to_string()).collect();
                        findings.push(high(
                            "sluice-drop-column",
                            format!("drops the column {} of {table}", names.join(", ")),
                        ));
                    }
                    Op::DropPrimaryKey { .. } => findings.push(high(
                        "sluice-drop-primary-key",
                        format!("drops the primary key of {table}"),
                    )),
                    Op::ChangeColumn { old_name, .. } => findings.push(medium(
                        "sluice-change-column",
                        format!(
                            "changes the column {old_name} of {table} (a type change rebuilds the table under a lock)"
                        ),
                    )),
                    Op::ModifyColumn { col_name, .. } => findings.push(medium(
                        "sluice-change-column",
                        format!(
                            "modifies the column {col_name} of {table} (a type change rebuilds the table under a lock)"
                        ),
                    )),
                    Op::AlterColumn {
                        column_name,
                        op: AlterColumnOperation::SetDataType { .. },
                    } => findings.push(medium(
                        "sluice-change-column",
                        format!("changes the type of {column_name} of {table}"),
                    )),
                    Op::RenameColumn { old_column_name, .. } => findings.push(medium(
                        "sluice-rename-column",
                        format!(
                            "renames the column {old_column_name} of {table} (code that reads the old name breaks)"
                        ),
                    )),
                    Op::RenameTable { .. } => findings.push(medium(
                        "sluice-rename-table",
                        format!("renames the table {table} (code that reads the old name breaks)"),
                    )),
                    _ => {}
                }
            }
        }
        _ => {}
    }
    findings
}

/// The higher of the declared risk and the risk the findings show.
pub fn effective_risk(declared: Risk, findings: &[Finding]) -> Risk {
    findings
        .iter()
        .filter(|f| f.raises_risk())
        .map(|f| f.risk)
        .fold(declared, std::cmp::max)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sqlite_scripts_are_split_and_checked_as_sqlite_reads_them() {
        let script = "CREATE TABLE orders (id INTEGER PRIMARY KEY AUTOINCREMENT, total int);\nCREATE TRIGGER orders_logged AFTER INSERT ON orders\nBEGIN\n  INSERT INTO order_log VALUES (new.id, 'a; b');\n  UPDATE orders SET total = CASE WHEN total > 0 THEN total ELSE 0 END WHERE id = new.id;\nEND;\nCREATE INDEX orders_total ON orders (total) WHERE total > 0;\n";
        let statements = split_statements_for(script, Dialect::Sqlite).unwrap();
        assert_eq!(statements.len(), 3, "{statements:?}");
        assert!(statements[1].text.ends_with("END"), "{:?}", statements[1]);
        assert!(transaction_control_problems(&statements).is_empty());
        assert!(
            sqlite_syntax_problems(script).iter().all(|p| !p.certain),
            "{:?}",
            sqlite_syntax_problems(script)
        );
        let typos: Vec<(usize, usize, bool)> =
            sqlite_syntax_problems("CREAT TABLE a (id int);\nSELECT (1,, 2);\nPRAGM x;\n")
                .iter()
                .map(|p| (p.line, p.column, p.certain))
                .collect();
        assert_eq!(typos, [(1, 1, true), (2, 11, true), (3, 1, true)]);
    }

    /// A hostile script must not hide a statement inside a "trigger": a table or trigger named
    /// `begin` (SQLite takes it as a name) must not open a body that swallows what follows.
    #[test]
    fn a_sqlite_trigger_hides_no_statement_after_its_end() {
        for script in [
            "CREATE TRIGGER t AFTER INSERT ON begin BEGIN SELECT 1; END; DROP TABLE users;",
            "CREATE TRIGGER begin AFTER INSERT ON a BEGIN SELECT 1; END; DROP TABLE users;",
            "CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT CASE WHEN 1 THEN 2 ELSE 3 END FROM a; END; DROP TABLE users;",
        ] {
            let statements = split_statements_for(script, Dialect::Sqlite).unwrap();
            let last = statements.last().unwrap();
            assert_eq!(last.text, "DROP TABLE users", "{script}: {statements:?}");
            assert!(statements[0].text.ends_with("END"), "{statements:?}");
            let (risk, _) = risk_of(script, Dialect::Sqlite);
            assert_eq!(risk, Risk::High, "{script}: the DROP TABLE is seen");
        }
    }

    #[test]
    fn mysql_syntax_problems_are_certain_for_typos_and_never_for_statements_mariadb_runs() {
        let script = "SELEC 1;\nCREAT TABLE a (id int);\nCREATE TABLE b (id int,, name text);\nCREATE TABLE c (id int;\n  ALTER TABLE d ADD COLUMN `x` int, ADD y int);\nINSERT INTO e VALUES ('a;b', \"c)\");\n";
        let found: Vec<(usize, usize, bool)> = mysql_syntax_problems(script)
            .iter()
            .map(|p| (p.line, p.column, p.certain))
            .collect();
        assert_eq!(
            found,
            [
                (1, 1, true),
                (2, 1, true),
                (3, 24, true),
                (4, 16, true),
                (5, 46, true)
            ],
            "{:?}",
            mysql_syntax_problems(script)
        );
        let typo = &mysql_syntax_problems("CREAT TABLE a (id int);")[0];
        assert!(typo.message.contains("did you mean \"CREATE\""), "{typo:?}");
        // What MariaDB runs is never a certain error; where sqlparser lags (BINARY, ENGINE=,
        // OPTIMIZE, partitions, ...) the problem is uncertain: shown, not failing.
        let real = include_str!("../../tests/fixtures/mysql-real-world.sql");
        let certain: Vec<_> = mysql_syntax_problems(real)
            .into_iter()
            .filter(|p| p.certain)
            .collect();
        assert!(certain.is_empty(), "{certain:?}");
        assert!(
            mysql_syntax_problems(real).iter().any(|p| !p.certain),
            "sqlparser reads all of it now: the uncertain class may be narrowed"
        );
        // Stored programs are the server's to read.
        assert!(
            mysql_syntax_problems(
                "DELIMITER //\nCREATE PROCEDURE p() BEGIN SELEC 1; END //\nDELIMITER ;\n"
            )
            .is_empty()
        );
    }

    #[test]
    fn syntax_problems_name_line_and_column_and_pass_real_world_scripts() {
        for (sql, line) in [
            ("SELEC 1;", 1),
            ("SELECT 1;\nCREAT TABLE t (id int);", 2),
            ("CREATE TABLE t (id int,, name text);", 1),
            ("CREATE TABLE t (\n  id int\n;", 2),
        ] {
            let problems = syntax_problems(sql);
            assert!(!problems.is_empty(), "{sql}");
            assert_eq!(problems[0].line, line, "{sql}: {problems:?}");
        }
        let real = "-- comment; with a semicolon\nBEGIN;\nCREATE TABLE users (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL);\n\
            CREATE INDEX CONCURRENTLY users_email ON users (email);\n\
            DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_type WHERE typname = 'mood') THEN CREATE TYPE mood AS ENUM ('ok'); END IF; END $$;\n\
            ALTER TYPE mood ADD VALUE IF NOT EXISTS 'sad';\n\
            CREATE OR REPLACE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $fn$ BEGIN NEW.updated_at := now(); RETURN NEW; END $fn$;\n\
            CREATE TABLE events (id int, at timestamptz) PARTITION BY RANGE (at);\n\
            COMMENT ON TABLE users IS 'people; really';\n\
            GRANT SELECT ON users TO PUBLIC;\n\
            INSERT INTO users (email) VALUES ('a@b') ON CONFLICT DO NOTHING;\n\
            COMMIT;\n";
        assert_eq!(syntax_problems(real), []);
    }

    use super::*;
    use proptest::prelude::*;

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

    fn problems(sql: &str) -> Vec<(usize, String)> {
        transaction_control_problems(&split_statements(sql).unwrap())
    }

    fn unrunnable(sql: &str, dialect: Dialect) -> Vec<(usize, String)> {
        unrunnable_problems(&split_statements_for(sql, dialect).unwrap(), dialect)
    }

    #[test]
    fn statements_sluice_cannot_run_are_refused_with_their_line() {
        let found = unrunnable(
            "CREATE TABLE t (n int);\nCOPY t FROM STDIN;\ncopy t (n) from stdin with (format csv);\nCOPY (SELECT 1) TO STDOUT;\nCOPY t FROM '/srv/t.csv';\n",
            Dialect::Postgres,
        );
        assert_eq!(
            found.iter().map(|(line, _)| *line).collect::<Vec<_>>(),
            [2, 3, 4],
            "{found:?}"
        );
        assert!(
            found[0].1.starts_with("\"COPY t FROM STDIN\" cannot run in a migration: COPY ... FROM STDIN reads its rows from the client"),
            "{found:?}"
        );
        let found = unrunnable(
            "CREATE TABLE t (n int);\nLOAD DATA LOCAL INFILE '/tmp/t.csv' INTO TABLE t;\nLOAD DATA INFILE '/srv/t.csv' INTO TABLE t;\n",
            Dialect::MySql,
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, 2);
        assert!(
            found[0]
                .1
                .contains("LOCAL INFILE reads a file on the client's machine")
        );
        // Words in strings and comments are not statements.
        assert!(
            unrunnable(
                "INSERT INTO notes VALUES ('COPY t FROM STDIN'); -- COPY t FROM STDIN\n",
                Dialect::Postgres
            )
            .is_empty()
        );
    }

    #[test]
    fn writes_to_the_history_table_are_refused_and_reads_are_not() {
        for (sql, dialect) in [
            ("DROP TABLE sluice_schema_history;", Dialect::Postgres),
            (
                "DROP TABLE IF EXISTS a, public.sluice_schema_history;",
                Dialect::Postgres,
            ),
            (
                "ALTER TABLE sluice_schema_history ADD COLUMN x int;",
                Dialect::Postgres,
            ),
            ("TRUNCATE sluice_schema_history;", Dialect::Postgres),
            (
                "TRUNCATE TABLE ONLY \"sluice_schema_history\";",
                Dialect::Postgres,
            ),
            (
                "DELETE FROM sluice_schema_history WHERE migration_id = 'x';",
                Dialect::Postgres,
            ),
            (
                "UPDATE ONLY public.sluice_schema_history SET success = true;",
                Dialect::Postgres,
            ),
            (
                "INSERT INTO sluice_schema_history (migration_id) VALUES ('x');",
                Dialect::Postgres,
            ),
            (
                "WITH gone AS (DELETE FROM sluice_schema_history RETURNING 1) SELECT count(*) FROM gone;",
                Dialect::Postgres,
            ),
            (
                "COPY sluice_schema_history FROM '/tmp/h.csv';",
                Dialect::Postgres,
            ),
            (
                "DELETE LOW_PRIORITY FROM `sluice_schema_history`;",
                Dialect::MySql,
            ),
            (
                "REPLACE INTO app.sluice_schema_history (migration_id) VALUES ('x');",
                Dialect::MySql,
            ),
            (
                "RENAME TABLE sluice_schema_history TO old_history;",
                Dialect::MySql,
            ),
            (
                "UPDATE IGNORE sluice_schema_history SET success = 0;",
                Dialect::MySql,
            ),
            ("drop table sluice_schema_history;", Dialect::Sqlite),
            (
                "DO $$ BEGIN DELETE FROM sluice_schema_history; END $$;",
                Dialect::Postgres,
            ),
            (
                "DO $body$\nBEGIN\n  IF true THEN\n    DROP TABLE sluice_schema_history;\n  END IF;\nEND\n$body$;",
                Dialect::Postgres,
            ),
        ] {
            let found = unrunnable(sql, dialect);
            assert_eq!(found.len(), 1, "{sql}: {found:?}");
            assert!(
                found[0].1.contains(
                    "changes sluice_schema_history, Sluice's own record of what is applied"
                ),
                "{sql}: {found:?}"
            );
        }
        for (sql, dialect) in [
            ("SELECT * FROM sluice_schema_history;", Dialect::Postgres),
            (
                "INSERT INTO report SELECT migration_id FROM sluice_schema_history;",
                Dialect::Postgres,
            ),
            (
                "DELETE FROM t WHERE id IN (SELECT 1 FROM sluice_schema_history);",
                Dialect::Postgres,
            ),
            (
                "CREATE VIEW applied AS SELECT * FROM sluice_schema_history;",
                Dialect::Postgres,
            ),
            (
                "INSERT INTO notes VALUES ('DROP TABLE sluice_schema_history');",
                Dialect::Postgres,
            ),
            ("DROP TABLE sluice_schema_history_copy;", Dialect::Postgres),
            ("SELECT * FROM `sluice_schema_history`;", Dialect::MySql),
            (
                "DO $$ BEGIN PERFORM count(*) FROM sluice_schema_history; RAISE NOTICE 'DROP TABLE sluice_schema_history'; END $$;",
                Dialect::Postgres,
            ),
        ] {
            assert!(unrunnable(sql, dialect).is_empty(), "{sql}");
        }
    }

    #[test]
    fn script_problems_hold_transaction_control_and_unrunnable_statements_in_line_order() {
        let statements =
            split_statements("CREATE TABLE t (n int);\nCOPY t FROM STDIN;\nROLLBACK;\n").unwrap();
        let found = script_problems(&statements, Dialect::Postgres);
        assert_eq!(
            found.iter().map(|(line, _)| *line).collect::<Vec<_>>(),
            [2, 3],
            "{found:?}"
        );
    }

    #[test]
    fn transaction_control_is_read_from_the_parse_tree() {
        // COMMIT AND CHAIN commits part of the script and opens a new transaction.
        let found =
            problems("INSERT INTO a VALUES (1);\nCOMMIT AND CHAIN;\nINSERT INTO b VALUES (2);");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, 2);
        assert!(problems("SELECT 1;\nROLLBACK AND CHAIN;").len() == 1);
        // A table alias named begin does not open an atomic body that hides what follows.
        let found = problems("SELECT * FROM t AS begin;\nROLLBACK;\nDELETE FROM x;");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, 2);
        let found = problems("SELECT 1 FROM t begin atomic;\nROLLBACK;\nDELETE FROM x;");
        assert_eq!(found.len(), 1, "{found:?}");
        let statements =
            split_statements("SELECT 1 FROM t begin atomic;\nROLLBACK;\nDELETE FROM x;").unwrap();
        assert_eq!(statements.len(), 3, "{statements:?}");
        // Every other form.
        for sql in [
            "SAVEPOINT s",
            "RELEASE s",
            "RELEASE SAVEPOINT s",
            "ROLLBACK TO SAVEPOINT s",
            "ABORT",
            "PREPARE TRANSACTION 'x'",
            "COMMIT PREPARED 'x'",
            "ROLLBACK PREPARED 'x'",
        ] {
            let found = problems(&format!("SELECT 1;\n{sql};\nSELECT 2;"));
            assert_eq!(found.len(), 1, "{sql}: {found:?}");
        }
        // BEGIN/COMMIT only where they wrap the whole script.
        assert!(problems("BEGIN;\nCREATE TABLE t (id int);\nCOMMIT;").is_empty());
        assert!(problems("START TRANSACTION;\nCREATE TABLE t (id int);\nEND;").is_empty());
        let found = problems(
            "BEGIN;\nINSERT INTO a VALUES (1);\nCOMMIT;\nBEGIN;\nINSERT INTO b VALUES (2);\nCOMMIT;",
        );
        assert_eq!(
            found.iter().map(|p| p.0).collect::<Vec<_>>(),
            [3, 4],
            "{found:?}"
        );
        // Inside strings, comments, dollar quotes and function bodies they are just text.
        assert!(problems("SELECT 'ROLLBACK; COMMIT AND CHAIN';\n/* ; ROLLBACK; */ SELECT 2;\n-- ROLLBACK;\nSELECT $$ ; ROLLBACK; $$;\nDO $$ BEGIN PERFORM 1; END $$;").is_empty());
    }

    #[test]
    fn deep_nesting_and_long_operator_chains_are_refused_before_parsing() {
        let deep = format!("SELECT {}1{};", "(".repeat(10_000), ")".repeat(10_000));
        let e = split_statements(&deep).unwrap_err();
        assert!(e.message.contains("nested more than 500"), "{e}");
        let fine = format!("SELECT {}1{};", "(".repeat(400), ")".repeat(400));
        assert_eq!(split_statements(&fine).unwrap().len(), 1);
        let chain = format!("SELECT 1{};", "+1".repeat(5_000));
        let e = split_statements(&chain).unwrap_err();
        assert!(e.message.contains("operators in a row"), "{e}");
        let nots = format!("SELECT {}true;", "NOT ".repeat(10_000));
        assert!(split_statements(&nots).is_err());
        let cases = format!(
            "SELECT {}1{};",
            "CASE WHEN true THEN ".repeat(1_000),
            " END".repeat(1_000)
        );
        assert!(split_statements(&cases).is_err());
        // Many rows of a big INSERT are no chain.
        let rows: Vec<String> = (0..5_000).map(|i| format!("({i}, 'x' || 'y')")).collect();
        let insert = format!("INSERT INTO t VALUES {};", rows.join(", "));
        assert_eq!(split_statements(&insert).unwrap().len(), 1);
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

    fn decoy() -> impl Strategy<Value = String> {
        proptest::sample::select(vec![
            "SELECT 1".to_owned(),
            "INSERT INTO t VALUES ('a;b')".into(),
            "SELECT * FROM t AS begin".into(),
            "SELECT 1 FROM t begin".into(),
            "SELECT 'COMMIT; ROLLBACK'".into(),
            "SELECT $$ ; ROLLBACK; $$".into(),
            "SELECT $x$ ; COMMIT AND CHAIN; $x$".into(),
            "/* ; ROLLBACK; */ SELECT 2".into(),
            "-- ROLLBACK;\nSELECT 3".into(),
            "SELECT \"commit\", \"rollback;\" FROM t".into(),
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END".into(),
            "DO $$ BEGIN RAISE NOTICE 'ROLLBACK;'; END $$".into(),
            "UPDATE t SET note = E'\\'; ROLLBACK; --' WHERE id = 1".into(),
        ])
    }

    fn control() -> impl Strategy<Value = String> {
        proptest::sample::select(vec![
            "ROLLBACK".to_owned(),
            "rollback work".into(),
            "ABORT".into(),
            "COMMIT AND CHAIN".into(),
            "commit\n  and   chain".into(),
            "ROLLBACK AND CHAIN".into(),
            "SAVEPOINT s".into(),
            "RELEASE s".into(),
            "ROLLBACK TO s".into(),
            "PREPARE TRANSACTION 'p'".into(),
            "COMMIT PREPARED 'p'".into(),
            "/* x */ ROLLBACK".into(),
        ])
    }

    proptest! {
        /// No script whose transaction-control statement is surrounded by aliases, comments,
        /// strings or dollar quotes gets through; and those decoys alone never cause a refusal.
        #[test]
        fn hidden_transaction_control_never_gets_through(
            before in proptest::collection::vec(decoy(), 0..4),
            after in proptest::collection::vec(decoy(), 0..4),
            hidden in proptest::option::of(control()),
        ) {
            let mut parts = before.clone();
            if let Some(c) = &hidden {
                parts.push(c.clone());
            }
            parts.extend(after.iter().cloned());
            let sql = parts.join(";\n");
            let statements = split_statements(&sql).unwrap();
            let refused = !transaction_control_problems(&statements).is_empty();
            prop_assert_eq!(refused, hidden.is_some(), "{}", sql);
        }
    }

    fn risk_of(sql: &str, dialect: Dialect) -> (Risk, Vec<Finding>) {
        let statements = split_statements(sql).unwrap();
        let findings = analyse(sql, &statements, dialect);
        (effective_risk(Risk::Low, &findings), findings)
    }

    #[test]
    fn evasions_of_the_risk_analysis_are_caught() {
        for sql in [
            "DELETE FROM users WHERE true;",
            "DELETE FROM users WHERE 1 = 1;",
            "DELETE FROM users /* WHERE */;",
            "UPDATE t SET note = 'nowhere';",
            "UPDATE t SET note = 'x' -- WHERE id = 1\n;",
            "WITH gone AS (DELETE FROM users RETURNING id) SELECT count(*) FROM gone;",
            "DO $$ BEGIN EXECUTE 'TRUNCATE users'; END $$;",
            "DO $body$ BEGIN EXECUTE format('DROP TABLE %I', 'users'); END $body$;",
            "DO $$ BEGIN TRUNCATE users; END $$;",
            "CREATE FUNCTION wipe() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'DELETE FROM users'; END $$;",
        ] {
            let (risk, findings) = risk_of(sql, Dialect::Postgres);
            assert_eq!(risk, Risk::High, "{sql}: {findings:?}");
        }
        for sql in [
            "DELETE FROM users WHERE id = 1;",
            "UPDATE t SET note = 'x' WHERE id = 1;",
            "DO $$ BEGIN RAISE NOTICE 'hello'; END $$;",
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;",
        ] {
            let (risk, findings) = risk_of(sql, Dialect::Postgres);
            assert_eq!(risk, Risk::Low, "{sql}: {findings:?}");
        }
    }

    #[test]
    fn the_mysql_splitter_knows_hash_comments_escapes_and_delimiter_blocks() {
        let sql = "# setup; not a statement\nCREATE TABLE t (s varchar(10)); # trailing; comment\nINSERT INTO t VALUES ('it\\'s; fine'), (\"a;b\");\n-- another; comment\nDELIMITER $$\nCREATE PROCEDURE p()\nBEGIN\n  SELECT 1;\n  SELECT 'x;y';\nEND$$\nDELIMITER ;\n/*!40101 SET NAMES utf8mb4 */;\nSELECT `weird;name` FROM t;";
        let statements = split_statements_for(sql, Dialect::MySql).unwrap();
        let texts: Vec<&str> = statements.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "CREATE TABLE t (s varchar(10))",
                "INSERT INTO t VALUES ('it\\'s; fine'), (\"a;b\")",
                "CREATE PROCEDURE p()\nBEGIN\n  SELECT 1;\n  SELECT 'x;y';\nEND",
                "/*!40101 SET NAMES utf8mb4 */",
                "SELECT `weird;name` FROM t",
            ],
            "{statements:#?}"
        );
        assert_eq!(
            statements.iter().map(|s| s.line).collect::<Vec<_>>(),
            [2, 3, 6, 12, 13]
        );
        assert!(transaction_control_problems(&statements).is_empty());
        for forbidden in [
            "XA START 'x'",
            "SET autocommit = 1",
            "SET SESSION autocommit = 0",
            "ROLLBACK",
            "SAVEPOINT a",
        ] {
            let statements = split_statements_for(
                &format!("SELECT 1;\n{forbidden};\nSELECT 2;"),
                Dialect::MySql,
            )
            .unwrap();
            assert_eq!(
                transaction_control_problems(&statements).len(),
                1,
                "{forbidden}"
            );
        }
        let e = split_statements_for("SELECT 1;\nSELECT 'open", Dialect::MySql).unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn mysql_scripts_are_read_with_a_mysql_grammar() {
        for sql in [
            "ALTER TABLE `users` DROP COLUMN `legacy`;",
            "ALTER TABLE `users` DROP `legacy`;",
            "DROP TABLE IF EXISTS `sessions`;",
            "TRUNCATE `audit`;",
            "DELETE FROM `users` WHERE 1;",
            "UPDATE `users` SET `flag` = 0 # WHERE id = 1\n;",
            "DELETE FROM users;",
        ] {
            let (risk, findings) = risk_of(sql, Dialect::MySql);
            assert_eq!(risk, Risk::High, "{sql}: {findings:?}");
        }
        let (risk, findings) = risk_of(
            "ALTER TABLE `users` MODIFY `name` VARCHAR(500) NOT NULL;",
            Dialect::MySql,
        );
        assert_eq!(risk, Risk::Medium, "{findings:?}");
        // No PostgreSQL-only advice for MySQL: CONCURRENTLY does not exist there.
        let (risk, findings) = risk_of(
            "CREATE INDEX users_email ON users (email);\nALTER TABLE users ADD CONSTRAINT fk FOREIGN KEY (org) REFERENCES orgs (id);",
            Dialect::MySql,
        );
        assert!(
            findings
                .iter()
                .all(|f| !f.message.contains("CONCURRENTLY") && !f.message.contains("NOT VALID")),
            "{findings:?}"
        );
        assert_eq!(risk, Risk::Low, "{findings:?}");
        let (risk, _) = risk_of("DELETE FROM `users` WHERE `id` = 3;", Dialect::MySql);
        assert_eq!(risk, Risk::Low);
    }

    #[test]
    fn analysis_raises_risk() {
        let sql = "ALTER TABLE users DROP COLUMN legacy;\nCREATE INDEX i ON t (a);\nCREATE INDEX CONCURRENTLY j ON t (b);\nUPDATE t SET a = 1 WHERE id = 2;";
        let statements = split_statements(sql).unwrap();
        let findings = analyse(sql, &statements, Dialect::Postgres);
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
        let findings = analyse(sql, &statements, Dialect::Postgres);
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].line, 3);
        assert_eq!(findings[0].rule, "require-concurrent-index-creation");
    }

    #[test]
    fn data_wide_changes_and_style_advice() {
        let sql =
            "DELETE FROM sessions;\nCREATE TABLE t (id int, name varchar(10));\nTRUNCATE audit;";
        let statements = split_statements(sql).unwrap();
        let findings = analyse(sql, &statements, Dialect::Postgres);
        let lines: Vec<(usize, Risk)> = findings.iter().map(|f| (f.line, f.risk)).collect();
        // prefer-bigint-over-int and prefer-text-field are advice: they raise nothing.
        assert_eq!(lines, [(1, Risk::High), (3, Risk::High)], "{findings:?}");
    }
}

#[cfg(test)]
mod ci_lint_tests {
    use super::*;

    fn pg(sql: &str) -> Vec<Finding> {
        analyse(sql, &split_statements(sql).unwrap(), Dialect::Postgres)
    }

    fn migration(up: &str, down: &str) -> Vec<Finding> {
        let up_statements = split_statements(up).unwrap();
        let down_statements = split_statements(down).unwrap();
        analyse_migration(
            up,
            &up_statements,
            Some((down, &down_statements)),
            Dialect::Postgres,
        )
    }

    #[test]
    fn findings_carry_rule_line_column_and_fix() {
        let findings = pg("SELECT 1;\n  DELETE FROM users;\nCREATE INDEX i ON t (x);");
        let delete = findings
            .iter()
            .find(|f| f.rule == "sluice-unguarded-delete")
            .unwrap();
        assert_eq!((delete.line, delete.column), (2, 3));
        assert!(delete.fix.as_deref().unwrap().contains("WHERE"));
        let index = findings
            .iter()
            .find(|f| f.rule == "require-concurrent-index-creation")
            .unwrap();
        assert_eq!((index.line, index.column), (3, 1));
        assert!(index.fix.is_some(), "squawk's help is the fix: {index:?}");
    }

    #[test]
    fn drop_not_null_is_no_finding_but_not_in_deletes_and_drop_sequence_are() {
        assert!(pg("ALTER TABLE t ALTER COLUMN c DROP NOT NULL;").is_empty());
        let findings =
            pg("DELETE FROM orders WHERE customer_id NOT IN (SELECT id FROM customers);");
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].rule, "sluice-delete-not-in-subquery");
        assert_eq!(findings[0].risk, Risk::Medium);
        assert!(findings[0].fix.as_deref().unwrap().contains("NOT EXISTS"));
        // A NOT IN list is fine.
        assert!(pg("DELETE FROM orders WHERE state NOT IN ('open', 'held');").is_empty());
        let findings = pg("DROP SEQUENCE IF EXISTS order_seq;");
        assert_eq!(findings[0].rule, "sluice-drop-sequence", "{findings:?}");
        assert_eq!(findings[0].risk, Risk::Medium);
    }

    #[test]
    fn sluice_ignore_silences_one_rule_on_the_next_statement_with_its_reason() {
        let sql = "-- sluice:ignore sluice-unguarded-delete the table holds one row of settings\n\
                   DELETE FROM settings;\n\
                   DELETE FROM audit_copy;\n";
        let findings = pg(sql);
        let silenced: Vec<&Finding> = findings.iter().filter(|f| f.ignored.is_some()).collect();
        assert_eq!(silenced.len(), 1, "{findings:?}");
        assert_eq!(silenced[0].line, 2);
        assert_eq!(
            silenced[0].ignored.as_deref(),
            Some("the table holds one row of settings")
        );
        // The second DELETE still counts: the risk is high.
        assert_eq!(effective_risk(Risk::Low, &findings), Risk::High);
        // The author's ignore never lowers the tier the matrix uses (issue 19).
        let only =
            "-- why\n-- sluice:ignore sluice-unguarded-delete one row\nDELETE FROM settings;";
        assert_eq!(effective_risk(Risk::Low, &pg(only)), Risk::High);
        // Another rule's name, or no reason: silences nothing, and says so.
        for bad in [
            "-- sluice:ignore ban-drop-table because\nDELETE FROM settings;",
            "-- sluice:ignore sluice-unguarded-delete\nDELETE FROM settings;",
        ] {
            let findings = pg(bad);
            assert_eq!(effective_risk(Risk::Low, &findings), Risk::High, "{bad}");
            assert!(
                findings
                    .iter()
                    .any(|f| f.rule == "sluice-ignore" && f.line == 1 && f.risk == Risk::Low),
                "{findings:?}"
            );
        }
    }

    #[test]
    fn a_down_script_raises_the_risk_only_when_it_drops_what_the_up_script_did_not_create() {
        let undoes = migration(
            "CREATE TABLE prefs (id int);\nALTER TABLE users ADD COLUMN theme text;",
            "ALTER TABLE users DROP COLUMN theme;\nDROP TABLE prefs;",
        );
        assert!(
            undoes.iter().all(|f| f.script.as_deref() == Some("down")),
            "{undoes:?}"
        );
        assert_eq!(effective_risk(Risk::Low, &undoes), Risk::Low, "{undoes:?}");
        let loses = migration(
            "ALTER TABLE users ADD COLUMN theme text;",
            "ALTER TABLE users DROP COLUMN theme, DROP COLUMN email;\nDROP TABLE IF EXISTS public.\"Orders\", prefs;",
        );
        let lost: Vec<&str> = loses
            .iter()
            .filter(|f| f.rule == DOWN_DROPS_DATA)
            .map(|f| f.message.as_str())
            .collect();
        assert_eq!(lost.len(), 3, "{loses:?}");
        assert!(lost.iter().any(|m| m.contains("the column users.email")));
        assert!(lost.iter().any(|m| m.contains("the table Orders")));
        assert!(lost.iter().any(|m| m.contains("the table prefs")));
        assert_eq!(effective_risk(Risk::Low, &loses), Risk::High);
    }
}

#[cfg(test)]
mod enum_tests {
    use super::*;

    #[test]
    fn an_added_enum_value_used_later_commits_alone() {
        let used = split_statements(
            "ALTER TYPE mood ADD VALUE IF NOT EXISTS 'it''s great' AFTER 'ok';\nINSERT INTO days VALUES ('it''s great');",
        )
        .unwrap();
        assert!(used[0].commits_alone && used[0].requires_no_transaction());
        assert!(!used[1].requires_no_transaction());
        let unused =
            split_statements("ALTER TYPE mood ADD VALUE 'great';\nINSERT INTO days VALUES ('ok');")
                .unwrap();
        assert!(!unused[0].requires_no_transaction());
    }
}
