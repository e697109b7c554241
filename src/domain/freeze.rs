//! Freeze windows: times when an environment starts no new deployment (an emergency override
//! excepted). Recurring windows are a cron schedule of their starts (UTC) and a duration, as
//! Argo CD's sync windows are; one-off windows have a start and an end.

use chrono::{DateTime, Duration, Utc};
use std::fmt;

#[derive(Debug, Clone)]
pub enum FreezeWhen {
    Recurring {
        schedule: Box<croner::Cron>,
        pattern: String,
        duration: Duration,
    },
    Fixed {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
}

#[derive(Debug, Clone)]
pub struct FreezeWindow {
    pub name: String,
    pub when: FreezeWhen,
}

/// `30s`, `5m`, `2h`, `1d`, `1h30m`: one or more <number><unit> groups.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::zero();
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let value: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit = rest.chars().next()?;
        let part = match unit {
            's' => Duration::try_seconds(value)?,
            'm' => Duration::try_minutes(value)?,
            'h' => Duration::try_hours(value)?,
            'd' => Duration::try_days(value)?,
            _ => return None,
        };
        total = total.checked_add(&part)?;
        rest = &rest[1..];
    }
    Some(total)
}

impl FreezeWindow {
    /// A window starting at every time `schedule` (a cron pattern, UTC) matches, lasting
    /// `duration`.
    pub fn recurring(name: &str, schedule: &str, duration: &str) -> Result<FreezeWindow, String> {
        let cron: croner::Cron = schedule
            .parse()
            .map_err(|e| format!("schedule: \"{schedule}\" is not a cron pattern: {e}"))?;
        let duration = parse_duration(duration)
            .filter(|d| *d > Duration::zero())
            .ok_or_else(|| format!("duration: \"{duration}\" is not a duration like 2h or 64h"))?;
        Ok(FreezeWindow {
            name: name.to_owned(),
            when: FreezeWhen::Recurring {
                schedule: Box::new(cron),
                pattern: schedule.to_owned(),
                duration,
            },
        })
    }

    pub fn fixed(
        name: &str,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<FreezeWindow, String> {
        if end <= start {
            return Err("end: must be after start".into());
        }
        Ok(FreezeWindow {
            name: name.to_owned(),
            when: FreezeWhen::Fixed { start, end },
        })
    }

    /// When the window that contains `now` ends, if `now` is inside one.
    pub fn active_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.when {
            FreezeWhen::Fixed { start, end } => (*start <= now && now < *end).then_some(*end),
            FreezeWhen::Recurring {
                schedule, duration, ..
            } => {
                let start = schedule.find_previous_occurrence(&now, true).ok()?;
                let end = start + *duration;
                (now < end).then_some(end)
            }
        }
    }
}

impl fmt::Display for FreezeWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.when {
            FreezeWhen::Fixed { start, end } => {
                write!(f, "\"{}\" ({start} to {end})", self.name)
            }
            FreezeWhen::Recurring {
                pattern, duration, ..
            } => write!(
                f,
                "\"{}\" (from \"{pattern}\" for {}h{:02}m)",
                self.name,
                duration.num_hours(),
                duration.num_minutes() % 60
            ),
        }
    }
}

/// The freeze in force at `now`: the window and when the freeze ends. Overlapping windows
/// chain: the freeze lasts until no window holds.
pub fn frozen(
    windows: &[FreezeWindow],
    now: DateTime<Utc>,
) -> Option<(&FreezeWindow, DateTime<Utc>)> {
    let (window, mut until) = windows
        .iter()
        .filter_map(|w| w.active_until(now).map(|end| (w, end)))
        .max_by_key(|(_, end)| *end)?;
    // A window that begins before this one ends extends the freeze (bounded, in case of a
    // schedule that never lets go).
    for _ in 0..16 {
        match windows
            .iter()
            .filter_map(|w| w.active_until(until))
            .filter(|end| *end > until)
            .max()
        {
            Some(later) => until = later,
            None => break,
        }
    }
    Some((window, until))
}

/// The freeze in force at `now` as text for people: the window and when the freeze ends.
pub fn describe(windows: &[FreezeWindow], now: DateTime<Utc>) -> Option<(String, String)> {
    frozen(windows, now).map(|(window, until)| {
        (
            window.to_string(),
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
    })
}

/// The one freeze rule: a freeze window in force (`in_force`, as `describe` gives it) stops
/// every deployment from starting, except an emergency override. The planner, `migrate` and
/// the worker between two migrations all ask it.
pub fn stops(in_force: Option<(String, String)>, emergency: bool) -> Option<(String, String)> {
    in_force.filter(|_| !emergency)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freeze_stops_all_but_an_emergency() {
        let window = Some(("weekend".to_owned(), "2026-12-07T00:00:00Z".to_owned()));
        assert_eq!(stops(window.clone(), false), window);
        assert_eq!(stops(window, true), None);
        assert_eq!(stops(None, false), None);
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1h30m"), Some(Duration::minutes(90)));
        assert_eq!(parse_duration("64h"), Some(Duration::hours(64)));
        assert_eq!(parse_duration("2d"), Some(Duration::days(2)));
        for bad in ["", "5", "m", "5 minutes", "-1m", "1h 30m"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn weekend_window_from_friday_afternoon_to_monday_morning() {
        // 2026-11-27 is a Friday.
        let weekend = FreezeWindow::recurring("weekend", "0 16 * * FRI", "64h").unwrap();
        assert_eq!(weekend.active_until(at("2026-11-27T15:59:00Z")), None);
        assert_eq!(
            weekend.active_until(at("2026-11-27T16:00:00Z")),
            Some(at("2026-11-30T08:00:00Z"))
        );
        assert_eq!(
            weekend.active_until(at("2026-11-29T12:00:00Z")),
            Some(at("2026-11-30T08:00:00Z"))
        );
        assert_eq!(weekend.active_until(at("2026-11-30T08:00:00Z")), None);
        assert_eq!(weekend.active_until(at("2026-11-25T10:00:00Z")), None);
    }

    #[test]
    fn fixed_windows_and_chaining() {
        let release = FreezeWindow::fixed(
            "release",
            at("2026-12-20T00:00:00Z"),
            at("2027-01-05T00:00:00Z"),
        )
        .unwrap();
        let after = FreezeWindow::fixed(
            "audit",
            at("2027-01-04T00:00:00Z"),
            at("2027-01-10T00:00:00Z"),
        )
        .unwrap();
        let windows = [release, after];
        let (window, until) = frozen(&windows, at("2026-12-24T00:00:00Z")).unwrap();
        assert_eq!(window.name, "release");
        assert_eq!(until, at("2027-01-10T00:00:00Z"));
        assert!(frozen(&windows, at("2027-01-10T00:00:00Z")).is_none());
        assert!(
            FreezeWindow::fixed("x", at("2027-01-10T00:00:00Z"), at("2027-01-01T00:00:00Z"))
                .is_err()
        );
        assert!(
            FreezeWindow::recurring("x", "not cron", "1h")
                .unwrap_err()
                .starts_with("schedule: ")
        );
        assert!(
            FreezeWindow::recurring("x", "0 16 * * FRI", "soon")
                .unwrap_err()
                .starts_with("duration: ")
        );
    }
}
