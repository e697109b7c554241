//! Schema snapshots for drift detection (issue 9): every object of a target's schema read from
//! its catalogs (tables, columns with types, nullability and defaults, indexes, constraints,
//! views, functions, triggers, enum types, sequences), keyed by kind and qualified name, with
//! its definition. Sluice's own tables are left out. Two snapshots compare object by object.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// "column public.accounts.note" -> "text NOT NULL DEFAULT ''".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SchemaSnapshot(pub BTreeMap<String, String>);

/// One object that differs between a reference snapshot and the live schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SchemaDifference {
    /// "column public.accounts.note"
    pub object: String,
    /// added (live only), removed (reference only) or changed.
    pub change: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

impl SchemaSnapshot {
    /// SHA-256 of the objects and definitions, in order.
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        for (object, definition) in &self.0 {
            hasher.update(object.as_bytes());
            hasher.update([0]);
            hasher.update(definition.as_bytes());
            hasher.update([0]);
        }
        hex::encode(hasher.finalize())
    }

    /// Carries into `self` what changed from `before` to `after` (objects added, changed or
    /// removed), leaving every other object as it is: a reference moved on by Sluice's own
    /// changes only.
    pub fn carry(&mut self, before: &SchemaSnapshot, after: &SchemaSnapshot) {
        for object in before.0.keys() {
            if !after.0.contains_key(object) {
                self.0.remove(object);
            }
        }
        for (object, definition_after) in &after.0 {
            if before.0.get(object) != Some(definition_after) {
                self.0.insert(object.clone(), definition_after.clone());
            }
        }
    }

    /// What changed from `self` (the reference) to `live`.
    pub fn differences(&self, live: &SchemaSnapshot) -> Vec<SchemaDifference> {
        let mut out = Vec::new();
        for (object, before) in &self.0 {
            match live.0.get(object) {
                None => out.push(SchemaDifference {
                    object: object.clone(),
                    change: "removed".into(),
                    before: Some(before.clone()),
                    after: None,
                }),
                Some(after) if after != before => out.push(SchemaDifference {
                    object: object.clone(),
                    change: "changed".into(),
                    before: Some(before.clone()),
                    after: Some(after.clone()),
                }),
                Some(_) => {}
            }
        }
        for (object, after) in &live.0 {
            if !self.0.contains_key(object) {
                out.push(SchemaDifference {
                    object: object.clone(),
                    change: "added".into(),
                    before: None,
                    after: Some(after.clone()),
                });
            }
        }
        out.sort_by(|a, b| a.object.cmp(&b.object));
        out
    }
}

/// PostgreSQL: one query over the catalogs, every user schema (not pg_catalog,
/// information_schema, toast or temporary schemas), Sluice's history table left out.
pub(super) const POSTGRES: &str = "
WITH ns AS (
    SELECT oid, nspname FROM pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema')
      AND nspname NOT LIKE 'pg_toast%' AND nspname NOT LIKE 'pg_temp%'
), rel AS (
    SELECT c.oid, c.relname, c.relkind, ns.nspname FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
    WHERE c.relname <> 'sluice_schema_history'
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
)
SELECT CASE relkind WHEN 'r' THEN 'table ' WHEN 'p' THEN 'table ' WHEN 'v' THEN 'view '
                    WHEN 'm' THEN 'materialized view ' WHEN 'S' THEN 'sequence ' ELSE 'foreign table ' END
       || format('%I.%I', nspname, relname),
       CASE relkind WHEN 'p' THEN 'partitioned' WHEN 'v' THEN pg_get_viewdef(oid)
                    WHEN 'm' THEN pg_get_viewdef(oid) ELSE '' END
  FROM rel WHERE relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
UNION ALL
SELECT 'column ' || format('%I.%I.%I', rel.nspname, rel.relname, a.attname),
       format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
       || coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '')
       || CASE WHEN a.attidentity <> '' THEN ' IDENTITY' ELSE '' END
  FROM pg_attribute a JOIN rel ON rel.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attnum > 0 AND NOT a.attisdropped AND rel.relkind IN ('r', 'p', 'f')
UNION ALL
SELECT 'index ' || format('%I.%I', rel.nspname, rel.relname), pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN rel ON rel.oid = i.indexrelid
 WHERE i.indrelid IN (SELECT oid FROM rel)
UNION ALL
SELECT 'constraint ' || format('%I.%I.%I', rel.nspname, rel.relname, co.conname), pg_get_constraintdef(co.oid)
  FROM pg_constraint co JOIN rel ON rel.oid = co.conrelid
UNION ALL
SELECT 'trigger ' || format('%I.%I.%I', rel.nspname, rel.relname, t.tgname), pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN rel ON rel.oid = t.tgrelid WHERE NOT t.tgisinternal
UNION ALL
SELECT 'function ' || format('%I.%I(%s)', ns.nspname, p.proname, pg_get_function_identity_arguments(p.oid)),
       md5(pg_get_functiondef(p.oid))
  FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
 WHERE p.prokind IN ('f', 'p')
   AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
UNION ALL
SELECT 'type ' || format('%I.%I', ns.nspname, t.typname),
       'enum (' || (SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid) || ')'
  FROM pg_type t JOIN ns ON ns.oid = t.typnamespace WHERE t.typtype = 'e'
