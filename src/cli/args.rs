//! The command line's words: the arguments and subcommands, parsed by clap.

use super::*;
use clap_complete::ArgValueCandidates;

#[derive(Parser)]
#[command(name = "sluice", version, about = "Database-migration control plane")]
pub struct Cli {
    /// The daemon's gRPC address [default: the context's, else http://127.0.0.1:50051].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "SLUICE_ADDR"
    )]
    pub(super) server: Option<String>,
    /// Which context of the CLI's config.yml to use (`sluice context` lists them) [default:
    /// its current_context].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "SLUICE_CONTEXT"
    )]
    pub(super) context: Option<String>,
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
    Sqlite,
    Both,
}

impl From<DialectArg> for crate::lint::Dialect {
    fn from(d: DialectArg) -> Self {
        match d {
            DialectArg::Postgres => crate::lint::Dialect::Postgres,
            DialectArg::Mysql => crate::lint::Dialect::MySql,
            DialectArg::Sqlite => crate::lint::Dialect::Sqlite,
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
    #[command(
        after_help = "Examples:\n  sluice server\n  sluice server --config-dir /etc/sluice\n  SLUICE_CONFIG_DIR=/etc/sluice sluice server"
    )]
    Server {
        /// Folder with sluice.yml, environments.yml, approval_matrix.yml and users.yml.
        #[arg(long, env = "SLUICE_CONFIG_DIR", default_value = "config")]
        config_dir: PathBuf,
    },
    /// Check the configuration files and exit.
    #[command(
        after_help = "Examples:\n  sluice check-config\n  sluice check-config --config-dir /etc/sluice -o json"
    )]
    CheckConfig {
        /// Folder with sluice.yml, environments.yml, approval_matrix.yml and users.yml.
        #[arg(long, env = "SLUICE_CONFIG_DIR", default_value = "config")]
        config_dir: PathBuf,
    },
    /// API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Release every approved deployment of an environment to its worker.
    #[command(
        after_help = "Examples:\n  sluice migrate development --wait\n  sluice migrate production --wait --yes        # the last environment asks first\n  sluice migrate staging --backup --wait\n  sluice migrate production --force --emergency \"Critical security fix\" --migration 003_20261125_101500_add_index"
    )]
    Migrate {
        /// The environment (development, staging, production, ...).
        #[arg(add = ArgValueCandidates::new(completion::environments))]
        environment: String,
        /// Follow the deployments until they finish; the exit code is their outcome.
        #[arg(long)]
        wait: bool,
        /// Take a backup of the database first, whatever backup_required says (the legacy
        /// `migrate --backup`).
        #[arg(long)]
        backup: bool,
        /// With --emergency: approve one migration awaiting approval there without its full
        /// set of approvals (the one --migration names, or the only one waiting).
        #[arg(long, requires = "emergency")]
        force: bool,
        /// The reason for an emergency override (needs --force; asked at a terminal when
        /// `--emergency` comes without one, as the legacy tool allowed).
        #[arg(
            long,
            requires = "force",
            value_name = "REASON",
            num_args = 0..=1,
            default_missing_value = ""
        )]
        emergency: Option<String>,
        /// The migration the emergency is about (needed when more than one awaits approval
        /// in the environment: one emergency never carries others along).
        #[arg(
            long = "migration",
            value_name = "ID",
            requires = "emergency",
            add = ArgValueCandidates::new(completion::migrations)
        )]
        migration: Option<String>,
    },
    /// An environment's queue, pending approvals, lock and last applied migration; without an
    /// environment, a line for each.
    #[command(
        after_help = "Examples:\n  sluice status                 # every environment, a line each\n  sluice status production\n  sluice status staging --verbose     # approvals, deadlines, errors\n  sluice status development -o json"
    )]
    Status {
        /// The environment (without one: a line per environment, in promotion order).
        #[arg(add = ArgValueCandidates::new(completion::environments))]
        environment: Option<String>,
        /// Each deployment's approvals, deadline, error and dry run too.
        #[arg(long)]
        verbose: bool,
    },
    /// Roll back a migration in an environment with its rollback script.
    #[command(
        after_help = "Examples:\n  sluice rollback staging 003_20261125_101500_add_index --wait\n  sluice rollback production 003_20261125_101500_add_index --force --emergency \"outage\" --yes"
    )]
    Rollback {
        /// The environment.
        #[arg(add = ArgValueCandidates::new(completion::environments))]
        environment: String,
        /// The migration's id (`sluice history` lists them).
        #[arg(add = ArgValueCandidates::new(completion::migrations))]
        migration_id: String,
        /// With --emergency: mark the rollback as an emergency (the seed's flags).
        #[arg(long, requires = "emergency")]
        force: bool,
        /// The emergency's reason, recorded as the rollback's reason (needs --force; asked at
        /// a terminal when `--emergency` comes without one, as the legacy tool allowed).
        #[arg(
            long,
            requires = "force",
            value_name = "REASON",
            num_args = 0..=1,
            default_missing_value = ""
        )]
        emergency: Option<String>,
        /// Follow the rollback until it finishes.
        #[arg(long)]
        wait: bool,
    },
    /// Try a migration on an environment's database without applying it: its script runs in a
    /// transaction that is rolled back. Prints whether it runs, how long it took and the locks
    /// it took; approvers see the result in `status --verbose`. (The two arguments may come in
    /// either order.)
    #[command(
        name = "dry-run",
        after_help = "Examples:\n  sluice dry-run 003_20261125_101500_add_index production"
    )]
    DryRun {
        /// The migration's id.
        #[arg(add = ArgValueCandidates::new(completion::migrations))]
        migration_id: String,
        /// The environment whose database it is tried on.
        #[arg(add = ArgValueCandidates::new(completion::environments))]
        environment: String,
    },
    /// Test a migration's rollback script: up, down and up again on a scratch copy of an
    /// environment's schema (default: the first environment, in promotion order, where it is not
    /// applied), the schemas compared. Approvers
    /// see the result; environments may require a passing one before approval.
    #[command(
        name = "test-rollback",
        after_help = "Examples:\n  sluice test-rollback 003_20261125_101500_add_index\n  sluice test-rollback 003_20261125_101500_add_index staging"
    )]
    TestRollback {
        /// The migration's id.
        #[arg(add = ArgValueCandidates::new(completion::migrations))]
        migration_id: String,
        /// Whose schema is copied (default: the first environment of the promotion order where
        /// the migration is not applied).
        #[arg(add = ArgValueCandidates::new(completion::environments))]
        environment: Option<String>,
    },
    /// Compare an environment's live schema with the one Sluice left there: changes made
    /// outside Sluice. Exits 1 when the schema drifted.
    #[command(
        after_help = "Examples:\n  sluice drift production\n  sluice drift production --accept     # operators: the live schema becomes the reference"
    )]
    Drift {
        /// The environment.
        #[arg(add = ArgValueCandidates::new(completion::environments))]
        environment: String,
        /// Make the live schema the reference and clear the recorded drift (operators).
        #[arg(long)]
        accept: bool,
    },
    /// Retry a failed deployment (after fixing its cause).
    #[command(after_help = "Examples:\n  sluice retry development 003_20261125_101500_add_index")]
    Retry {
        /// The environment.
        #[arg(add = ArgValueCandidates::new(completion::environments))]
        environment: String,
        /// The failed migration's id.
        #[arg(add = ArgValueCandidates::new(completion::migrations))]
        migration_id: String,
    },
    /// Cancel a deployment that has not run (or skip a failed one).
    #[command(
        after_help = "Examples:\n  sluice cancel staging 003_20261125_101500_add_index \"superseded by 004\"\n  sluice cancel development 003_20261125_101500_add_index --yes"
    )]
    Cancel {
        /// The environment.
        #[arg(add = ArgValueCandidates::new(completion::environments))]
        environment: String,
        /// The migration's id.
        #[arg(add = ArgValueCandidates::new(completion::migrations))]
        migration_id: String,
        /// Why (recorded in the audit trail).
        #[arg(default_value = "")]
        reason: String,
    },
    /// Check migration scripts offline: header, syntax, forbidden statements, risk findings.
    #[command(
        after_help = "Examples:\n  sluice validate scripts/003_*.sql\n  sluice validate --dialect mysql scripts/*.sql\n  sluice validate -o sarif scripts/*.sql > sluice.sarif\n  sluice validate -o github scripts/*.sql     # annotations in a GitHub Actions log"
    )]
    Validate {
        /// The script files (their rollbacks are found from their headers).
        #[arg(required = true)]
        scripts: Vec<PathBuf>,
        /// The SQL the target databases speak: decides the syntax check and the risk analysis
        /// (mysql covers MariaDB; sqlite for SQLite files, with PostgreSQL's risk rules; both
        /// when PostgreSQL and MySQL environments take the scripts).
        #[arg(long, value_enum, default_value = "postgres")]
        dialect: DialectArg,
    },
    /// Approve a migration in the role given (the approver must be the token's user). The
    /// approval names the checksum of the scripts read: without --checksum, at a terminal, the
    /// scripts (or what changed since the version approved or applied before), the findings
    /// and the checksum are shown and a yes approves that checksum; --yes or no terminal need
    /// --checksum.
    #[command(
        after_help = "Examples:\n  sluice approve 003_20261125_101500_add_index dba alice \"index is concurrent\"     # at a terminal: shows the scripts, asks\n  sluice show 003_20261125_101500_add_index --sql     # in a script: read, then name the checksum\n  sluice approve 003_20261125_101500_add_index data_ops alice \"ok\" --environment staging --checksum 9f2c..."
    )]
    Approve {
        /// The migration's id.
        #[arg(add = ArgValueCandidates::new(completion::migrations))]
        migration_id: String,
        /// The role you approve in: data_ops, data_ops_lead, dba, tech_lead, cto, admin.
        #[arg(add = ArgValueCandidates::new(completion::roles))]
        role: String,
        /// Your user name (the token's user).
        approver: String,
        /// What you checked (recorded with the approval).
        comment: String,
        /// Default: the first environment of the promotion order where it awaits this role.
        #[arg(long, add = ArgValueCandidates::new(completion::environments))]
        environment: Option<String>,
        /// The checksum of the scripts you reviewed (`sluice show` prints it). Default, at a
        /// terminal: the checksum of the scripts shown before the question.
        #[arg(long)]
        checksum: Option<String>,
    },
    /// Reject a migration.
    #[command(
        after_help = "Examples:\n  sluice reject 003_20261125_101500_add_index \"needs a backfill plan\"\n  sluice reject 003_20261125_101500_add_index \"not during the sale\" --environment production"
    )]
    Reject {
        /// The migration's id.
        #[arg(add = ArgValueCandidates::new(completion::migrations))]
        migration_id: String,
        /// Why (sent to the author).
        comment: String,
        /// Default: the first environment where it awaits approval.
        #[arg(long, add = ArgValueCandidates::new(completion::environments))]
        environment: Option<String>,
    },
    /// Lock an environment: nothing new starts there.
    #[command(after_help = "Examples:\n  sluice lock production \"release freeze\"")]
    Lock {
        /// The environment.
        #[arg(add = ArgValueCandidates::new(completion::environments))]
        environment: String,
        /// Why (shown in status and to whoever tries to migrate).
        reason: String,
    },
    /// Unlock an environment.
    #[command(after_help = "Examples:\n  sluice unlock production")]
    Unlock {
        /// The environment.
        #[arg(add = ArgValueCandidates::new(completion::environments))]
        environment: String,
        /// Accepted for the seed's `unlock --force`; unlocking needs an operator role either way.
        #[arg(long)]
        force: bool,
    },
    /// Write a new migration script and its rollback from a template.
    #[command(
        after_help = "Examples:\n  sluice new                     # asks for each field at a terminal\n  sluice new --type SCHEMA_CHANGE --description \"Add user preferences\" --risk LOW --duration 5m --ticket PROJ-123\n  sluice new --dialect postgres --description \"Backfill emails\" --type DATA_MIGRATION --ticket PROJ-124"
    )]
    New(NewArgs),
    /// Submit migration scripts (with the metadata `new` wrote in their header).
    #[command(
        after_help = "Examples:\n  sluice submit scripts/003_20261125_101500_add_index.sql\n  sluice submit scripts/*.sql            # one batch: all or none\n  sluice submit scripts/003_*.sql --yes  # a changed file amends its migration without asking"
    )]
    Submit {
        /// The script files; each one's rollback is read from its header's `Rollback:` or
        /// rollbacks/<name>_rollback.sql.
        #[arg(required = true)]
        scripts: Vec<PathBuf>,
    },
    /// Submit an existing migration folder in one batch, in its own order, each migration
    /// keeping its version in its id: golang-migrate, Flyway, dbmate or Sluice's own (detected
    /// when --format is not given). Files need no header; these flags give what they lack.
    #[command(
        after_help = "Examples:\n  sluice import db/migrations\n  sluice import db/migration --format flyway --risk medium --ticket ADOPT-1"
    )]
    Import {
        /// The folder of migration files.
        dir: PathBuf,
        /// The folder's tool (default: detected from its file names).
        #[arg(long, value_enum)]
        format: Option<super::import::Format>,
        /// schema_change, data_migration or hotfix.
        #[arg(long = "type", default_value = "schema_change")]
        kind: String,
        /// The declared risk (the analysis may raise it): low, medium or high.
        #[arg(long, default_value = "low")]
        risk: String,
        /// The ticket recorded with each imported migration.
        #[arg(long, default_value = "IMPORT")]
        ticket: String,
        /// Estimated duration of each, e.g. 1m.
        #[arg(long, default_value = "1m")]
        duration: String,
    },
    /// Take a backup of an environment's database now (operators; the legacy
    /// backup-database.sh): kept, listed and restorable like the workers' backups.
    #[command(
        after_help = "Examples:\n  sluice backup production\n  sluice backup staging -o json"
    )]
    Backup {
        /// The environment.
        #[arg(add = ArgValueCandidates::new(completion::environments))]
        environment: String,
    },
    /// The backups taken before changing an environment, newest first: file, size, the
    /// deployment each preceded.
    #[command(after_help = "Examples:\n  sluice backups production")]
    Backups {
        /// The environment.
        #[arg(add = ArgValueCandidates::new(completion::environments))]
        environment: String,
    },
    /// Replace everything in an environment's database with one of the backups Sluice took
    /// of it (data_ops_lead). The environment is locked while it runs and the database as it
    /// was is kept as a backup first; migrations the backup does not hold go back to
    /// approved, for `sluice migrate`.
    #[command(
        after_help = "Examples:\n  sluice restore staging staging-20261129T101500.000Z.dump     # asks you to type staging\n  sluice restore staging staging-20261129T101500.000Z.dump --yes"
    )]
    Restore {
        /// The environment.
        #[arg(add = ArgValueCandidates::new(completion::environments))]
        environment: String,
        /// The backup's file name, as `sluice backups` lists it.
        backup: String,
        /// The same as --yes: the database is replaced without asking.
        #[arg(long)]
        confirm: bool,
    },
    /// Empty an environment's database so that its queue can be replayed with `sluice
    /// migrate` (data_ops_lead; development only unless allow_reset is set).
    #[command(
        after_help = "Examples:\n  sluice reset development     # asks you to type development\n  sluice reset development --yes && sluice migrate development --wait"
    )]
    Reset {
        /// The environment.
        #[arg(add = ArgValueCandidates::new(completion::environments))]
        environment: String,
        /// The same as --yes: everything in the database is dropped without asking.
        #[arg(long)]
        confirm: bool,
    },
    /// Record the migrations up to one (an id, or an imported version) as applied to an
    /// environment without running them: a database where they already ran (data_ops_lead).
    #[command(after_help = "Examples:\n  sluice baseline production --up-to 20240105120000")]
    Baseline {
        /// The environment.
        #[arg(add = ArgValueCandidates::new(completion::environments))]
        environment: String,
        /// The last migration that already ran there: its id or its imported version.
        #[arg(long, value_name = "VERSION_OR_ID")]
        up_to: String,
    },
    /// Everything about one migration (like `kubectl describe`): its scripts' findings and, per
    /// environment, state, approvals (void when the scripts changed since), errors with the
    /// failing statement, timings; `--log` adds each deployment's log (NOTICEs included).
    #[command(
        after_help = "Examples:\n  sluice show 003_20261125_101500_add_index\n  sluice show 003_20261125_101500_add_index production --log\n  sluice show 003_20261125_101500_add_index --sql\n  sluice show 003_20261125_101500_add_index --diff"
    )]
    Show {
        /// The migration's id.
        #[arg(add = ArgValueCandidates::new(completion::migrations))]
        migration_id: String,
        /// Only this environment's deployment.
        #[arg(add = ArgValueCandidates::new(completion::environments))]
        environment: Option<String>,
        /// Print the deployments' logs too.
        #[arg(long)]
        log: bool,
        /// Print the up and down scripts as they are (control characters other than newlines
        /// and tabs shown as \u{..}), and nothing else.
        #[arg(long, conflicts_with_all = ["diff", "log", "environment"])]
        sql: bool,
        /// Print what changed since the version approved or applied before (an amendment
        /// replaced it), and nothing else.
        #[arg(long, conflicts_with_all = ["log", "environment"])]
        diff: bool,
    },
    /// What awaits your approval: every deployment, in every environment, still needing a
    /// role you hold (and that you have not approved), with the command to approve it.
    #[command(after_help = "Examples:\n  sluice pending\n  sluice pending -o json")]
    Pending,
    /// Who the token is (user and roles), which daemon answers and its version.
    #[command(
        after_help = "Examples:\n  sluice whoami\n  SLUICE_ADDR=http://sluice.internal:50051 sluice whoami"
    )]
    Whoami,
    /// Migrations and their state per environment (or in one environment).
    #[command(after_help = "Examples:\n  sluice history\n  sluice history production --limit 10")]
    History {
        /// Only this environment's column.
        #[arg(add = ArgValueCandidates::new(completion::environments))]
        environment: Option<String>,
        /// How many migrations, newest first.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// The audit trail: every state change, who, what, when.
    #[command(
        after_help = "Examples:\n  sluice audit --since 2h\n  sluice audit --environment production --actor alice --since 7d\n  sluice audit --migration 003_20261125_101500_add_index --oldest-first\n  sluice audit --after 1042        # what happened since record 1042"
    )]
    Audit {
        /// Only records of this environment.
        #[arg(long, add = ArgValueCandidates::new(completion::environments))]
        environment: Option<String>,
        /// Only records of this migration (by id).
        #[arg(long, add = ArgValueCandidates::new(completion::migrations))]
        migration: Option<String>,
        /// Only what this user (or `sluice`, the daemon) did.
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
        /// Only records after this id (the id column), oldest first: what happened since you
        /// last looked.
        #[arg(long, value_name = "ID")]
        after: Option<i64>,
        /// Only records before this id: the page before the one you saw.
        #[arg(long, value_name = "ID")]
        before: Option<i64>,
        /// How many records (the newest, unless --oldest-first).
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Follow an environment's deployments as they change (until Ctrl-C), or one migration's
    /// deployment there until it finishes.
    #[command(
        after_help = "Examples:\n  sluice watch production\n  sluice watch production 003_20261125_101500_add_index     # exit code = its outcome\n  sluice watch staging -o json | jq .     # JSON Lines"
    )]
    Watch {
        /// The environment.
        #[arg(add = ArgValueCandidates::new(completion::environments))]
        environment: String,
        /// Only this migration's deployment, until it finishes.
        #[arg(add = ArgValueCandidates::new(completion::migrations))]
        migration_id: Option<String>,
    },
    /// Print the shell hook for completion (bash, zsh, fish, elvish, powershell): the shell
    /// then asks `sluice` itself, which completes environment names, migration ids and roles
    /// from the daemon (SLUICE_ADDR/SLUICE_TOKEN or the current context).
    #[command(
        after_help = "Examples:\n  sluice completions bash\n  echo 'source <(sluice completions bash)' >> ~/.bashrc\n  echo 'source <(sluice completions zsh)' >> ~/.zshrc\n  sluice completions fish > ~/.config/fish/completions/sluice.fish"
    )]
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Undelivered notifications (pending, or --dead) with their last error.
    #[command(
        after_help = "Examples:\n  sluice notifications\n  sluice notifications --dead\n  sluice notifications --retry 42"
    )]
    Notifications {
        /// Those given up after their retries ran out.
        #[arg(long)]
        dead: bool,
        /// How many, newest first.
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Put a dead notification back in line, by id (data_ops_lead, admin).
        #[arg(long, value_name = "ID")]
        retry: Option<String>,
    },
    /// The CLI's contexts (like kubectl's): daemons and how to get a token for each, from
    /// ~/.config/sluice/config.yml (or $SLUICE_CONFIG). Without a name: list them, the current
    /// one marked; with a name: make it current.
    #[command(
        after_help = "Examples:\n  sluice context\n  sluice context staging\n  sluice --context production status production\n\nThe file:\n  current_context: staging\n  contexts:\n    staging:\n      server: https://sluice.staging.internal:50051\n      token_command: pass show sluice/staging\n    local:\n      server: http://127.0.0.1:50051\n      token: <token>      # read only if the file is chmod 600"
    )]
    Context {
        /// The context to make current.
        name: Option<String>,
    },
    /// Notification channels: their health, and test messages.
    Notify {
        #[command(subcommand)]
        command: NotifyCommand,
    },
    /// Record the post-deployment review an emergency override owes (as a role you hold).
    #[command(
        after_help = "Examples:\n  sluice review 003_20261125_101500_hotfix production \"checked the orders table; fine\""
    )]
    Review {
        /// The migration's id.
        #[arg(add = ArgValueCandidates::new(completion::migrations))]
        migration_id: String,
        /// The environment where the override was made.
        #[arg(add = ArgValueCandidates::new(completion::environments))]
        environment: String,
        /// What the review found.
        comment: String,
    },
}

