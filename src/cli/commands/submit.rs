//! Submitting scripts and importing folders: one batch, amendments after their diff.

use super::*;

/// `sluice import`: the folder's migrations as one batch, in the source project's order.
#[allow(clippy::too_many_arguments)]
pub(in crate::cli) async fn import(
    client: &mut Client,
    dir: &Path,
    format: Option<super::import::Format>,
    kind: &str,
    risk: &str,
    ticket: &str,
    duration: &str,
    output: Output,
    yes: bool,
) -> CliResult {
    use super::import::{Format, detect, read_folder};
    let format = match format {
        Some(format) => format,
        None => detect(dir).map_err(Failure::operation)?,
    };
    if format == Format::Sluice {
        let scripts = dir.join("scripts");
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&scripts)
            .map_err(|e| Failure::operation(format!("cannot read {}: {e}", scripts.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        paths.sort();
        return submit(client, &paths, output, yes).await;
    }
    let (found, skipped) = read_folder(dir, format).map_err(Failure::operation)?;
    for name in &skipped {
        eprintln!(
            "sluice: {name}: not a {} migration, left out",
            format.name()
        );
    }
    if found.is_empty() {
        return Err(Failure::operation(format!(
            "{}: no {} migration found",
            dir.display(),
            format.name()
        )));
    }
    let mut requests = Vec::with_capacity(found.len());
    for m in &found {
        let id = crate::domain::MigrationId::imported(&m.version, &m.description)
            .map_err(|e| Failure::operation(format!("{}: {e}", m.source.display())))?;
        let description = m.description.replace('_', " ");
        requests.push(pb::SubmitMigrationRequest {
            id: id.to_string(),
            kind: kind.to_owned(),
            description: if description.trim().is_empty() {
                format!("version {}", m.version)
            } else {
                description
            },
            risk: risk.to_owned(),
            ticket: ticket.to_owned(),
            estimated_duration: duration.to_owned(),
            up_sql: m.up.clone(),
            down_sql: m.down.clone(),
            depends_on: Vec::new(),
        });
    }
    let paths: Vec<PathBuf> = found.iter().map(|m| m.source.clone()).collect();
    let response = send_batch(client, requests, &paths).await?;
    match output {
        Output::Json => print_json(&response)?,
        Output::Table => {
            for m in &response.created {
                println!("{}: {}", m.id, m.effective_risk);
            }
            println!(
                "imported {} {} migrations from {}: {} created, {} unchanged",
                found.len(),
                format.name(),
                dir.display(),
                response.created.len(),
                response.unchanged.len()
            );
        }
    }
    Ok(())
}

/// Sends one batch; a refusal names each item by its file (`paths[i]` for "migrations[i]").
async fn send_batch(
    client: &mut Client,
    migrations: Vec<pb::SubmitMigrationRequest>,
    paths: &[PathBuf],
) -> CliResult<pb::SubmitMigrationsResponse> {
    let request = client.request(pb::SubmitMigrationsRequest { migrations })?;
    Ok(client
        .inner
        .submit_migrations(request)
        .await
        .map_err(|s| {
            let mut failure = client.failed(s);
            // From the last, so that migrations[1] does not rewrite migrations[10].
            for (i, path) in paths.iter().enumerate().rev() {
                failure.message = failure
                    .message
                    .replace(&format!("migrations[{i}]"), &path.display().to_string());
            }
            failure
        })?
        .into_inner())
}

pub(in crate::cli) async fn submit(
    client: &mut Client,
    paths: &[PathBuf],
    output: Output,
    yes: bool,
) -> CliResult {
    // Every new file in one request: all are submitted, or none (each refusal named by its
    // file). A file whose migration exists with other scripts amends it, after its diff is
    // shown and confirmed: every approval of it is void then.
    let mut batch = Vec::with_capacity(paths.len());
    let mut batch_paths = Vec::with_capacity(paths.len());
    let mut amends = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::operation(format!("{}: cannot read: {e}", path.display())))?;
        let header =
            scripts::read_header(path, &text).map_err(|p| Failure::operation(p.to_string()))?;
        let rollback_path = scripts::rollback_path(path, &header);
        let down_sql = match std::fs::read_to_string(&rollback_path) {
            Ok(text) => Some(text),
            Err(_) if header.rollback.is_none() => None,
            Err(e) => {
                return Err(Failure::operation(format!(
                    "{}: cannot read: {e}",
                    rollback_path.display()
                )));
            }
        };
        let request = pb::SubmitMigrationRequest {
            id: header.id.clone().unwrap_or_default(),
            kind: header.kind.as_str().into(),
            description: header.description.clone(),
            risk: header.risk.as_str().into(),
            ticket: header.ticket.clone(),
            estimated_duration: header.estimated_duration.clone(),
            up_sql: text,
            down_sql,
            depends_on: header.depends_on.clone(),
        };
        if let Some(id) = &header.id
            && let Some(existing) = existing_migration(client, id).await?
            && (existing.up_sql != request.up_sql || existing.down_sql != request.down_sql)
        {
            // Only the scripts of a submitted migration may change: said before asking.
            if let Some((field, was, now)) = metadata_change(&existing, &request) {
                return Err(Failure::operation(format!(
                    "{}: {id} exists with {field} \"{was}\", not \"{now}\": a submitted migration's scripts may be amended, not its {field}; for a new migration, `sluice new` gives it another id",
                    path.display()
                )));
            }
            amends.push((path.clone(), existing, request));
            continue;
        }
        batch.push(request);
        batch_paths.push(path.clone());
    }
    // Asked before anything is sent: a "no" changes nothing at all.
    let mut plans = Vec::new();
    for (path, existing, request) in &amends {
        let plan = amend_plan(path, existing, request);
        if yes {
            if output == Output::Table {
                println!("{plan}");
            }
        } else {
            plans.push(plan);
        }
    }
    if !plans.is_empty() {
        confirm(false, &plans.join("\n"), Ask::YesNo)?;
    }
    let mut submitted = Vec::new();
    if !batch.is_empty() {
        let ids: Vec<Option<String>> = batch
            .iter()
            .map(|r| Some(r.id.clone()).filter(|id| !id.is_empty()))
            .collect();
        let response = send_batch(client, batch, &batch_paths).await?;
        let mut created = response.created.into_iter();
        for (path, id) in batch_paths.iter().zip(&ids) {
            if let Some(id) = id
                && response.unchanged.contains(id)
            {
                if output == Output::Table {
                    println!(
                        "{}: {id} unchanged (submitted before with the same scripts)",
                        path.display()
                    );
                }
                continue;
            }
            if let Some(migration) = created.next() {
                if output == Output::Table {
                    print_submitted(&format!("{}: submitted as", path.display()), &migration);
                }
                submitted.push(migration);
            }
        }
    }
    for (path, _, request) in amends {
        let id = request.id.clone();
        let request = client.request(request)?;
        let migration = client
            .inner
            .submit_migration(request)
            .await
            .map_err(|s| {
                let mut failure = client.failed(s);
                failure.message = format!("{}: {}", path.display(), failure.message);
                failure
            })?
            .into_inner();
        if output == Output::Table {
            print_submitted(
                &format!(
                    "{}: amended {id}; its approvals are void, approve again:",
                    path.display()
                ),
                &migration,
            );
        }
        submitted.push(migration);
    }
    if output == Output::Json {
        print_json(&submitted)?;
    }
    Ok(())
}

