//! Printing what the daemon answered: tables for people (control characters shown, never
//! obeyed) and JSON for programs.

use super::*;

/// Whether the command printed its JSON document: a failure after it (a failed rollback
/// test's report) is then said on stderr only, so that stdout stays one document.
pub(super) static JSON_PRINTED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

pub(super) fn print_json<T: serde::Serialize>(value: &T) -> CliResult {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::operation(format!("cannot encode the answer: {e}")))?;
    println!("{text}");
    JSON_PRINTED.store(true, std::sync::atomic::Ordering::SeqCst);
    Ok(())
}

/// One object of a JSON Lines stream (`watch`).
pub(super) fn print_json_line<T: serde::Serialize>(value: &T) -> CliResult {
    let text = serde_json::to_string(value)
        .map_err(|e| Failure::operation(format!("cannot encode the answer: {e}")))?;
    println!("{text}");
    Ok(())
}

/// A deployment's state for stdout: coloured at a terminal (failed red, applied green, waiting
/// yellow, moving cyan, undone magenta); plain when piped or when NO_COLOR is set. Padding
/// (`{:<18}`) applies to the text, not the colour codes.
pub(super) fn paint(state: &str) -> console::StyledObject<&str> {
    paint_as(state, state)
}

/// `text` in the colour of the deployment state `like`.
pub(super) fn paint_as<'a>(text: &'a str, like: &str) -> console::StyledObject<&'a str> {
    let styled = console::style(text).for_stdout();
    match like {
        "applied" => styled.green(),
        "failed" | "rejected" | "expired" | "blocked" => styled.red(),
        "awaiting_approval" | "approved" => styled.yellow(),
        "queued" | "running" | "rolling_back" => styled.cyan(),
        "rolled_back" | "cancelled" => styled.magenta(),
        _ => styled,
    }
}

pub(super) fn print_deployment(deployment: &pb::Deployment, output: Output) -> CliResult {
    match output {
        Output::Json => print_json(deployment),
        Output::Table => {
            println!("{}: {}", deployment.id, paint(&deployment.state));
            Ok(())
        }
    }
}

/// Who must still approve: "data_ops_lead, dba", "2 approvals from data_ops" (one role, more
/// than one approval), "dba, 1 more from data_ops/dba".
pub(super) fn still_needed(d: &pb::Deployment) -> String {
    let extra = d.additional_approvals_needed;
    if extra > 0 && d.required_roles.len() == 1 && d.missing_roles == d.required_roles {
        return format!("{} approvals from {}", extra + 1, d.required_roles[0]);
    }
    let mut parts: Vec<String> = d.missing_roles.clone();
    if extra > 0 {
        parts.push(format!("{extra} more from {}", d.required_roles.join("/")));
    }
    if parts.is_empty() {
        return "no more approval".into();
    }
    parts.join(", ")
}

/// `sluice status` without an environment: one line each, in promotion order, saying what
/// holds it (lock, halt, freeze, unreachable target, drift) and what waits.
pub(super) fn print_overview(environments: &[pb::EnvironmentStatus]) {
    let width = environments
        .iter()
        .map(|e| e.name.len())
        .max()
        .unwrap_or(0)
        .max("environment".len());
    println!(
        "{:<width$}  {:<8}  {:>8}  {:>8}  {:<40}  note",
        "environment", "state", "waiting", "queued", "last applied"
    );
    for e in environments {
        let (state, note) = if let Some(lock) = &e.lock {
            (
                "locked",
                format!("by {}: {}", lock.locked_by, printable(&lock.reason)),
            )
        } else if let Some(halted) = &e.halted_by {
            ("halted", format!("by {halted}"))
        } else if let Some(freeze) = &e.freeze {
            (
                "frozen",
                format!("{} until {}", freeze.window, freeze.until),
            )
        } else if let Some(error) = &e.target_error {
            ("down", printable(error))
        } else {
            ("ok", String::new())
        };
        let mut note = note;
        if let Some(drift) = &e.drift {
            if !note.is_empty() {
                note.push_str("; ");
            }
            note.push_str(&format!("drift: {} changes", drift.difference_count));
        }
        let queued = e
            .queue
            .iter()
            .filter(|d| d.state != "awaiting_approval")
            .count();
        let last = e
            .last_applied
            .as_ref()
            .map_or("none".to_owned(), |d| d.migration_id.clone());
        let shown = match state {
            "ok" => paint_as(state, "applied"),
            "locked" | "frozen" => paint_as(state, "awaiting_approval"),
            _ => paint_as(state, "failed"),
        };
        println!(
            "{:<width$}  {:<8}  {:>8}  {:>8}  {:<40}  {}",
            e.name,
            shown,
            e.pending_approvals.len(),
            queued,
            last,
            note
        );
    }
}

