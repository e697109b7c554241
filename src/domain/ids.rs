//! Validated identifiers, parsed once at the edge.

use super::DomainError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A migration id: `NNN_YYYYMMDD_HHMMSS_slug`, as the seed framework names its scripts; or,
/// for a migration imported from another tool, `V<version>__<slug>` (the version as the tool
/// numbered it: `V000001__create_users` from golang-migrate, `V20240105120000__add_x` from
/// dbmate, `V1.2__add_users` from Flyway).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(try_from = "String", into = "String")]
pub struct MigrationId(String);

impl MigrationId {
    /// Builds the id of the `sequence`-th migration submitted at `timestamp` (`YYYYMMDD_HHMMSS`).
    pub fn compose(sequence: i64, timestamp: &str, description: &str) -> MigrationId {
        let mut slug = slugify(description);
        if slug.is_empty() {
            slug.push_str("migration");
        }
        MigrationId(format!("{sequence:03}_{timestamp}_{slug}"))
    }

    /// The leading sequence number.
    pub fn sequence(&self) -> i64 {
        self.0
            .split('_')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A version's parts as numbers ("1.10" -> [1, 10], "000009" -> [9]), for comparing versions
/// the way migration tools order them.
pub fn version_parts(version: &str) -> Vec<u128> {
    version
        .split('.')
        .map(|p| p.parse().unwrap_or(u128::MAX))
        .collect()
}

/// Lower-case words joined by underscores, at most 60 characters.
pub fn slugify(text: &str) -> String {
    let mut slug = String::new();
    for word in text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if slug.len() + word.len() + 1 > 60 {
            break;
        }
        if !slug.is_empty() {
            slug.push('_');
        }
        slug.push_str(&word.to_ascii_lowercase());
    }
    slug
}

impl MigrationId {
    /// The id of a migration imported from another tool: `V<version>__<slug>`.
    pub fn imported(version: &str, description: &str) -> Result<MigrationId, DomainError> {
        let mut slug = slugify(description);
        if slug.is_empty() {
            slug.push_str("migration");
        }
        format!("V{version}__{slug}").parse()
    }

    /// The version of an imported migration's id (`V1.2__x` -> "1.2").
    pub fn imported_version(&self) -> Option<&str> {
        MigrationId::is_imported(&self.0)
            .then(|| self.0[1..].split_once("__").map(|(v, _)| v))
            .flatten()
    }

    /// `V<version>__<slug>`: a version of digits, single dots between them, and a slug.
    fn is_imported(s: &str) -> bool {
        let Some((version, slug)) = s.strip_prefix('V').and_then(|r| r.split_once("__")) else {
            return false;
        };
        !version.is_empty()
            && version.len() <= 40
            && version
                .split('.')
                .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
            && !slug.is_empty()
            && slug.len() <= 100
            && slug
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    }
}

impl FromStr for MigrationId {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if MigrationId::is_imported(s) {
            return Ok(MigrationId(s.to_owned()));
        }
        let invalid = || {
            DomainError::Invalid(format!(
                "invalid migration id \"{s}\": expected NNN_YYYYMMDD_HHMMSS_description (e.g. 001_20261125_101500_add_user_preferences) or, imported, V<version>__description (e.g. V20240105120000__add_x)"
            ))
        };
        let mut parts = s.splitn(4, '_');
        let (Some(seq), Some(date), Some(time), Some(slug)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let digits = |p: &str, n: Option<usize>| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && n.is_none_or(|n| p.len() == n)
        };
        if !digits(seq, None)
            || !digits(date, Some(8))
            || !digits(time, Some(6))
            || slug.is_empty()
            || !slug
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(invalid());
        }
        // The date and time must be a real moment: 20261325 (month 13) or 256000 are typos
        // that would sort the migration somewhere no one expects.
        if chrono::NaiveDateTime::parse_from_str(&format!("{date}{time}"), "%Y%m%d%H%M%S").is_err()
        {
            return Err(DomainError::Invalid(format!(
                "invalid migration id \"{s}\": {date}_{time} is not a date and time (YYYYMMDD_HHMMSS, e.g. 20261125_101500)"
            )));
        }
        Ok(MigrationId(s.to_owned()))
    }
}

impl TryFrom<String> for MigrationId {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<MigrationId> for String {
    fn from(value: MigrationId) -> Self {
        value.0
    }
}

impl fmt::Display for MigrationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An environment name: lower-case letters, digits, `-` and `_`, starting with a letter.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(try_from = "String", into = "String")]
pub struct EnvironmentName(String);

impl EnvironmentName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for EnvironmentName {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = s.len() <= 63
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(EnvironmentName(s.to_owned()))
        } else {
            Err(DomainError::Invalid(format!(
                "invalid environment name \"{s}\": use lower-case letters, digits, '-' and '_', starting with a letter"
            )))
        }
    }
}

impl TryFrom<String> for EnvironmentName {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<EnvironmentName> for String {
    fn from(value: EnvironmentName) -> Self {
        value.0
    }
}

impl fmt::Display for EnvironmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user name from users.yml.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(try_from = "String", into = "String")]
pub struct UserName(String);

impl UserName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for UserName {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
        if ok {
            Ok(UserName(s.to_owned()))
        } else {
            Err(DomainError::Invalid(format!(
                "invalid user name \"{s}\": use letters, digits, '.', '_', '-' and '@' (at most 64)"
            )))
        }
    }
}

impl TryFrom<String> for UserName {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<UserName> for String {
    fn from(value: UserName) -> Self {
        value.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn composes_seed_style_ids() {
        let id = MigrationId::compose(1, "20261125_101500", "Add user preferences table!");
        assert_eq!(
            id.as_str(),
            "001_20261125_101500_add_user_preferences_table"
        );
        assert_eq!(id.sequence(), 1);
        assert_eq!(id.as_str().parse::<MigrationId>().unwrap(), id);
        let big = MigrationId::compose(1234, "20261125_101500", "x");
        assert_eq!(big.sequence(), 1234);
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "001",
            "001_2026_101500_x",
            "abc_20261125_101500_x",
            "001_20261125_101500_",
            "001_20261125_101500_Bad",
            "001_20261325_101500_month_thirteen",
            "001_20260230_101500_february_30",
            "001_20261125_256000_hour_25",
        ] {
            assert!(bad.parse::<MigrationId>().is_err(), "{bad}");
        }
        let e = "001_20261325_101500_x"
            .parse::<MigrationId>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("20261325_101500 is not a date and time"), "{e}");
    }

    #[test]
    fn environment_names() {
        assert!("production".parse::<EnvironmentName>().is_ok());
        assert!("eu-west_2".parse::<EnvironmentName>().is_ok());
        assert!("Prod".parse::<EnvironmentName>().is_err());
        assert!("1prod".parse::<EnvironmentName>().is_err());
    }
}

#[cfg(test)]
mod imported_tests {
    use super::MigrationId;

    #[test]
    fn imported_ids_keep_the_tools_version() {
        for ok in [
            "V000001__create_users",
            "V20240105120000__add_x",
            "V1.2.10__add_users",
        ] {
            assert!(ok.parse::<MigrationId>().is_ok(), "{ok}");
        }
        for bad in [
            "V__x",
            "V1..2__x",
            "V1.__x",
            "V1__",
            "V1__Add",
            "v1__x",
            "V1_x",
            "V1__x/../y",
            "V1a__x",
        ] {
            assert!(bad.parse::<MigrationId>().is_err(), "{bad}");
        }
        assert_eq!(
            MigrationId::imported("1.2", "Add users table")
                .unwrap()
                .as_str(),
            "V1.2__add_users_table"
        );
    }
}
