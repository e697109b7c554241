//! The commands: offline ones (token, validate, new) and those that call the daemon.

use super::*;

mod offline;
mod submit;

pub(super) use offline::*;
pub(super) use submit::*;

pub(super) async fn remote(
    client: &mut Client,
    command: Command,
    output: Output,
    yes: bool,
) -> CliResult {
    match command {
        Command::Migrate {
            environment,
            wait,
            backup,
            force: _,
            emergency,
            migration,
        } => {
            // The emergency override is given here, to the one deployment it is about, through
            // the per-deployment override; `migrate` then releases what is approved as any
            // release does (the plan was confirmed with the override).
            let confirmed = match &emergency {
                Some(reason) => {
                    override_one(client, &environment, migration.as_deref(), reason, yes).await?;
                    true
                }
                None => yes,
            };
            let how = MigrateHow {
                wait,
                backup,
                emergency: None,
                output,
                yes: confirmed,
            };
            migrate(client, &environment, how).await
        }
        Command::Backup { environment } => {
            let b = take_backup(client, &environment).await?;
            match output {
                Output::Json => print_json(&b),
                Output::Table => {
                    println!(
                        "{environment}: backup taken: {} ({})",
                        b.file,
                        b.size_bytes
                            .map_or("size unknown".to_owned(), |s| format!("{s} bytes"))
                    );
                    Ok(())
                }
            }
        }
        Command::Status {
            environment: None,
            verbose: _,
        } => {
            let request = client.request(pb::ListEnvironmentsRequest {})?;
            let list = client
                .inner
                .list_environments(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            match output {
                Output::Json => print_json(&list.environments),
                Output::Table => {
                    print_overview(&list.environments);
                    Ok(())
                }
            }
        }
        Command::Status {
            environment: Some(environment),
            verbose,
        } => {
            let status = environment_status(client, &environment).await?;
            match output {
                Output::Json => print_json(&status),
                Output::Table => {
                    print_status(&status, verbose);
                    Ok(())
                }
            }
        }
        Command::Rollback {
            environment,
            migration_id,
            force: _,
            emergency,
            wait,
        } => {
            let reason = match emergency {
                Some(reason) => format!("EMERGENCY: {reason}"),
                None => "requested with `sluice rollback`".into(),
            };
            let deployment_id = format!("{migration_id}@{environment}");
            if !yes {
                let plan = rollback_plan(client, &migration_id, &environment).await?;
                confirm(yes, &plan, Ask::YesNo)?;
            }
            let request = client.request(pb::DeploymentActionRequest {
                deployment_id: deployment_id.clone(),
                reason,
            })?;
            let deployment = client
                .inner
                .rollback(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            if output == Output::Json && !wait {
                return print_json(&deployment);
            }
            if output == Output::Json {
                eprintln!("{deployment_id}: {}", deployment.state);
            } else {
                println!("{deployment_id}: {}", deployment.state);
            }
            if wait {
                let ids = [deployment_id];
                let outcomes = tokio::select! {
                    outcomes = follow(client, &environment, &ids, output) => outcomes?,
                    _ = tokio::signal::ctrl_c() => return Err(interrupted(&environment)),
                };
                return finish(outcomes, output);
            }
            Ok(())
        }
        Command::Approve {
            migration_id,
            role,
            approver,
            comment,
            environment,
            checksum,
        } => {
            // A mistyped role is said as such, before anything is looked up.
            role.parse::<crate::domain::Role>()
                .map_err(|e| Failure::usage(e.to_string()))?;
            let me = who_am_i(client).await?;
            if me.name != approver {
                return Err(Failure::operation(format!(
                    "the approver named ({approver}) is not the token's user ({}); approvals are signed by the token's owner",
                    me.name
                )));
            }
            let environment = match environment {
                Some(e) => e,
                None => awaiting_environment(client, &migration_id, Some(&role)).await?,
            };
            let args = super::review::ApproveArgs {
                migration_id,
                role,
                approver,
                comment,
                environment,
                checksum,
            };
            super::review::approve(client, args, output, yes).await
        }
        Command::Reject {
            migration_id,
            comment,
            environment,
        } => {
            let environment = match environment {
                Some(e) => e,
                None => awaiting_environment(client, &migration_id, None).await?,
            };
            let request = client.request(pb::RejectRequest {
                deployment_id: format!("{migration_id}@{environment}"),
                comment,
            })?;
            let deployment = client
                .inner
                .reject(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            match output {
                Output::Json => print_json(&deployment),
                Output::Table => {
                    println!("{}: {}", deployment.id, deployment.state);
                    Ok(())
                }
            }
        }
        Command::Lock {
            environment,
            reason,
        } => {
            let request = client.request(pb::LockEnvironmentRequest {
                environment,
                reason,
            })?;
            let status = client
                .inner
                .lock_environment(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            match output {
                Output::Json => print_json(&status),
                Output::Table => {
                    if let Some(lock) = &status.lock {
                        println!(
                            "{} locked by {} at {}: {}",
                            status.name, lock.locked_by, lock.locked_at, lock.reason
                        );
                    }
                    Ok(())
                }
            }
        }
        Command::Unlock {
            environment,
            force: _,
        } => {
            let request = client.request(pb::UnlockEnvironmentRequest { environment })?;
            let status = client
                .inner
                .unlock_environment(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            match output {
                Output::Json => print_json(&status),
                Output::Table => {
                    println!("{} unlocked", status.name);
                    Ok(())
                }
            }
        }
        Command::DryRun {
            migration_id,
            environment,
        } => {
            // Either order: `dry-run <id> <env>` as documented, or `<env> <id>` as retry takes.
            let (migration_id, environment) =
                if migration_id.parse::<crate::domain::MigrationId>().is_err()
                    && environment.parse::<crate::domain::MigrationId>().is_ok()
                {
                    (environment, migration_id)
                } else {
                    (migration_id, environment)
                };
            let request = client.request(pb::DeploymentActionRequest {
                deployment_id: format!("{migration_id}@{environment}"),
                reason: String::new(),
            })?;
            let run = client
                .inner
                .dry_run(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            match output {
                Output::Json => print_json(&run)?,
                Output::Table => super::render::print_dry_run(&run, ""),
            }
            if run.outcome == "error" {
                return Err(Failure::operation(format!(
                    "the dry run of {} failed; nothing was applied",
                    run.deployment_id
                )));
            }
            Ok(())
        }
        Command::TestRollback {
            migration_id,
            environment,
        } => {
            // By default the first environment, in promotion order, whose schema does not
            // hold the migration yet (where it is applied, up cannot run on the copy).
            let environment = match environment {
                Some(environment) => environment,
                None => migration_of(client, &migration_id)
                    .await?
                    .deployments
                    .iter()
                    .find(|d| !matches!(d.state.as_str(), "applied" | "running" | "rolling_back"))
                    .map(|d| d.environment.clone())
                    .ok_or_else(|| {
                        Failure::usage(format!(
                            "{migration_id} is applied in every environment: name the one whose schema the test copies (sluice test-rollback {migration_id} ENVIRONMENT)"
                        ))
                    })?,
            };
            let request = client.request(pb::DeploymentActionRequest {
                deployment_id: format!("{migration_id}@{environment}"),
                reason: String::new(),
            })?;
            let test = client
                .inner
                .test_rollback(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            match output {
                Output::Json => print_json(&test)?,
                Output::Table => super::render::print_rollback_test(&test, ""),
            }
            if test.outcome != "passed" {
                return Err(Failure::operation(format!(
                    "the rollback test of {} failed",
                    test.deployment_id
                )));
            }
            Ok(())
        }
        Command::Drift {
            environment,
            accept,
        } => {
            let request = client.request(pb::DriftRequest {
                environment: environment.clone(),
            })?;
            let drift = if accept {
                client.inner.accept_drift(request).await
            } else {
                client.inner.get_drift(request).await
            }
            .map_err(|s| client.failed(s))?
            .into_inner();
            match output {
                Output::Json => print_json(&drift)?,
                Output::Table => super::render::print_drift(&drift, accept),
            }
            if drift.drifted && !accept {
                return Err(Failure::operation(format!(
                    "the schema of {environment} drifted from what Sluice applied"
                )));
            }
            Ok(())
        }
        Command::Retry {
            environment,
            migration_id,
        } => {
            let request = client.request(pb::DeploymentActionRequest {
                deployment_id: format!("{migration_id}@{environment}"),
                reason: String::new(),
            })?;
            let deployment = client
                .inner
                .retry(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            print_deployment(&deployment, output)
        }
        Command::Cancel {
            environment,
            migration_id,
            reason,
        } => {
            if !yes {
                let d = deployment_of(client, &migration_id, &environment).await?;
                let plan = match d.state.as_str() {
                    "failed" => format!(
                        "cancel {}: the failed deployment is skipped and the queue of {environment} moves on; what the script left applied stays as it is",
                        d.id
                    ),
                    state => format!(
                        "cancel {} ({state}): the migration will not run in {environment}",
                        d.id
                    ),
                };
                confirm(yes, &plan, Ask::YesNo)?;
            }
            let request = client.request(pb::DeploymentActionRequest {
                deployment_id: format!("{migration_id}@{environment}"),
                reason,
            })?;
            let deployment = client
                .inner
                .cancel(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            print_deployment(&deployment, output)
        }
        Command::Submit { scripts } => submit(client, &scripts, output, yes).await,
        Command::Backups { environment } => {
            let request = client.request(pb::ListBackupsRequest {
                environment: environment.clone(),
            })?;
            let list = client
                .inner
                .list_backups(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            match output {
                Output::Json => print_json(&list.backups)?,
                Output::Table => {
                    if list.backups.is_empty() {
                        println!("{environment}: no backup taken");
                    }
                    for b in &list.backups {
                        let size = b
                            .size_bytes
                            .map_or("gone".to_owned(), |s| format!("{s} bytes"));
                        let before = match &b.preceded {
                            Some(preceded) => format!(", before {preceded}"),
                            None => String::new(),
                        };
                        println!("{}  {}  {size}{before}", b.taken_at, b.file);
                    }
                }
            }
            Ok(())
        }
        Command::Restore {
            environment,
            backup,
            confirm,
        } => {
            confirm_typed(
                yes || confirm,
                &format!(
                    "sluice restore replaces everything in the database of {environment} with {backup} (the database as it is now is backed up first)"
                ),
                &environment,
            )?;
            let request = client.request(pb::RestoreRequest {
                environment: environment.clone(),
                backup,
                confirm: environment,
            })?;
            let done = client
                .inner
                .restore(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            print_restore(&done, output)
        }
        Command::Reset {
            environment,
            confirm,
        } => {
            confirm_typed(
                yes || confirm,
                &format!(
                    "sluice reset drops everything in the database of {environment}, its migration history included"
                ),
                &environment,
            )?;
            let request = client.request(pb::ResetRequest {
                environment: environment.clone(),
                confirm: environment,
            })?;
            let done = client
                .inner
                .reset(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            print_restore(&done, output)
        }
        Command::Baseline { environment, up_to } => {
            let request = client.request(pb::BaselineRequest {
                environment: environment.clone(),
                up_to,
            })?;
            let done = client
                .inner
                .baseline(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            match output {
                Output::Json => print_json(&done)?,
                Output::Table => {
                    for id in &done.baselined {
                        println!("{id}: recorded as applied");
                    }
                    println!(
                        "{environment}: {} migrations baselined{}",
                        done.baselined.len(),
                        if done.verified_by.is_empty() {
                            " (no other tool's history table to check them against)".to_owned()
                        } else {
                            format!(", each found applied in {}", done.verified_by)
                        }
                    );
                }
            }
            Ok(())
        }
        Command::Import {
            dir,
            format,
            kind,
            risk,
            ticket,
            duration,
        } => {
            import(
                client, &dir, format, &kind, &risk, &ticket, &duration, output, yes,
            )
            .await
        }
        Command::Watch {
            environment,
            migration_id,
        } => watch(client, &environment, migration_id, output).await,
        Command::Show {
            migration_id,
            sql: false,
            diff: false,
            environment,
            log,
        } => super::render::show(client, &migration_id, environment.as_deref(), log, output).await,
        Command::Show {
            migration_id, diff, ..
        } => super::review::show_scripts(client, &migration_id, diff, output).await,
        Command::Pending => pending(client, output).await,
        Command::Whoami => {
            let me = who_am_i(client).await?;
            match output {
                Output::Json => print_json(&serde_json::json!({
                    "name": me.name,
                    "roles": me.roles,
                    "server": client.server,
                    "server_version": me.version,
                    "cli_version": env!("CARGO_PKG_VERSION"),
                })),
                Output::Table => {
                    println!("user     {}", me.name);
                    println!("roles    {}", me.roles.join(", "));
                    println!("server   {} (sluice {})", client.server, me.version);
                    if me.version != env!("CARGO_PKG_VERSION") {
                        println!(
                            "note     this CLI is sluice {}: another version than the daemon's",
                            env!("CARGO_PKG_VERSION")
                        );
                    }
                    Ok(())
                }
            }
        }
        Command::History { environment, limit } => {
            let request = client.request(pb::ListMigrationsRequest {
                limit,
                before_seq: None,
                environment: environment.clone().unwrap_or_default(),
            })?;
            let list = client
                .inner
                .list_migrations(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            match output {
                Output::Json => print_json(&list),
                Output::Table => {
                    // Environments in promotion order, one column each.
                    let columns: Vec<String> = match &environment {
                        Some(env) => vec![env.clone()],
                        None => environment_names(client).await?,
                    };
                    if list.migrations.is_empty() {
                        println!("no migration yet");
                        return Ok(());
                    }
                    let id_width = list
                        .migrations
                        .iter()
                        .map(|m| m.id.len())
                        .max()
                        .unwrap_or(2);
                    let author_width = list
                        .migrations
                        .iter()
                        .map(|m| m.author.chars().count())
                        .max()
                        .unwrap_or(6)
                        .max(6);
                    let width = |env: &String| env.len().max(17);
                    let mut header = format!(
                        "{:<id_width$}  {:<6}  {:<author_width$}",
                        "id", "risk", "author"
                    );
                    for env in &columns {
                        header.push_str(&format!("  {:<w$}", env, w = width(env)));
                    }
                    println!("{}", header.trim_end());
                    for m in &list.migrations {
                        let mut line = format!(
                            "{:<id_width$}  {:<6}  {:<author_width$}",
                            m.id, m.effective_risk, m.author
                        );
                        for env in &columns {
                            let state = m.states.get(env).map_or("-", String::as_str);
                            line.push_str(&format!("  {:<w$}", paint(state), w = width(env)));
                        }
                        println!("{}", line.trim_end());
                    }
                    Ok(())
                }
            }
        }
        Command::Audit {
            environment,
            migration,
            actor,
            since,
            until,
            oldest_first,
            after,
            before,
            limit,
        } => {
            let request = client.request(pb::ListAuditRequest {
                environment,
                migration_id: migration,
                actor,
                after_id: after,
                limit,
                before_id: before,
                since: since
                    .as_deref()
                    .map(|s| point_in_time("--since", s))
                    .transpose()?,
                until: until
                    .as_deref()
                    .map(|s| point_in_time("--until", s))
                    .transpose()?,
                // After an id: what came since, in order (polling); newest first otherwise.
                newest_first: !oldest_first && after.is_none(),
            })?;
            let audit = client
                .inner
                .list_audit(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            match output {
                // As REST gives it: a list, each record's detail an object.
                Output::Json => print_json(
                    &audit
                        .entries
                        .iter()
                        .map(|e| {
                            serde_json::json!({
                                "id": e.id,
                                "at": e.at,
                                "actor": e.actor,
                                "action": e.action,
                                "environment": e.environment,
                                "migration_id": e.migration_id,
                                "deployment_id": e.deployment_id,
                                "detail": serde_json::from_str::<serde_json::Value>(&e.detail_json)
                                    .unwrap_or(serde_json::Value::String(e.detail_json.clone())),
                            })
                        })
                        .collect::<Vec<_>>(),
                ),
                Output::Table => {
                    if audit.entries.is_empty() {
                        println!("no audit record matches");
                    } else {
                        println!(
                            "{:>6}  {:<24}  {:<12}  {:<22}  {:<40}  detail",
                            "id", "at", "actor", "action", "subject"
                        );
                    }
                    for e in &audit.entries {
                        let subject = e
                            .deployment_id
                            .as_deref()
                            .or(e.migration_id.as_deref())
                            .or(e.environment.as_deref())
                            .unwrap_or("");
                        println!(
                            "{:>6}  {:<24}  {:<12}  {:<22}  {:<40}  {}",
                            e.id,
                            e.at,
                            e.actor,
                            e.action,
                            subject,
                            audit_detail(&e.detail_json)
                        );
                    }
                    Ok(())
                }
            }
        }
        Command::Notifications { dead, limit, retry } => {
            super::notifications::list(client, dead, limit, retry, output).await
        }
        Command::Notify {
            command: NotifyCommand::Test { channel },
        } => super::notifications::test(client, channel, output).await,
        Command::Notify {
            command: NotifyCommand::Channels,
        } => super::notifications::channels(client, output).await,
        Command::Review {
            migration_id,
            environment,
            comment,
        } => {
            let request = client.request(pb::ReviewRequest {
                deployment_id: format!("{migration_id}@{environment}"),
                comment,
            })?;
            let deployment = client
                .inner
                .review(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner();
            match output {
                Output::Json => print_json(&deployment),
                Output::Table => {
                    let owed: Vec<&str> = deployment
                        .reviews
                        .iter()
                        .filter(|r| r.reviewer.text().is_empty())
                        .map(|r| r.role.as_str())
                        .collect();
                    if owed.is_empty() {
                        println!(
                            "{}: review recorded; no review is owed any more",
                            deployment.id
                        );
                    } else {
                        println!(
                            "{}: review recorded; still owed by {}",
                            deployment.id,
                            owed.join(", ")
                        );
                    }
                    Ok(())
                }
            }
        }
        Command::Server { .. }
        | Command::CheckConfig { .. }
        | Command::Token { .. }
        | Command::Validate { .. }
        | Command::New(_)
        | Command::Context { .. }
        | Command::Completions { .. } => unreachable!("offline commands run before connecting"),
    }
}

/// `sluice pending`: the deployments still needing a role the caller holds, which they have
/// not approved yet, in promotion order.
async fn pending(client: &mut Client, output: Output) -> CliResult {
    let me = who_am_i(client).await?;
    let request = client.request(pb::ListEnvironmentsRequest {})?;
    let environments = client
        .inner
        .list_environments(request)
        .await
        .map_err(|s| client.failed(s))?
        .into_inner()
        .environments;
    let mut rows = Vec::new();
    let mut authors: BTreeMap<String, String> = BTreeMap::new();
    for env in &environments {
        for d in &env.pending_approvals {
            let mut roles: Vec<&String> = d
                .missing_roles
                .iter()
                .filter(|r| me.roles.contains(r))
                .collect();
            if d.additional_approvals_needed > 0 {
                roles.extend(d.required_roles.iter().filter(|r| me.roles.contains(r)));
            }
            roles.sort();
            roles.dedup();
            let approved = d
                .approvals
                .iter()
                .any(|a| a.current && a.approver == me.name);
            if roles.is_empty() || approved {
                continue;
            }
            if !authors.contains_key(&d.migration_id) {
                let author = migration_of(client, &d.migration_id).await?.author;
                authors.insert(d.migration_id.clone(), author);
            }
            rows.push((d, roles));
        }
    }
    if output == Output::Json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|(d, roles)| {
                serde_json::json!({
                    "deployment_id": d.id,
                    "migration_id": d.migration_id,
                    "environment": d.environment,
                    "effective_risk": d.effective_risk,
                    "author": authors.get(&d.migration_id),
                    "deadline_at": d.deadline_at,
                    "missing_roles": d.missing_roles,
                    "additional_approvals_needed": d.additional_approvals_needed,
                    "you_can_approve_as": roles,
                    "checksum": d.checksum,
                })
            })
            .collect();
        return print_json(&list);
    }
    if rows.is_empty() {
        println!(
            "nothing awaits your approval ({}: {})",
            me.name,
            me.roles.join(", ")
        );
        return Ok(());
    }
    for (d, roles) in &rows {
        let author = authors.get(&d.migration_id).map_or("", String::as_str);
        let own = if author == me.name {
            " (yours: where self-approval is off, another must sign)"
        } else {
            ""
        };
        println!(
            "{}  {} risk, by {author}{own}; needs {}; deadline {}",
            d.id,
            d.effective_risk,
            still_needed(d),
            d.deadline_at.text()
        );
        println!(
            "  sluice show {} {}   then   sluice approve {} {} {} \"<what you checked>\" --environment {}",
            d.migration_id, d.environment, d.migration_id, roles[0], me.name, d.environment
        );
    }
    Ok(())
}

/// Takes a backup of the environment's database now.
pub(super) async fn take_backup(client: &mut Client, environment: &str) -> CliResult<pb::Backup> {
    let request = client.request(pb::TakeBackupRequest {
        environment: environment.to_owned(),
    })?;
    Ok(client
        .inner
        .take_backup(request)
        .await
        .map_err(|s| client.failed(s))?
        .into_inner())
}

/// A migration with its deployments.
pub(super) async fn migration_of(
    client: &mut Client,
    migration_id: &str,
) -> CliResult<pb::Migration> {
    let request = client.request(pb::GetMigrationRequest {
        id: migration_id.to_owned(),
    })?;
    Ok(client
        .inner
        .get_migration(request)
        .await
        .map_err(|s| client.failed(s))?
        .into_inner())
}

/// One deployment of a migration (refused, naming the environments it has, when it has none
/// there).
async fn deployment_of(
    client: &mut Client,
    migration_id: &str,
    environment: &str,
) -> CliResult<pb::Deployment> {
    let request = client.request(pb::GetDeploymentRequest {
        id: format!("{migration_id}@{environment}"),
    })?;
    Ok(client
        .inner
        .get_deployment(request)
        .await
        .map_err(|s| client.failed(s))?
        .into_inner())
}

/// What `rollback` will do, for its confirmation: the deployment and the first lines of the
/// rollback script that will run.
async fn rollback_plan(
    client: &mut Client,
    migration_id: &str,
    environment: &str,
) -> CliResult<String> {
    let d = deployment_of(client, migration_id, environment).await?;
    let migration = migration_of(client, migration_id).await?;
    let mut plan = format!(
        "roll back {} ({}{}): its rollback script runs on {environment}'s database",
        d.id,
        d.state,
        if d.finished_at.text().is_empty() {
            String::new()
        } else {
            format!(" at {}", d.finished_at.text())
        }
    );
    match migration.down_sql.as_deref() {
        Some(down) => {
            let lines: Vec<&str> = down
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"))
                .collect();
            for line in lines.iter().take(8) {
                plan.push_str(&format!("\n  | {}", printable(line)));
            }
            if lines.len() > 8 {
                plan.push_str(&format!("\n  | ... ({} more lines)", lines.len() - 8));
            }
        }
        None => plan.push_str("\n  (it has no rollback script: the daemon will refuse)"),
    }
    Ok(plan)
}

/// The first environment, in promotion order, where the migration awaits approval (and, with
/// a role, where that role can still sign).
pub(super) async fn awaiting_environment(
    client: &mut Client,
    migration_id: &str,
    role: Option<&str>,
) -> CliResult<String> {
    let migration = migration_of(client, migration_id).await?;
    migration
        .deployments
        .iter()
        .find(|d| {
            d.state == "awaiting_approval"
                && role.is_none_or(|r| {
                    d.missing_roles.iter().any(|m| m == r)
                        || (d.additional_approvals_needed > 0
                            && d.required_roles.iter().any(|m| m == r))
                })
        })
        .map(|d| d.environment.clone())
        .ok_or_else(|| {
            Failure::operation(format!(
                "{migration_id} awaits no approval{} in any environment; name one with --environment",
                role.map(|r| format!(" from {r}")).unwrap_or_default()
            ))
        })
}

fn print_restore(done: &pb::RestoreResponse, output: Output) -> CliResult {
    match output {
        Output::Json => print_json(done)?,
        Output::Table => {
            if done.backup.is_empty() {
                println!("{}: reset, its database is empty", done.environment);
            } else {
                println!("{}: restored from {}", done.environment, done.backup);
            }
            if !done.safety_backup.is_empty() {
                println!(
                    "the database as it was before is kept in {}",
                    done.safety_backup
                );
            }
            for id in &done.reapplied {
                println!("{id}: applied (the restored database holds it)");
            }
            for id in &done.undone {
                println!("{id}: approved again, not applied");
            }
            if !done.undone.is_empty() {
                println!(
                    "{} migrations wait for `sluice migrate {}` (or cancel those that must not run again)",
                    done.undone.len(),
                    done.environment
                );
            }
        }
    }
    Ok(())
}

/// `--since 2h` or `--since 2026-11-29T10:00:00Z`, as the RFC 3339 time the API takes.
fn point_in_time(flag: &str, value: &str) -> CliResult<String> {
    let value = value.trim();
    if chrono::DateTime::parse_from_rfc3339(value).is_ok() {
        return Ok(value.to_owned());
    }
    let (number, unit) = value.split_at(
        value
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(value.len()),
    );
    let seconds = match (number.parse::<i64>(), unit) {
        (Ok(n), "s") => Some(n),
        (Ok(n), "m") => Some(n * 60),
        (Ok(n), "h") => Some(n * 3_600),
        (Ok(n), "d") => Some(n * 86_400),
        _ => None,
    };
    match seconds {
        Some(s) => Ok((chrono::Utc::now() - chrono::Duration::seconds(s))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        None => Err(Failure::usage(format!(
            "{flag} {value}: give a duration back from now (30m, 2h, 7d) or an RFC 3339 time (2026-11-29T10:00:00Z)"
        ))),
    }
}

/// An audit record's detail on one line: its fields as key=value, at most 100 characters.
fn audit_detail(detail: &str) -> String {
    let text = match serde_json::from_str::<serde_json::Value>(detail) {
        Ok(serde_json::Value::Object(map)) => map
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{k}={s}"),
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => detail.to_owned(),
    };
    let flat = printable(&text.replace('\n', " "));
    if flat.chars().count() > 100 {
        format!("{}...", flat.chars().take(97).collect::<String>())
    } else {
        flat
    }
}

/// The token's user and roles, and the daemon's version.
async fn who_am_i(client: &mut Client) -> CliResult<pb::WhoAmIResponse> {
    Ok(client
        .inner
        .who_am_i(client.request(pb::WhoAmIRequest {})?)
        .await
        .map_err(|s| client.failed(s))?
        .into_inner())
}

/// A migration id where the environment goes and the environment where the id goes (`sluice
/// retry 003_... development`) is a usage error naming the order, said before any connection
/// (the daemon would answer "unknown environment", exit 1).
pub(in crate::cli) fn arguments_in_order(command: &Command) -> CliResult {
    let is_id = |s: &str| s.parse::<crate::domain::MigrationId>().is_ok();
    // (the command's words, its argument order, the value in the environment's place, the
    // value in the migration id's place)
    let (name, environment_first, environment, migration_id) = match command {
        Command::Retry {
            environment,
            migration_id,
        }
        | Command::Cancel {
            environment,
            migration_id,
            ..
        }
        | Command::Rollback {
            environment,
            migration_id,
            ..
        } => (
            command_name(command),
            true,
            environment.as_str(),
            migration_id.as_str(),
        ),
        Command::Watch {
            environment,
            migration_id: Some(migration_id),
        } => ("watch", true, environment.as_str(), migration_id.as_str()),
        Command::Show {
            migration_id,
            environment: Some(environment),
            ..
        } => ("show", false, environment.as_str(), migration_id.as_str()),
        Command::TestRollback {
            migration_id,
            environment: Some(environment),
        } => (
            "test-rollback",
            false,
            environment.as_str(),
            migration_id.as_str(),
        ),
        Command::Review {
            migration_id,
            environment,
            ..
        } => ("review", false, environment.as_str(), migration_id.as_str()),
        _ => return Ok(()),
    };
    if !is_id(environment) || is_id(migration_id) {
        return Ok(());
    }
    // Swapped: what was typed as the id is the environment, and the other way round.
    let (order, fixed) = if environment_first {
        (
            "ENVIRONMENT MIGRATION_ID",
            format!("{migration_id} {environment}"),
        )
    } else {
        (
            "MIGRATION_ID ENVIRONMENT",
            format!("{environment} {migration_id}"),
        )
    };
    Err(Failure::usage(format!(
        "sluice {name} takes {order}; the two came the other way round: sluice {name} {fixed} ..."
    )))
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Retry { .. } => "retry",
        Command::Cancel { .. } => "cancel",
        _ => "rollback",
    }
}

/// The deployment `migrate ENV --force --emergency` overrides: the one of `migration`, or the
/// only one awaiting approval in the environment. Several waiting and none named is a usage
/// error listing them, with the command for each: one emergency never carries others along.
fn emergency_target<'a>(
    waiting: &'a [pb::Deployment],
    environment: &str,
    migration: Option<&str>,
    reason: &str,
) -> CliResult<&'a pb::Deployment> {
    let command_for = |d: &pb::Deployment| {
        format!(
            "  sluice migrate {environment} --force --emergency {} --migration {}",
            super::review::shell_word(reason),
            d.migration_id
        )
    };
    match migration {
        Some(id) => waiting.iter().find(|d| d.migration_id == id).ok_or_else(|| {
            let listed: Vec<&str> = waiting.iter().map(|d| d.migration_id.as_str()).collect();
            Failure::operation(format!(
                "{id} does not await approval in {environment}, so there is nothing to override (awaiting approval there: {})",
                if listed.is_empty() {
                    "none".to_owned()
                } else {
                    listed.join(", ")
                }
            ))
        }),
        None => match waiting {
            [] => Err(Failure::operation(format!(
                "nothing awaits approval in {environment}: an emergency override needs a deployment awaiting approval (release what is approved with `sluice migrate {environment}`)"
            ))),
            [only] => Ok(only),
            several => {
                let commands: Vec<String> = several.iter().map(command_for).collect();
                Err(Failure::usage(format!(
                    "{} migrations await approval in {environment}; an emergency overrides one: name it with --migration, one of:\n{}",
                    several.len(),
                    commands.join("\n")
                )))
            }
        },
    }
}

/// Overrides the approvals of one deployment awaiting approval in `environment` (the emergency
/// `migrate --force` is about), after the environment's name is typed back.
async fn override_one(
    client: &mut Client,
    environment: &str,
    migration: Option<&str>,
    reason: &str,
    yes: bool,
) -> CliResult {
    let status = environment_status(client, environment).await?;
    let target = emergency_target(&status.pending_approvals, environment, migration, reason)?;
    let mut plan = format!(
        "emergency override in {environment} ({reason}): this one is approved without its full set of approvals, your override recorded as an approval, a review owed afterwards:\n  {} (missing: {})",
        target.id,
        still_needed(target)
    );
    let approved: Vec<&pb::Deployment> = status
        .queue
        .iter()
        .filter(|d| d.state == "approved")
        .chain(std::iter::once(target))
        .collect();
    plan.push_str(&format!("\nthen apply to {environment}, in this order:"));
    for d in approved {
        plan.push_str(&format!(
            "\n  {} ({} risk)",
            d.migration_id, d.effective_risk
        ));
    }
    confirm_typed(yes, &plan, environment)?;
    let request = client.request(pb::DeploymentActionRequest {
        deployment_id: target.id.clone(),
        reason: reason.to_owned(),
    })?;
    client
        .inner
        .emergency_override(request)
        .await
        .map_err(|s| client.failed(s))?;
    eprintln!(
        "{}: emergency override ({reason}); a review is owed",
        target.id
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(ids: &[&str]) -> Vec<pb::Deployment> {
        ids.iter()
            .map(|id| pb::Deployment {
                id: format!("{id}@production"),
                migration_id: (*id).to_owned(),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn an_emergency_overrides_the_named_migration_or_the_only_one_waiting() {
        let two = waiting(&["001_a", "002_b"]);
        let target = emergency_target(&two, "production", Some("002_b"), "outage").unwrap();
        assert_eq!(target.id, "002_b@production");
        let one = waiting(&["001_a"]);
        let target = emergency_target(&one, "production", None, "outage").unwrap();
        assert_eq!(target.id, "001_a@production");
    }

    #[test]
    fn several_waiting_and_none_named_is_a_usage_error_with_a_command_for_each() {
        let two = waiting(&["001_a", "002_b"]);
        let refused = emergency_target(&two, "production", None, "db on fire").unwrap_err();
        assert_eq!(refused.code, 2);
        for id in ["001_a", "002_b"] {
            let command = format!(
                "sluice migrate production --force --emergency 'db on fire' --migration {id}"
            );
            assert!(refused.message.contains(&command), "{}", refused.message);
            // The command shown parses as given.
            let words = shell_words::split(command.trim()).unwrap();
            assert!(Cli::try_parse_from(&words).is_ok(), "{command}");
        }
        let absent = emergency_target(&two, "production", Some("003_c"), "x").unwrap_err();
        assert_eq!(absent.code, 1);
        assert!(
            absent.message.contains("003_c does not await approval")
                && absent.message.contains("001_a, 002_b"),
            "{}",
            absent.message
        );
        let none = emergency_target(&[], "production", None, "x").unwrap_err();
        assert!(
            none.message
                .contains("nothing awaits approval in production")
        );
    }
}
