//! `sluice import <dir>`: an existing migration folder of golang-migrate
//! (`NNN_name.up.sql` / `.down.sql`), Flyway (`V<version>__<desc>.sql`, undo
//! `U<version>__<desc>.sql`), dbmate (`<version>_<name>.sql` with `-- migrate:up` and
//! `-- migrate:down` sections) or Sluice itself (scripts/ with headers), read in the source
//! project's order, each migration keeping its version in its id (`V<version>__<slug>`).

use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Format {
    GolangMigrate,
    Flyway,
    Dbmate,
    Sluice,
}

impl Format {
    pub(super) fn name(self) -> &'static str {
        match self {
            Format::GolangMigrate => "golang-migrate",
            Format::Flyway => "flyway",
            Format::Dbmate => "dbmate",
            Format::Sluice => "sluice",
        }
    }
}

/// One migration read from another tool's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Imported {
    pub version: String,
    pub description: String,
    pub up: String,
    /// None: no down script (not undoable); Some(""): nothing to undo.
    pub down: Option<String>,
    pub source: PathBuf,
}

/// The format of a folder, by its files.
pub(super) fn detect(dir: &Path) -> Result<Format, String> {
    let names = sql_files(dir)?;
    if dir.join("scripts").is_dir() && names.is_empty() {
        return Ok(Format::Sluice);
    }
    if names.iter().any(|n| n.ends_with(".up.sql")) {
        return Ok(Format::GolangMigrate);
    }
    if names.iter().any(|n| flyway_name(n, 'V').is_some()) {
        return Ok(Format::Flyway);
    }
    for name in &names {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        if text
            .lines()
            .any(|l| l.trim_start().starts_with("-- migrate:up"))
        {
            return Ok(Format::Dbmate);
        }
    }
    Err(format!(
        "cannot tell the format of {}: no NNN_name.up.sql (golang-migrate), V<version>__<desc>.sql (Flyway), -- migrate:up section (dbmate) or scripts/ folder (sluice); name it with --format",
        dir.display()
    ))
}

fn sql_files(dir: &Path) -> Result<Vec<String>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".sql"))
        .collect();
    names.sort();
    Ok(names)
}

/// `V1.2__Add_users.sql` -> ("1.2", "Add_users") for `prefix` V (U for undo). Flyway also
/// separates version parts with underscores: `V1_2__x` is version 1.2.
fn flyway_name(name: &str, prefix: char) -> Option<(String, String)> {
    let rest = name.strip_prefix(prefix)?.strip_suffix(".sql")?;
    let (version, description) = rest.split_once("__")?;
    let version = version.replace('_', ".");
    let valid = !version.is_empty()
        && version
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    valid.then(|| (version, description.to_owned()))
}