pub(super) fn print_status(status: &pb::EnvironmentStatus, verbose: bool) {
    println!("environment  {}", status.name);
    println!("database     {}", status.database);
    match &status.lock {
        Some(lock) => println!(
            "lock         locked by {} at {}: {}",
            lock.locked_by,
            lock.locked_at,
            printable(&lock.reason)
        ),
        None => println!("lock         unlocked"),
    }
    if let Some(freeze) = &status.freeze {
        println!(
            "freeze       in the window {} until {}: only emergency overrides start",
            freeze.window, freeze.until
        );
    }
    if !status.halted_by.text().is_empty() {
        println!(
            "halted by    {} (retry, roll back or cancel it)",
            status.halted_by.text()
        );
    }
    for owed in &status.owed_reviews {
        println!(
            "review owed  {} (emergency override) by {} since {}: sluice review {} {} \"...\"",
            owed.deployment_id,
            owed.roles.join(", "),
            owed.owed_since,
            owed.migration_id,
            status.name
        );
    }
    if !status.target_error.text().is_empty() {
        println!(
            "target       unreachable since {}: {}",
            status.target_error_since.text(),
            printable(status.target_error.text())
        );
    }
    for d in &status.partly_applied {
        println!(
            "partly applied {} (cancelled): statements 1 to {} stay applied; a data_ops_lead may `sluice rollback {} {}`",
            d.id,
            d.statements_applied.unwrap_or_default(),
            status.name,
            d.migration_id
        );
    }
    if let Some(drift) = &status.drift {
        println!(
            "drift        {} schema changes made outside Sluice, found at {}; approvals given before are void (`sluice drift {}`; `--accept` to take them)",
            drift.difference_count, drift.found_at, status.name
        );
        if verbose {
            print_differences(&drift.differences, drift.difference_count, "      ");
        }
    }
    match &status.last_applied {
        Some(d) => println!(
            "last applied {} at {}",
            d.migration_id,
            d.finished_at.text()
        ),
        None => println!("last applied none"),
    }
    if status.queue.is_empty() {
        println!("queue        empty");
        return;
    }
    println!("queue:");
    for d in &status.queue {
        let mut line = format!("  {:<60} {:<18}", d.migration_id, paint(&d.state));
        if d.state == "awaiting_approval" {
            line.push_str(&format!(" needs: {}", still_needed(d)));
        } else if !d.blocked_by.text().is_empty() {
            line.push_str(&format!(" {}", printable(d.blocked_by.text())));
        }
        println!("{line}");
        // What someone must do before it moves on (the daemon's one decision), where the
        // line above does not already say it.
        if let Some(needs) = d.needs.as_deref().filter(|n| !n.is_empty())
            && d.state != "awaiting_approval"
        {
            println!("      to move on: {}", printable(needs));
        }
        if verbose {
            for a in &d.approvals {
                println!(
                    "      approved by {} as {} at {} (checksum {}){}: {}",
                    a.approver,
                    a.role,
                    a.approved_at,
                    a.checksum,
                    if a.current {
                        ""
                    } else {
                        " (void: script changed)"
                    },
                    printable(&a.comment)
                );
            }
            if !d.deadline_at.text().is_empty() {
                println!("      approval deadline {}", d.deadline_at.text());
            }
            if !d.error.text().is_empty() {
                for line in d.error.text().lines() {
                    println!("      error: {}", printable(line));
                }
            }
            if let Some(run) = &d.dry_run {
                print_dry_run(run, "      ");
            }
            if let Some(test) = &d.rollback_test {
                print_rollback_test(test, "      ");
            }
        }
    }
}