UNION ALL
SELECT 'extension ' || e.extname, e.extversion FROM pg_extension e WHERE e.extname <> 'plpgsql'
UNION ALL
SELECT 'schema ' || quote_ident(nspname), '' FROM ns WHERE nspname <> 'public'";

/// MySQL/MariaDB: information_schema for the connection's database.
pub(super) const MYSQL: &str = "
SELECT CONCAT(IF(TABLE_TYPE = 'VIEW', 'view ', 'table '), TABLE_NAME), CONCAT_WS(' ', TABLE_TYPE, ENGINE)
  FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME <> 'sluice_schema_history'
UNION ALL
SELECT CONCAT('column ', TABLE_NAME, '.', COLUMN_NAME),
       CONCAT_WS(' ', COLUMN_TYPE, IF(IS_NULLABLE = 'NO', 'NOT NULL', NULL),
                 IF(COLUMN_DEFAULT IS NULL, NULL, CONCAT('DEFAULT ', COLUMN_DEFAULT)), NULLIF(EXTRA, ''))
  FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME <> 'sluice_schema_history'
UNION ALL
SELECT CONCAT('index ', TABLE_NAME, '.', INDEX_NAME),
       CONCAT(IF(MAX(NON_UNIQUE) = 0, 'UNIQUE ', ''), MAX(INDEX_TYPE), ' (',
              GROUP_CONCAT(COALESCE(COLUMN_NAME, '(expression)') ORDER BY SEQ_IN_INDEX SEPARATOR ', '), ')')
  FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME <> 'sluice_schema_history'
 GROUP BY TABLE_NAME, INDEX_NAME
UNION ALL
SELECT CONCAT('constraint ', TABLE_NAME, '.', CONSTRAINT_NAME), CONSTRAINT_TYPE
  FROM information_schema.TABLE_CONSTRAINTS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME <> 'sluice_schema_history'
UNION ALL
SELECT CONCAT('view definition ', TABLE_NAME), MD5(VIEW_DEFINITION)
  FROM information_schema.VIEWS WHERE TABLE_SCHEMA = DATABASE()
UNION ALL
SELECT CONCAT(LOWER(ROUTINE_TYPE), ' ', ROUTINE_NAME), MD5(COALESCE(ROUTINE_DEFINITION, ''))
  FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE()
UNION ALL
SELECT CONCAT('trigger ', EVENT_OBJECT_TABLE, '.', TRIGGER_NAME),
       CONCAT_WS(' ', ACTION_TIMING, EVENT_MANIPULATION, MD5(ACTION_STATEMENT))
  FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()";

/// SQLite: the schema table's own definitions; Sluice's tables left out.
pub(super) const SQLITE: &str = "
SELECT type || ' ' || name, sql FROM sqlite_master
 WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'
   AND name NOT IN ('sluice_schema_history', 'sluice_runner_lock')
   AND tbl_name NOT IN ('sluice_schema_history', 'sluice_runner_lock')";

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(items: &[(&str, &str)]) -> SchemaSnapshot {
        SchemaSnapshot(
            items
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn carry_moves_the_reference_by_the_rounds_own_changes_only() {
        // The reference; by hand someone added column h; then a round added table u and
        // dropped column t.b.
        let mut reference = snapshot(&[("column public.t.b", "text"), ("table public.t", "")]);
        let before = snapshot(&[
            ("column public.t.b", "text"),
            ("column public.t.h", "int"),
            ("table public.t", ""),
        ]);
        let after = snapshot(&[
            ("column public.t.h", "int"),
            ("table public.t", ""),
            ("table public.u", ""),
        ]);
        reference.carry(&before, &after);
        assert_eq!(
            reference,
            snapshot(&[("table public.t", ""), ("table public.u", "")])
        );
        // Only the hand change differs.
        let differences = reference.differences(&after);
        assert_eq!(differences.len(), 1);
        assert_eq!(differences[0].object, "column public.t.h");
    }

    #[test]
    fn differences_name_what_was_added_removed_and_changed() {
        let reference = snapshot(&[
            ("column public.t.a", "integer"),
            ("column public.t.b", "text"),
            ("table public.t", ""),
        ]);
        let live = snapshot(&[
            ("column public.t.a", "bigint"),
            (
                "index public.t_a",
                "CREATE INDEX t_a ON public.t USING btree (a)",
            ),
            ("table public.t", ""),
        ]);
        let changes: Vec<(String, String)> = reference
            .differences(&live)
            .into_iter()
            .map(|d| (d.object, d.change))
            .collect();
        assert_eq!(
            changes,
            [
                ("column public.t.a".to_owned(), "changed".to_owned()),
                ("column public.t.b".to_owned(), "removed".to_owned()),
                ("index public.t_a".to_owned(), "added".to_owned()),
            ]
        );
        assert!(reference.differences(&reference).is_empty());
        assert_ne!(reference.hash(), live.hash());
        assert_eq!(reference.hash(), reference.clone().hash());
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(
            snapshot(&[("ab", "c")]).hash(),
            snapshot(&[("a", "bc")]).hash()
        );
    }
}