/// A migration as the daemon has it, or None when the id is not taken.
async fn existing_migration(client: &mut Client, id: &str) -> CliResult<Option<pb::Migration>> {
    let request = client.request(pb::GetMigrationRequest { id: id.to_owned() })?;
    match client.inner.get_migration(request).await {
        Ok(response) => Ok(Some(response.into_inner())),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
        Err(status) => Err(client.failed(status)),
    }
}

/// The first header field a file changes against the submitted migration, if any.
fn metadata_change(
    existing: &pb::Migration,
    request: &pb::SubmitMigrationRequest,
) -> Option<(&'static str, String, String)> {
    [
        ("kind", existing.kind.clone(), request.kind.clone()),
        (
            "description",
            existing.description.trim().to_owned(),
            request.description.trim().to_owned(),
        ),
        ("risk", existing.declared_risk.clone(), request.risk.clone()),
        (
            "ticket",
            existing.ticket.trim().to_owned(),
            request.ticket.trim().to_owned(),
        ),
        (
            "estimated_duration",
            existing.estimated_duration.trim().to_owned(),
            request.estimated_duration.trim().to_owned(),
        ),
        (
            "depends_on",
            existing.depends_on.join(", "),
            request.depends_on.join(", "),
        ),
    ]
    .into_iter()
    .find(|(_, was, now)| was != now)
}

/// What amending a migration with a file's scripts changes: a unified diff of each script.
fn amend_plan(
    path: &Path,
    existing: &pb::Migration,
    request: &pb::SubmitMigrationRequest,
) -> String {
    let mut plan = format!(
        "{}: {} exists with other scripts; submitting amends it: every approval is void and each deployment that has not run goes back to awaiting approval",
        path.display(),
        existing.id
    );
    let mut diff = |label: &str, was: &str, now: &str| {
        if was == now {
            return;
        }
        let text = similar::TextDiff::from_lines(was, now)
            .unified_diff()
            .context_radius(2)
            .header(
                &format!("{label} (submitted)"),
                &format!("{label} ({})", path.display()),
            )
            .to_string();
        // Each line shown, not obeyed (a script may hold terminal escapes); the lines kept.
        for line in text.trim_end().lines() {
            plan.push('\n');
            plan.push_str(&printable(line));
        }
    };
    diff("up", &existing.up_sql, &request.up_sql);
    diff(
        "rollback",
        existing.down_sql.as_deref().unwrap_or(""),
        request.down_sql.as_deref().unwrap_or(""),
    );
    plan
}

/// A submitted migration: its effective risk and why, and per environment its state and who
/// must still approve it there.
fn print_submitted(title: &str, m: &pb::Migration) {
    println!("{title} {}", m.id);
    let effective = m.effective_risk.to_uppercase();
    if m.effective_risk == m.declared_risk {
        println!("  risk {effective}");
    } else {
        println!(
            "  risk {effective} (declared {}; raised by the analysis)",
            m.declared_risk.to_uppercase()
        );
        for f in m
            .findings
            .iter()
            .filter(|f| f.ignored.is_empty() && f.risk == m.effective_risk)
        {
            let script = if f.script == "down" { "rollback " } else { "" };
            println!(
                "    {script}line {}: {} ({})",
                f.line,
                printable(&f.message),
                f.rule
            );
        }
    }
    let width = m
        .deployments
        .iter()
        .map(|d| d.environment.len())
        .max()
        .unwrap_or(0);
    for d in &m.deployments {
        let needs = if d.state == "awaiting_approval" {
            format!(": needs {}", still_needed(d))
        } else {
            String::new()
        };
        println!("  {:<width$}  {}{needs}", d.environment, paint(&d.state));
    }
}
