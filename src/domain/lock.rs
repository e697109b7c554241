//! The environment lock: what it stops. The one home of the rule "a locked environment starts
//! no new deployment"; the service (migrate, waits, status) and the worker (before a round and
//! between two migrations of a run) all ask `lock_stops`. Pure.

/// An environment's lock as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvironmentLock {
    pub locked_by: String,
    pub reason: String,
    /// When it was taken (ms since the epoch).
    pub locked_at: i64,
}

/// Work that may be asked of a locked environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Releasing approved deployments to the worker (`migrate`).
    Release,
    /// Starting a queued deployment (the worker), or waiting for queued ones to start.
    Start,
    /// Rolling an applied deployment back: undoing a change is what an incident often locks an
    /// environment for, so a lock never stops it.
    RollBack,
}

/// The lock that stops `work`, if one does.
pub fn lock_stops(lock: Option<&EnvironmentLock>, work: Work) -> Option<&EnvironmentLock> {
    match work {
        Work::Release | Work::Start => lock,
        Work::RollBack => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_stops_releases_and_starts_but_not_rollbacks() {
        let lock = EnvironmentLock {
            locked_by: "lead".into(),
            reason: "incident".into(),
            locked_at: 1,
        };
        assert_eq!(lock_stops(Some(&lock), Work::Release), Some(&lock));
        assert_eq!(lock_stops(Some(&lock), Work::Start), Some(&lock));
        assert_eq!(lock_stops(Some(&lock), Work::RollBack), None);
        for work in [Work::Release, Work::Start, Work::RollBack] {
            assert_eq!(lock_stops(None, work), None);
        }
    }
}