/// `000001_create_users.up.sql` -> ("000001", "create_users", "up").
fn numbered_name<'a>(name: &'a str, suffixes: &[&'a str]) -> Option<(String, String, &'a str)> {
    let suffix = suffixes.iter().find(|s| name.ends_with(**s))?;
    let stem = &name[..name.len() - suffix.len()];
    let (version, description) = stem.split_once('_')?;
    (!version.is_empty() && version.bytes().all(|b| b.is_ascii_digit()))
        .then(|| (version.to_owned(), description.to_owned(), *suffix))
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

/// Versions compare part by part, as numbers.
fn version_key(version: &str) -> Vec<u128> {
    version
        .split('.')
        .map(|p| p.parse().unwrap_or(u128::MAX))
        .collect()
}

/// Reads the folder's migrations in the source project's order. Files that are not
/// migrations of the format are listed in the second part (to be said, not silently dropped).
pub(super) fn read_folder(
    dir: &Path,
    format: Format,
) -> Result<(Vec<Imported>, Vec<String>), String> {
    let mut skipped = Vec::new();
    let mut found: Vec<Imported> = Vec::new();
    let names = sql_files(dir)?;
    match format {
        Format::Sluice => return Ok((Vec::new(), skipped)),
        Format::GolangMigrate => {
            for name in &names {
                match numbered_name(name, &[".up.sql", ".down.sql"]) {
                    Some((version, description, ".up.sql")) => {
                        let down_name = name.replace(".up.sql", ".down.sql");
                        let down_path = dir.join(&down_name);
                        let down = down_path.exists().then(|| read(&down_path)).transpose()?;
                        found.push(Imported {
                            version,
                            description,
                            up: read(&dir.join(name))?,
                            down,
                            source: dir.join(name),
                        });
                    }
                    Some(_) => {}
                    None => skipped.push(name.clone()),
                }
            }
        }
        Format::Flyway => {
            for name in &names {
                if let Some((version, description)) = flyway_name(name, 'V') {
                    let undo = names
                        .iter()
                        .find(|n| flyway_name(n, 'U').is_some_and(|(v, _)| v == version));
                    let down = undo.map(|n| read(&dir.join(n))).transpose()?;
                    found.push(Imported {
                        version,
                        description,
                        up: read(&dir.join(name))?,
                        down,
                        source: dir.join(name),
                    });
                } else if flyway_name(name, 'U').is_none() {
                    // Repeatable (R__) and callbacks have no place in an ordered queue.
                    skipped.push(name.clone());
                }
            }
        }
        Format::Dbmate => {
            for name in &names {
                let Some((version, description, _)) = numbered_name(name, &[".sql"]) else {
                    skipped.push(name.clone());
                    continue;
                };
                let text = read(&dir.join(name))?;
                let (up, down) = dbmate_sections(&text).ok_or_else(|| {
                    format!("{}: no -- migrate:up section", dir.join(name).display())
                })?;
                found.push(Imported {
                    version,
                    description,
                    up,
                    down,
                    source: dir.join(name),
                });
            }
        }
    }
    found.sort_by_key(|a| version_key(&a.version));
    if let Some(pair) = found
        .windows(2)
        .find(|w| version_key(&w[0].version) == version_key(&w[1].version))
    {
        return Err(format!(
            "{} and {} carry the same version {}",
            pair[0].source.display(),
            pair[1].source.display(),
            pair[0].version
        ));
    }
    Ok((found, skipped))
}

/// dbmate's `-- migrate:up [options]` and `-- migrate:down [options]` sections. The options
/// (`transaction:false`) need nothing: Sluice decides what runs in a transaction itself.
fn dbmate_sections(text: &str) -> Option<(String, Option<String>)> {
    let mut up: Option<String> = None;
    let mut down: Option<String> = None;
    for line in text.split_inclusive('\n') {
        let marker = line.trim_start();
        if marker.starts_with("-- migrate:up") {
            up = Some(String::new());
            continue;
        }
        if marker.starts_with("-- migrate:down") {
            down = Some(String::new());
            continue;
        }
        if let Some(d) = down.as_mut() {
            d.push_str(line);
        } else if let Some(u) = up.as_mut() {
            u.push_str(line);
        }
    }
    up.map(|u| (u, down))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sections_read_as_the_tools_write_them() {
        assert_eq!(
            flyway_name("V1_2__Add_users.sql", 'V'),
            Some(("1.2".into(), "Add_users".into()))
        );
        assert_eq!(flyway_name("R__views.sql", 'V'), None);
        assert_eq!(
            numbered_name("000010_create_users.up.sql", &[".up.sql", ".down.sql"]),
            Some(("000010".into(), "create_users".into(), ".up.sql"))
        );
        assert!(version_key("1.10") > version_key("1.9"));
        assert!(version_key("000010") > version_key("000009"));
        let (up, down) = dbmate_sections(
            "-- migrate:up transaction:false\nCREATE INDEX CONCURRENTLY i ON t (x);\n\n-- migrate:down\nDROP INDEX i;\n",
        )
        .unwrap();
        assert_eq!(up, "CREATE INDEX CONCURRENTLY i ON t (x);\n\n");
        assert_eq!(down.as_deref(), Some("DROP INDEX i;\n"));
        assert_eq!(dbmate_sections("SELECT 1;"), None);
    }
}