pub(super) fn print_drift(drift: &pb::Drift, accepted: bool) {
    if drift.reference_at.is_empty() {
        println!(
            "{}: no reference schema yet (the first worker round or drift check takes it); live schema {}",
            drift.environment,
            short(&drift.live_hash)
        );
        return;
    }
    if accepted {
        println!(
            "{}: the live schema ({}) is the reference now",
            drift.environment,
            short(&drift.live_hash)
        );
        return;
    }
    if drift.drifted {
        println!(
            "{}: {} differences from the schema Sluice left at {} ({} -> {})",
            drift.environment,
            drift.difference_count,
            drift.reference_at,
            short(&drift.reference_hash),
            short(&drift.live_hash)
        );
        print_differences(&drift.differences, drift.difference_count, "  ");
    } else {
        println!(
            "{}: no drift: the live schema is the one Sluice left at {} ({})",
            drift.environment,
            drift.reference_at,
            short(&drift.live_hash)
        );
    }
    if let Some(recorded) = &drift.recorded {
        println!(
            "recorded at {}: {} differences; approvals given before are void until re-approved (`sluice drift {} --accept` makes the live schema the reference)",
            recorded.found_at, recorded.difference_count, drift.environment
        );
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

fn print_differences(differences: &[pb::SchemaDifference], count: u32, indent: &str) {
    for d in differences {
        let what = match d.change.as_str() {
            "added" => printable(&d.after),
            "removed" => printable(&d.before),
            _ => format!("{} -> {}", printable(&d.before), printable(&d.after)),
        };
        println!("{indent}{:<8} {}: {what}", d.change, printable(&d.object));
    }
    if (differences.len() as u32) < count {
        println!("{indent}... and {} more", count - differences.len() as u32);
    }
}

/// A rollback test's result, each line after `indent`.
pub(super) fn print_rollback_test(test: &pb::RollbackTest, indent: &str) {
    println!(
        "{indent}rollback test {} by {} at {}: {}{}",
        test.deployment_id,
        test.by,
        test.at,
        test.outcome,
        if test.stale {
            " (stale: the scripts changed since)"
        } else {
            ""
        }
    );
    for step in &test.steps {
        println!(
            "{indent}  {:<9} {} in {} ms",
            step.step,
            if step.ok { "ok" } else { "failed" },
            step.duration_ms
        );
        for line in step.error.lines() {
            println!("{indent}    error: {}", printable(line));
        }
    }
    for finding in &test.findings {
        println!("{indent}  finding: {}", printable(finding));
    }
    print_differences(
        &test.left_by_down,
        test.left_by_down.len() as u32,
        &format!("{indent}  left by down: "),
    );
    print_differences(
        &test.second_up_differs,
        test.second_up_differs.len() as u32,
        &format!("{indent}  second up: "),
    );
}

/// A dry run's result, each line after `indent`.
pub(super) fn print_dry_run(run: &pb::DryRun, indent: &str) {
    println!(
        "{indent}dry run {} by {} at {}: {} in {} ms{}",
        run.deployment_id,
        run.by,
        run.at,
        run.outcome,
        run.duration_ms,
        if run.stale {
            " (stale: the scripts changed since)"
        } else {
            ""
        }
    );
    for s in &run.statements {
        let mut line = format!(
            "{indent}  statement {} (line {}): {}",
            s.index, s.line, s.status
        );
        if let Some(ms) = s.duration_ms {
            line.push_str(&format!(", {ms} ms"));
        }
        if !s.reason.is_empty() {
            line.push_str(&format!(": {}", printable(&s.reason)));
        }
        println!("{line}");
    }
    for lock in &run.locks {
        println!(
            "{indent}  lock {} on {} (blocks {})",
            lock.mode,
            printable(&lock.relation),
            lock.blocks
        );
    }
    for line in run.error.lines() {
        println!("{indent}  error: {}", printable(line));
    }
    for line in &run.log {
        println!("{indent}  log: {}", printable(line));
    }
}

/// Text from the daemon made safe for a terminal: control characters (escape sequences that
/// could move the cursor, clear the screen or retitle the window) are shown as `\u{..}`.
pub(super) fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// Text of many lines made safe for a terminal line by line: the lines kept as lines (each
/// after the first indented by `indent`), tabs kept, every other control character shown.
pub(super) fn printable_lines(text: &str, indent: &str) -> String {
    text.lines()
        .map(printable)
        .collect::<Vec<_>>()
        .join(&format!("\n{indent}"))
}

/// `sluice show`: the migration, then each deployment (in promotion order), with its log when
/// asked. JSON: the migration as the API gives it, each deployment's log in full.
pub(super) async fn show(
    client: &mut Client,
    migration_id: &str,
    environment: Option<&str>,
    with_log: bool,
    output: Output,
) -> CliResult {
    let request = client.request(pb::GetMigrationRequest {
        id: migration_id.to_owned(),
    })?;
    let mut migration = client
        .inner
        .get_migration(request)
        .await
        .map_err(|s| client.failed(s))?
        .into_inner();
    if let Some(env) = environment {
        if !migration.deployments.iter().any(|d| d.environment == env) {
            let known: Vec<&str> = migration
                .deployments
                .iter()
                .map(|d| d.environment.as_str())
                .collect();
            return Err(Failure::operation(format!(
                "unknown environment \"{env}\" (known: {}){}",
                known.join(", "),
                crate::domain::text::did_you_mean(env, known.iter().copied())
            )));
        }
        migration.deployments.retain(|d| d.environment == env);
    }
    if with_log {
        for d in &mut migration.deployments {
            d.log = deployment_log(client, &d.id).await?;
        }
    }
    if output == Output::Json {
        return print_json(&migration);
    }
    let m = &migration;
    println!("migration    {}", m.id);
    println!("description  {}", printable(&m.description));
    println!("kind         {}", m.kind);
    println!("author       {}", m.author);
    println!("ticket       {}", printable(&m.ticket));
    println!("submitted    {}", m.submitted_at);
    let raised = if m.effective_risk != m.declared_risk {
        format!(" (declared {}, raised by a finding)", m.declared_risk)
    } else {
        String::new()
    };
    println!("risk         {}{raised}", m.effective_risk);
    println!("checksum     {}", m.checksum);
    if let Some(v) = m.previous_versions.first() {
        println!(
            "amended      {} at {}; before: {} ({}); `sluice show {} --diff` shows what changed",
            v.replaced_by,
            v.replaced_at,
            v.checksum,
            super::review::where_reviewed(v),
            m.id
        );
    }
    if !m.depends_on.is_empty() {
        println!("depends on   {}", m.depends_on.join(", "));
    }
    println!(
        "rollback     {}",
        match &m.down_sql {
            Some(down) if down.trim().is_empty() => "empty (nothing to undo)",
            Some(_) => "yes",
            None => "none: not undoable",
        }
    );
    if !m.findings.is_empty() {
        println!("findings");
        for f in &m.findings {
            let script = if f.script.is_empty() { "up" } else { &f.script };
            let ignored = if f.ignored.is_empty() {
                String::new()
            } else {
                format!(" (ignored: {})", f.ignored)
            };
            println!(
                "  {script} line {}: {} {} [{}]{ignored}",
                f.line,
                f.risk.to_uppercase(),
                printable(&f.message),
                f.rule
            );
        }
    }
    for d in &m.deployments {
        println!();
        println!("{}  {}", d.environment, paint(&d.state));
        if !d.blocked_by.text().is_empty() {
            println!("  waiting      {}", printable(d.blocked_by.text()));
        }
        let needed = still_needed(d);
        if !needed.is_empty() && d.state == "awaiting_approval" {
            println!("  needs        {needed}");
            if !d.deadline_at.text().is_empty() {
                println!("  deadline     {}", d.deadline_at.text());
            }
        }
        for a in &d.approvals {
            let void = if a.current {
                ""
            } else {
                " (void: the scripts changed since)"
            };
            println!(
                "  approved     {} as {} at {} (checksum {}){void}: {}",
                a.approver,
                a.role,
                a.approved_at,
                a.checksum,
                printable(&a.comment)
            );
        }
        if let Some(r) = &d.rejection {
            println!(
                "  rejected     by {} at {}: {}",
                r.by,
                r.at,
                printable_lines(&r.reason, "               ")
            );
        }
        if !d.emergency_reason.text().is_empty() {
            println!("  emergency    {}", printable(d.emergency_reason.text()));
        }
        if !d.started_at.text().is_empty() {
            println!("  started      {}", d.started_at.text());
        }
        if !d.finished_at.text().is_empty() {
            let took = d
                .execution_ms
                .map(|ms| {
                    format!(
                        " ({ms} ms{})",
                        match d.transactional {
                            Some(false) => ", statement by statement",
                            _ => "",
                        }
                    )
                })
                .unwrap_or_default();
            println!("  finished     {}{took}", d.finished_at.text());
        }
        if !d.error.text().is_empty() {
            println!(
                "  error        {}",
                printable_lines(d.error.text(), "               ")
            );
        }
        if with_log {
            if d.log.is_empty() {
                println!("  log          (empty)");
            } else {
                println!("  log");
                for line in &d.log {
                    println!(
                        "    {} {:<7} {}",
                        line.at,
                        line.level,
                        printable(&line.message)
                    );
                }
            }
        }
    }
    Ok(())
}

/// A deployment's whole log, page by page.
async fn deployment_log(client: &mut Client, deployment_id: &str) -> CliResult<Vec<pb::LogLine>> {
    let mut lines = Vec::new();
    let mut after = None;
    loop {
        let request = client.request(pb::GetDeploymentLogRequest {
            deployment_id: deployment_id.to_owned(),
            after_id: after,
            limit: Some(5_000),
        })?;
        let page = client
            .inner
            .get_deployment_log(request)
            .await
            .map_err(|s| client.failed(s))?
            .into_inner();
        lines.extend(page.lines.into_iter().map(|l| pb::LogLine {
            at: l.at,
            level: l.level,
            message: l.message,
        }));
        match page.next_after_id {
            Some(next) => after = Some(next),
            None => return Ok(lines),
        }
    }
}

/// An optional text of the API (absent: null in JSON) where a table wants a string.
pub(super) trait Text {
    fn text(&self) -> &str;
}

impl Text for Option<String> {
    fn text(&self) -> &str {
        self.as_deref().unwrap_or("")
    }
}
