//! What the service tells the workers without a store round trip: wake-ups, the lock
//! generation, and the last target error per environment.

use super::*;

/// Wakes an environment's worker when work is queued for it.
#[derive(Default)]
pub struct WorkerSignals {
    notifiers: HashMap<String, Arc<Notify>>,
    /// Bumped whenever an environment is locked through this daemon, so that its worker checks
    /// the lock before its next migration rather than at its next periodic check.
    lock_generations: HashMap<String, Arc<std::sync::atomic::AtomicU64>>,
    /// The last error each worker met reaching its target, and since when (cleared once it
    /// reaches it again), for environment status.
    target_errors: Mutex<HashMap<String, (String, i64)>>,
    /// Every deployment state change and log line, for watchers.
    pub events: EventBus,
    /// When each worker of this daemon last finished a round (ms), for /metrics.
    last_rounds: Mutex<HashMap<String, i64>>,
    /// Running deployments of this daemon waiting for a lock: who holds it, and since when
    /// (ms), for environment status.
    lock_waits: Mutex<HashMap<String, (String, i64)>>,
    /// Wakes the fan-out when a commit wrote audit records carrying events.
    pub fan_out: Arc<Notify>,
    /// Wakes the notifier when rows are written to the outbox.
    pub outbox: Arc<Notify>,
    /// Bumped when an environment's lock is taken or removed through this daemon (such a change
    /// carries no deployment event), for the waits.
    lock_changes: tokio::sync::watch::Sender<u64>,
}

impl WorkerSignals {
    pub fn new(config: &Config) -> WorkerSignals {
        WorkerSignals {
            notifiers: config
                .environments
                .iter()
                .map(|e| (e.name.to_string(), Arc::new(Notify::new())))
                .collect(),
            lock_generations: config
                .environments
                .iter()
                .map(|e| (e.name.to_string(), Arc::default()))
                .collect(),
            target_errors: Mutex::default(),
            events: EventBus::default(),
            last_rounds: Mutex::default(),
            lock_waits: Mutex::default(),
            fan_out: Arc::new(Notify::new()),
            outbox: Arc::new(Notify::new()),
            lock_changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Tells the waits that an environment was locked or unlocked.
    pub fn lock_changed(&self) {
        self.lock_changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Sees every later `lock_changed`.
    pub fn lock_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.lock_changes.subscribe()
    }

    /// Notes that `environment`'s worker finished a round at `at` (ms).
    pub fn round_done(&self, environment: &str, at: i64) {
        self.last_rounds
            .lock()
            .expect("last rounds lock")
            .insert(environment.to_owned(), at);
    }

    /// When each worker last finished a round (ms), by environment name.
    pub fn last_rounds(&self) -> Vec<(String, i64)> {
        let mut rounds: Vec<(String, i64)> = self
            .last_rounds
            .lock()
            .expect("last rounds lock")
            .iter()
            .map(|(e, at)| (e.clone(), *at))
            .collect();
        rounds.sort();
        rounds
    }

    /// Records whether the worker of `environment` reached its target.
    pub fn report_target(&self, environment: &str, error: Option<String>, at: i64) {
        let mut errors = self.target_errors.lock().expect("target errors lock");
        match error {
            Some(message) => {
                let since = errors
                    .get(environment)
                    .filter(|(previous, _)| previous == &message)
                    .map_or(at, |(_, since)| *since);
                errors.insert(environment.to_owned(), (message, since));
            }
            None => {
                errors.remove(environment);
            }
        }
    }

    /// A running deployment waits for a lock (`Some(who holds it)`) or no longer does.
    pub fn report_lock_wait(&self, deployment_id: &str, waiting: Option<String>, at: i64) {
        let mut waits = self.lock_waits.lock().unwrap_or_else(|p| p.into_inner());
        match waiting {
            Some(text) => {
                let since = waits.get(deployment_id).map_or(at, |(_, since)| *since);
                waits.insert(deployment_id.to_owned(), (text, since));
            }
            None => {
                waits.remove(deployment_id);
            }
        }
    }

    pub fn lock_wait(&self, deployment_id: &str) -> Option<(String, i64)> {
        self.lock_waits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(deployment_id)
            .cloned()
    }

    pub fn target_error(&self, environment: &str) -> Option<(String, i64)> {
        self.target_errors
            .lock()
            .expect("target errors lock")
            .get(environment)
            .cloned()
    }

    pub fn lock_generation(&self, environment: &str) -> Arc<std::sync::atomic::AtomicU64> {
        self.lock_generations
            .get(environment)
            .cloned()
            .unwrap_or_default()
    }

    pub fn notifier(&self, environment: &str) -> Arc<Notify> {
        self.notifiers
            .get(environment)
            .cloned()
            .unwrap_or_else(|| Arc::new(Notify::new()))
    }

    pub fn wake(&self, environment: &str) {
        if let Some(n) = self.notifiers.get(environment) {
            n.notify_one();
        }
    }
}
