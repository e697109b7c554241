//! The command line's words: the arguments and subcommands, parsed by clap.

use super::*;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Database-migration control plane")]
pub struct Cli {
    /// The daemon's gRPC address.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "SLUICE_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub(super) server: String,
    /// API token (see `sluice token new`).
    #[arg(
        long,
        global = true,
        env = "SLUICE_TOKEN",
        hide_env_values = true,
        help_heading = "Global options"
    )]
    pub(super) token: Option<String>,
    /// How to print results (sarif and github: `validate` only, for CI tools).
    #[arg(
        short = 'o',
        long,
        global = true,
        value_enum,
        default_value = "table",
        help_heading = "Global options"
    )]
    pub(super) output: OutputArg,
    /// Answer yes to confirmations: rollback, cancel, --force, migrate in the last environment
    /// of the promotion order, restore, reset, amending a submitted migration. Without a
    /// terminal to ask at, these are refused unless --yes is given.
    #[arg(short = 'y', long, global = true, help_heading = "Global options")]
    pub(super) yes: bool,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum DialectArg {
    Postgres,
    Mysql,
    Both,
}

impl From<DialectArg> for crate::lint::Dialect {
    fn from(d: DialectArg) -> Self {
        match d {
            DialectArg::Postgres => crate::lint::Dialect::Postgres,
            DialectArg::Mysql => crate::lint::Dialect::MySql,
            DialectArg::Both => crate::lint::Dialect::Both,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Output {
    Table,
    Json,
}

/// `--output` as given: `validate` also speaks SARIF 2.1.0 and GitHub annotations.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum OutputArg {
    Table,
    Json,
    Sarif,
    Github,
}

#[derive(Subcommand)]
pub(super) enum Command {
    /// Run the daemon: REST and gRPC APIs, one worker per environment, the scheduler.
    Server {
        /// Folder with sluice.yml, environments.yml, approval_matrix.yml and users.yml.
        #[arg(long, env = "SLUICE_CONFIG_DIR", default_value = "config")]
        config_dir: PathBuf,
    },
    /// Check the configuration files and exit.
    CheckConfig {
        #[arg(long, env = "SLUICE_CONFIG_DIR", default_value = "config")]
        config_dir: PathBuf,
    },
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Release every approved deployment of an environment to its worker.
    Migrate {
        environment: String,
        /// Follow the deployments until they finish; the exit code is their outcome.
        #[arg(long)]
        wait: bool,
        /// With --emergency: approve everything awaiting approval there without the full set.
        #[arg(long, requires = "emergency")]
        force: bool,
        /// The reason for an emergency override (needs --force).
        #[arg(long, requires = "force", value_name = "REASON")]
        emergency: Option<String>,
    },
    /// An environment's queue, pending approvals, lock and last applied migration.
    Status {
        environment: String,
        #[arg(long)]
        verbose: bool,
    },
    /// Roll back a migration in an environment with its rollback script.
    Rollback {
        environment: String,
        migration_id: String,
        #[arg(long, requires = "emergency")]
        force: bool,
        #[arg(long, requires = "force", value_name = "REASON")]
        emergency: Option<String>,
        /// Follow the rollback until it finishes.
        #[arg(long)]
        wait: bool,
    },
    /// Try a migration on an environment's database without applying it: its script runs in a
    /// transaction that is rolled back. Prints whether it runs, how long it took and the locks
    /// it took; approvers see the result in `status --verbose`. (The two arguments may come in
    /// either order.)
    #[command(name = "dry-run")]
    DryRun {
        migration_id: String,
        environment: String,
    },
    /// Test a migration's rollback script: up, down and up again on a scratch copy of an
    /// environment's schema (default: the first environment), the schemas compared. Approvers
    /// see the result; environments may require a passing one before approval.
    #[command(name = "test-rollback")]
    TestRollback {
        migration_id: String,
        environment: Option<String>,
    },
    /// Compare an environment's live schema with the one Sluice left there: changes made
    /// outside Sluice. Exits 1 when the schema drifted.
    Drift {
        environment: String,
        /// Make the live schema the reference and clear the recorded drift (operators).
        #[arg(long)]
        accept: bool,
    },
    /// Retry a failed deployment (after fixing its cause).
    Retry {
        environment: String,
        migration_id: String,
    },
    /// Cancel a deployment that has not run (or skip a failed one).
    Cancel {
        environment: String,
        migration_id: String,
        #[arg(default_value = "")]
        reason: String,
    },
    /// Check migration scripts offline: header, syntax, forbidden statements, risk findings.
    Validate {
        #[arg(required = true)]
        scripts: Vec<PathBuf>,
        /// The SQL the target databases speak: decides the risk analysis (mysql covers MariaDB;
        /// both when environments of the two kinds take the scripts).
        #[arg(long, value_enum, default_value = "postgres")]
        dialect: DialectArg,
    },
    /// Approve a migration in the role given (the approver must be the token's user).
    Approve {
        migration_id: String,
        role: String,
        approver: String,
        comment: String,
        /// Default: the first environment of the promotion order where it awaits this role.
        #[arg(long)]
        environment: Option<String>,
        /// The checksum of the scripts you reviewed (`sluice show`/`status --verbose` print it).
        /// Default: the checksum the daemon shows now, printed before approving.
        #[arg(long)]
        checksum: Option<String>,
    },
    /// Reject a migration.
    Reject {
        migration_id: String,
        comment: String,
        /// Default: the first environment where it awaits approval.
        #[arg(long)]
        environment: Option<String>,
    },
    /// Lock an environment: nothing new starts there.
    Lock { environment: String, reason: String },
    /// Unlock an environment.
    Unlock {
        environment: String,
        /// Accepted for the seed's `unlock --force`; unlocking needs an operator role either way.
        #[arg(long)]
        force: bool,
    },
    /// Write a new migration script and its rollback from a template.
    New(NewArgs),
    /// Submit migration scripts (with the metadata `new` wrote in their header).
    Submit {
        #[arg(required = true)]
        scripts: Vec<PathBuf>,
    },
    /// Submit an existing migration folder in one batch, in its own order, each migration
    /// keeping its version in its id: golang-migrate, Flyway, dbmate or Sluice's own (detected
    /// when --format is not given). Files need no header; these flags give what they lack.
    Import {
        dir: PathBuf,
        #[arg(long, value_enum)]
        format: Option<super::import::Format>,
        /// schema_change, data_migration or hotfix.
        #[arg(long = "type", default_value = "schema_change")]
        kind: String,
        /// The declared risk (the analysis may raise it): low, medium or high.
        #[arg(long, default_value = "low")]
        risk: String,
        #[arg(long, default_value = "IMPORT")]
        ticket: String,
        /// Estimated duration of each, e.g. 1m.
        #[arg(long, default_value = "1m")]
        duration: String,
    },
    /// The backups taken before changing an environment, newest first: file, size, the
    /// deployment each preceded.
    Backups { environment: String },
    /// Replace everything in an environment's database with one of the backups Sluice took
    /// of it (data_ops_lead). The environment is locked while it runs and the database as it
    /// was is kept as a backup first; migrations the backup does not hold go back to
    /// approved, for `sluice migrate`.
    Restore {
        environment: String,
        /// The backup's file name, as `sluice backups` lists it.
        backup: String,
        /// The same as --yes: the database is replaced without asking.
        #[arg(long)]
        confirm: bool,
    },
    /// Empty an environment's database so that its queue can be replayed with `sluice
    /// migrate` (data_ops_lead; development only unless allow_reset is set).
    Reset {
        environment: String,
        /// The same as --yes: everything in the database is dropped without asking.
        #[arg(long)]
        confirm: bool,
    },
    /// Record the migrations up to one (an id, or an imported version) as applied to an
    /// environment without running them: a database where they already ran (data_ops_lead).
    Baseline {
        environment: String,
        #[arg(long, value_name = "VERSION_OR_ID")]
        up_to: String,
    },
    /// Everything about one migration (like `kubectl describe`): its scripts' findings and, per
    /// environment, state, approvals (void when the scripts changed since), errors with the
    /// failing statement, timings; `--log` adds each deployment's log (NOTICEs included).
    Show {
        migration_id: String,
        /// Only this environment's deployment.
        environment: Option<String>,
        /// Print the deployments' logs too.
        #[arg(long)]
        log: bool,
    },
    /// Who the token is (user and roles), which daemon answers and its version.
    Whoami,
    /// Migrations and their state per environment (or in one environment).
    History {
        environment: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// The audit trail: every state change, who, what, when.
    Audit {
        #[arg(long)]
        environment: Option<String>,
        #[arg(long)]
        migration: Option<String>,
        #[arg(long)]
        actor: Option<String>,
        /// Only what happened since: a duration back from now (30m, 2h, 7d) or an RFC 3339
        /// time (2026-11-29T10:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only what happened until: a duration back from now or an RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        /// Oldest first (newest first by default).
        #[arg(long)]
        oldest_first: bool,
        /// How many records (the newest, unless --oldest-first).
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Follow an environment's deployments as they change (until Ctrl-C), or one migration's
    /// deployment there until it finishes.
    Watch {
        environment: String,
        migration_id: Option<String>,
    },
    /// Print a shell completion script (bash, zsh, fish, ...).
    Completions { shell: clap_complete::Shell },
    /// Undelivered notifications (pending, or --dead) with their last error.
    Notifications {
        /// Those given up after their retries ran out.
        #[arg(long)]
        dead: bool,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Put a dead notification back in line, by id (data_ops_lead, admin).
        #[arg(long, value_name = "ID")]
        retry: Option<String>,
    },
    /// Notification channels: their health, and test messages.
    Notify {
        #[command(subcommand)]
        command: NotifyCommand,
    },
    /// Record the post-deployment review an emergency override owes (as a role you hold).
    Review {
        migration_id: String,
        environment: String,
        comment: String,
    },
}

#[derive(Subcommand)]
pub(super) enum NotifyCommand {
    /// Send a test message through a channel and print the receiver's answer.
    Test { channel: String },
    /// Every channel of notifications.yml: on or off, pending, dead, last success and error.
    Channels,
}

#[derive(Subcommand)]
pub(super) enum TokenCommand {
    /// Print a new random token and the users.yml entry that grants it.
    New {
        /// The user's name in users.yml (required: no one gets a token by default).
        #[arg(long)]
        user: String,
        /// Roles, comma separated ("data_ops, dba" too): developer, data_ops, data_ops_lead,
        /// dba, tech_lead, cto, admin.
        #[arg(long, value_delimiter = ',', default_value = "developer")]
        roles: Vec<String>,
        /// Append the entry to this users.yml (checked before it is written; the daemon
        /// picks it up without a restart).
        #[arg(long, value_name = "USERS_YML")]
        add_to: Option<PathBuf>,
    },
}

/// `sluice new`: what the flags give; the rest is asked at a terminal.
#[derive(clap::Args)]
pub(super) struct NewArgs {
    /// SCHEMA_CHANGE, DATA_MIGRATION or HOTFIX.
    #[arg(long = "type")]
    pub(super) kind: Option<String>,
    /// One line: what the migration does (its file name is made from it).
    #[arg(long)]
    pub(super) description: Option<String>,
    /// LOW, MEDIUM or HIGH.
    #[arg(long)]
    pub(super) risk: Option<String>,
    /// Estimated duration, e.g. 5m.
    #[arg(long)]
    pub(super) duration: Option<String>,
    /// Default: $USER.
    #[arg(long)]
    pub(super) author: Option<String>,
    /// The ticket or issue the change is for (PROJ-123).
    #[arg(long)]
    pub(super) ticket: Option<String>,
    /// The folder holding scripts/ and rollbacks/.
    #[arg(long, default_value = ".")]
    pub(super) dir: PathBuf,
}
