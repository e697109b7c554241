//! Watches a PostgreSQL apply session from a second connection while its statements run: who
//! holds the locks a statement waits for (named in the log, and waited out before the next
//! attempt), which sessions queue behind it, and the blocking watchdog, which cancels a
//! statement that has kept other sessions waiting longer than the environment allows.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

/// Another session seen from the watch connection.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Peer {
    pub pid: i32,
    user: String,
    application: String,
    state: String,
    query: String,
    /// Seconds its transaction has been open.
    open_seconds: f64,
    /// When its transaction began (epoch seconds): the same pid in a later transaction is
    /// another transaction.
    xact_start: Option<f64>,
}

impl Peer {
    /// "pid 4242 (user app, application psql, idle in transaction, transaction open 8.1 s,
    /// query: UPDATE t SET ...)"
    pub fn describe(&self) -> String {
        let mut query: String = self.query.split_whitespace().collect::<Vec<_>>().join(" ");
        if query.chars().count() > 120 {
            query = query.chars().take(120).collect::<String>() + "...";
        }
        let mut parts = vec![format!("user {}", or_unknown(&self.user))];
        if !self.application.is_empty() {
            parts.push(format!("application {}", self.application));
        }
        if !self.state.is_empty() {
            parts.push(self.state.clone());
        }
        parts.push(format!("transaction open {:.1} s", self.open_seconds));
        if !query.is_empty() {
            parts.push(format!(
                "{}: {query}",
                if self.state == "active" {
                    "query"
                } else {
                    "last query"
                }
            ));
        }
        format!("pid {} ({})", self.pid, parts.join(", "))
    }
}

fn or_unknown(s: &str) -> &str {
    if s.is_empty() { "unknown" } else { s }
}

/// What the watch saw during one statement.
#[derive(Debug, Default)]
pub(super) struct Observed {
    /// The sessions whose locks the statement last waited for.
    pub holders: Vec<Peer>,
    /// Sessions waiting for this one, with when each was first seen waiting.
    waiting: HashMap<i32, (Instant, Peer)>,
    /// The most sessions seen waiting for this one at once, and the longest any waited.
    pub most_waiting: usize,
    pub longest_wait: Duration,
    /// Why the watchdog cancelled the statement, when it did.
    pub cancelled: Option<String>,
}

/// The second connection, to the same database.
pub(super) struct Watch {
    client: Client,
    connection: tokio::task::JoinHandle<()>,
    /// The apply session's backend pid.
    pid: i32,
    /// How long the statement may keep other sessions waiting before it is cancelled.
    blocking_limit: Option<Duration>,
    /// How soon into a statement the first look comes.
    first_look: Duration,
}

/// Who holds what the session waits for, and who waits for the session, in one round trip.
/// pg_blocking_pids is asked only for sessions that wait for a lock at all.
const LOOK: &str = "\
SELECT true, a.pid, coalesce(a.usename::text, ''), coalesce(a.application_name, ''), coalesce(a.state, ''), \
       left(coalesce(a.query, ''), 400), coalesce(extract(epoch FROM clock_timestamp() - a.xact_start)::float8, 0), \
       extract(epoch FROM a.xact_start)::float8 \
  FROM pg_stat_activity a WHERE a.pid = ANY(pg_blocking_pids($1)) \
UNION ALL \
SELECT false, a.pid, coalesce(a.usename::text, ''), coalesce(a.application_name, ''), coalesce(a.state, ''), \
       left(coalesce(a.query, ''), 400), coalesce(extract(epoch FROM clock_timestamp() - a.xact_start)::float8, 0), \
       extract(epoch FROM a.xact_start)::float8 \
  FROM pg_stat_activity a WHERE a.wait_event_type = 'Lock' AND a.pid <> $1 AND $1 = ANY(pg_blocking_pids(a.pid))";

/// How many of the given transactions are still open.
const STILL_OPEN: &str = "\
SELECT count(*) FROM pg_stat_activity a JOIN unnest($1::int4[], $2::float8[]) AS b(pid, xs) \
    ON a.pid = b.pid AND extract(epoch FROM a.xact_start)::float8 = b.xs";