#[derive(Subcommand)]
pub(super) enum NotifyCommand {
    /// Send a test message through a channel and print the receiver's answer.
    #[command(after_help = "Examples:\n  sluice notify test slack-data-ops")]
    Test {
        /// The channel's name in notifications.yml.
        channel: String,
    },
    /// Every channel of notifications.yml: on or off, pending, dead, last success and error.
    #[command(after_help = "Examples:\n  sluice notify channels")]
    Channels,
}

#[derive(Subcommand)]
pub(super) enum TokenCommand {
    /// Print a new random token and the users.yml entry that grants it.
    #[command(
        after_help = "Examples:\n  sluice token new --user alice --roles \"data_ops, dba\"\n  sluice token new --user ci --roles developer --add-to config/users.yml"
    )]
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
    /// Default: the token's user when the daemon answers (`sluice whoami`), else $USER.
    #[arg(long)]
    pub(super) author: Option<String>,
    /// The ticket or issue the change is for (PROJ-123).
    #[arg(long)]
    pub(super) ticket: Option<String>,
    /// The folder holding scripts/ and rollbacks/.
    #[arg(long, default_value = ".")]
    pub(super) dir: PathBuf,
    /// The SQL the template is written in [default: the daemon's environments' when it
    /// answers, else sqlite, as the shipped environments.yml targets SQLite files].
    #[arg(long, value_enum)]
    pub(super) dialect: Option<scripts::TemplateDialect>,
}