impl Watch {
    /// Opens the watch connection; None (with a warning) when it cannot be had: applying
    /// goes on without names in the log, without waiting out holders, and without watchdog.
    pub async fn open(
        config: &tokio_postgres::Config,
        pid: i32,
        blocking_limit: Option<Duration>,
        lock_attempt: Duration,
    ) -> Option<Watch> {
        let mut config = config.clone();
        config
            .application_name("sluice-watch")
            .options("-c statement_timeout=5000 -c lock_timeout=1000");
        let (client, connection) = match config.connect(NoTls).await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the lock watch connection; applying without it");
                return None;
            }
        };
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        Some(Watch {
            client,
            connection,
            pid,
            blocking_limit,
            first_look: (lock_attempt / 2)
                .clamp(Duration::from_millis(5), Duration::from_millis(100)),
        })
    }

    /// Looks at the session every so often while a statement runs (first halfway into a lock
    /// attempt, then every 100 ms, every 250 ms after the first second), noting in `observed`
    /// who holds what it waits for and who waits for it; cancels the statement when it has
    /// kept a session waiting longer than the blocking limit. Never returns: the caller drops
    /// it when the statement ends.
    pub async fn watch(&self, observed: &Mutex<Observed>, statement: &str) {
        let started = Instant::now();
        let mut next = self.first_look;
        loop {
            tokio::time::sleep_until((started + next).into()).await;
            next += if next < Duration::from_secs(1) {
                Duration::from_millis(100)
            } else {
                Duration::from_millis(250)
            };
            let (holders, waiting) = match self.look().await {
                Ok(seen) => seen,
                Err(e) => {
                    tracing::warn!(error = %e, "the lock watch failed; watching no more for this statement");
                    break;
                }
            };
            let reason = {
                let mut o = observed.lock().unwrap_or_else(|p| p.into_inner());
                if !holders.is_empty() {
                    o.holders = holders;
                }
                let now = Instant::now();
                o.waiting
                    .retain(|pid, _| waiting.iter().any(|p| p.pid == *pid));
                for peer in waiting {
                    o.waiting
                        .entry(peer.pid)
                        .and_modify(|(_, p)| *p = peer.clone())
                        .or_insert((now, peer));
                }
                o.most_waiting = o.most_waiting.max(o.waiting.len());
                let longest = o
                    .waiting
                    .values()
                    .map(|(since, _)| now - *since)
                    .max()
                    .unwrap_or_default();
                o.longest_wait = o.longest_wait.max(longest);
                match self.blocking_limit {
                    Some(limit) if longest > limit => Some(watchdog_reason(&o, limit)),
                    _ => None,
                }
            };
            if let Some(reason) = reason {
                tracing::warn!(pid = self.pid, %reason, "blocking watchdog cancels the statement");
                // Only while the session still runs this statement: a cancel that arrived
                // after it ended could hit the history write or the next statement.
                // The reason is noted first: the statement may end (and this future be dropped)
                // before the cancel's own answer comes back.
                let head: String = statement.chars().take(100).collect();
                observed.lock().unwrap_or_else(|p| p.into_inner()).cancelled = Some(reason);
                let cancelled = match self
                    .client
                    .execute(
                        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
                         WHERE pid = $1 AND state = 'active' AND left(query, 100) = $2",
                        &[&self.pid, &head],
                    )
                    .await
                {
                    Ok(n) => n == 1,
                    Err(e) => {
                        tracing::warn!(error = %e, "the blocking watchdog could not cancel the statement");
                        false
                    }
                };
                if !cancelled {
                    observed.lock().unwrap_or_else(|p| p.into_inner()).cancelled = None;
                }
                break;
            }
        }
        std::future::pending::<()>().await;
    }

    async fn look(&self) -> Result<(Vec<Peer>, Vec<Peer>), tokio_postgres::Error> {
        let rows = self.client.query(LOOK, &[&self.pid]).await?;
        let mut holders = Vec::new();
        let mut waiting = Vec::new();
        for row in rows {
            let peer = Peer {
                pid: row.get(1),
                user: row.get(2),
                application: row.get(3),
                state: row.get(4),
                query: row.get(5),
                open_seconds: row.get(6),
                xact_start: row.get(7),
            };
            if row.get::<_, bool>(0) {
                holders.push(peer);
            } else {
                waiting.push(peer);
            }
        }
        Ok((holders, waiting))
    }

    /// Whether any of these transactions is still open (true when it cannot tell).
    pub async fn still_open(&self, holders: &[Peer]) -> bool {
        let (pids, starts): (Vec<i32>, Vec<f64>) = holders
            .iter()
            .filter_map(|p| p.xact_start.map(|x| (p.pid, x)))
            .unzip();
        if pids.is_empty() {
            return false;
        }
        match self.client.query_one(STILL_OPEN, &[&pids, &starts]).await {
            Ok(row) => row.get::<_, i64>(0) > 0,
            Err(e) => {
                tracing::warn!(error = %e, "the lock watch cannot tell whether the holders are gone");
                true
            }
        }
    }

    pub async fn close(self) {
        drop(self.client);
        let _ = self.connection.await;
    }
}

/// The failure the watchdog records: how long, whom.
fn watchdog_reason(observed: &Observed, limit: Duration) -> String {
    let mut waiting: Vec<&(Instant, Peer)> = observed.waiting.values().collect();
    waiting.sort_by_key(|(since, _)| *since);
    let now = Instant::now();
    let names: Vec<String> = waiting
        .iter()
        .take(5)
        .map(|(since, p)| {
            format!(
                "{} waiting {:.1} s",
                p.describe(),
                (now - *since).as_secs_f64()
            )
        })
        .collect();
    let more = waiting.len().saturating_sub(names.len());
    format!(
        "cancelled by the blocking watchdog: it kept {} session{} waiting for its locks longer than the environment's blocking_limit of {} s: {}{}",
        waiting.len(),
        if waiting.len() == 1 { "" } else { "s" },
        limit.as_secs_f64(),
        names.join("; "),
        if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        }
    )
}
