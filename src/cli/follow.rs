//! Following deployments to their outcome: `migrate --wait`, `watch`, progress bars.

use super::*;

/// How `migrate` was asked to run.
pub(super) struct MigrateHow {
    pub wait: bool,
    /// A backup first, whatever backup_required says.
    pub backup: bool,
    pub emergency: Option<String>,
    pub output: Output,
    pub yes: bool,
}

pub(super) async fn migrate(client: &mut Client, environment: &str, how: MigrateHow) -> CliResult {
    let MigrateHow {
        wait,
        backup,
        emergency,
        output,
        yes,
    } = how;
    let status = environment_status(client, environment).await?;
    let overrides: &[pb::Deployment] = if emergency.is_some() {
        &status.pending_approvals
    } else {
        &[]
    };
    if !yes {
        // What will run, said first: an emergency override anywhere (the environment's name
        // typed back), a release in the last environment of the promotion order (production,
        // usually: y/N).
        let approved: Vec<&pb::Deployment> = status
            .queue
            .iter()
            .filter(|d| d.state == "approved")
            .collect();
        // Asked of the daemon only when something would run.
        let last = if approved.is_empty() {
            String::new()
        } else {
            environment_names(client).await?.pop().unwrap_or_default()
        };
        let mut plan = String::new();
        if let Some(reason) = &emergency
            && !overrides.is_empty()
        {
            plan.push_str(&format!(
                "emergency override in {environment} ({reason}): these are approved without their full set of approvals, your override recorded as an approval, a review owed afterwards:"
            ));
            for d in overrides {
                plan.push_str(&format!(
                    "\n  {} (missing: {})",
                    d.id,
                    d.missing_roles.join(", ")
                ));
            }
        }
        if last == environment && !approved.is_empty() && status.lock.is_none() {
            if !plan.is_empty() {
                plan.push('\n');
            }
            plan.push_str(&format!("apply to {environment}, in this order:"));
            for d in approved {
                plan.push_str(&format!(
                    "\n  {} ({} risk)",
                    d.migration_id, d.effective_risk
                ));
            }
        }
        if !overrides.is_empty() {
            confirm_typed(false, &plan, environment)?;
        } else if !plan.is_empty() {
            confirm(false, &plan, Ask::YesNo)?;
        }
    }
    if backup {
        let b = take_backup(client, environment).await?;
        say(
            output,
            format!("{environment}: backup taken before migrating: {}", b.file),
        );
    }
    if let Some(reason) = &emergency {
        for d in overrides {
            let request = client.request(pb::DeploymentActionRequest {
                deployment_id: d.id.clone(),
                reason: reason.clone(),
            })?;
            client
                .inner
                .emergency_override(request)
                .await
                .map_err(|s| client.failed(s))?;
            eprintln!("{}: emergency override ({reason}); a review is owed", d.id);
        }
    }
    // Subscribe before releasing anything, so that no event falls in between.
    let events = if wait {
        let request = client.request(pb::WatchEnvironmentRequest {
            environment: environment.to_owned(),
        })?;
        Some(
            client
                .inner
                .watch_environment(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner(),
        )
    } else {
        None
    };
    let request = client.request(pb::MigrateEnvironmentRequest {
        environment: environment.to_owned(),
    })?;
    let result = client
        .inner
        .migrate_environment(request)
        .await
        .map_err(|s| client.failed(s))?
        .into_inner();
    let Some(events) = events else {
        return match output {
            Output::Json => print_json(&result),
            Output::Table => {
                println!(
                    "{}: released {}, {} queued or running",
                    result.environment,
                    result.released.len(),
                    result.queued.len()
                );
                for id in &result.queued {
                    println!("  {id}");
                }
                Ok(())
            }
        };
    };
    if result.queued.is_empty() {
        nothing_to_apply(client, environment, output).await?;
        if output == Output::Json {
            print_json(&result)?;
        }
        return Ok(());
    }
    let outcomes = tokio::select! {
        outcomes = follow_stream(client, environment, events, &result.queued, output) => outcomes?,
        _ = tokio::signal::ctrl_c() => return Err(interrupted(environment)),
    };
    finish(outcomes, output)
}

/// Ctrl-C while following: the work goes on at the daemon; say how to see it.
pub(super) fn interrupted(environment: &str) -> Failure {
    Failure {
        code: 130,
        message: format!(
            "interrupted: the deployments go on in the daemon; follow them with `sluice watch {environment}` or see `sluice status {environment}`"
        ),
        api_code: None,
    }
}

pub(super) async fn environment_status(
    client: &mut Client,
    environment: &str,
) -> CliResult<pb::EnvironmentStatus> {
    let request = client.request(pb::GetEnvironmentStatusRequest {
        environment: environment.to_owned(),
    })?;
    Ok(client
        .inner
        .get_environment_status(request)
        .await
        .map_err(|s| client.failed(s))?
        .into_inner())
}

/// The environments' names in promotion order.
pub(super) async fn environment_names(client: &mut Client) -> CliResult<Vec<String>> {
    let request = client.request(pb::ListEnvironmentsRequest {})?;
    let list = client
        .inner
        .list_environments(request)
        .await
        .map_err(|s| client.failed(s))?
        .into_inner();
    Ok(list.environments.into_iter().map(|e| e.name).collect())
}

/// `migrate --wait` released nothing: why, and whether that is a success (everything approved
/// is applied) or not (something waits for approvals, or the queue is halted).
async fn nothing_to_apply(client: &mut Client, environment: &str, output: Output) -> CliResult {
    let status = environment_status(client, environment).await?;
    let say = |line: String| {
        if output == Output::Table {
            println!("{line}");
        }
    };
    if !status.halted_by.text().is_empty() {
        return Err(Failure::operation(format!(
            "{environment}: nothing can run: {}",
            halted_reason(client, environment, status.halted_by.text()).await
        )));
    }
    if !status.pending_approvals.is_empty() {
        let mut message = format!(
            "{environment}: nothing to apply: {} awaiting approval",
            status.pending_approvals.len()
        );
        for d in &status.pending_approvals {
            message.push_str(&format!("\n  {} needs {}", d.migration_id, still_needed(d)));
        }
        return Err(Failure::operation(message));
    }
    match &status.last_applied {
        Some(last) if status.auto_apply => say(format!(
            "{environment}: nothing to apply: auto_apply applies approved migrations here as they come; the last, {}, was applied at {}",
            last.migration_id,
            last.finished_at.text()
        )),
        Some(last) => say(format!(
            "{environment}: nothing to apply: everything approved is applied (the last, {}, at {})",
            last.migration_id,
            last.finished_at.text()
        )),
        None => say(format!("{environment}: nothing to apply: no migration yet")),
    }
    Ok(())
}

/// "the queue is halted by X (failed: its error); ..." with what to do about it.
async fn halted_reason(client: &mut Client, environment: &str, halted_by: &str) -> String {
    let error = match client_deployment(client, halted_by).await {
        Some(d) if !d.error.text().is_empty() => format!(
            " ({}: {})",
            d.state,
            printable(d.error.text().lines().next().unwrap_or_default())
        ),
        _ => String::new(),
    };
    let migration = halted_by.split('@').next().unwrap_or(halted_by);
    format!(
        "the queue is halted by {halted_by}{error}; fix its cause and `sluice retry {environment} {migration}`, or skip it with `sluice cancel {environment} {migration}`"
    )
}

async fn client_deployment(client: &mut Client, id: &str) -> Option<pb::Deployment> {
    let request = client
        .request(pb::GetDeploymentRequest { id: id.to_owned() })
        .ok()?;
    client
        .inner
        .get_deployment(request)
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Follows deployments to their outcome over a fresh environment watch.
pub(super) async fn follow(
    client: &mut Client,
    environment: &str,
    ids: &[String],
    output: Output,
) -> CliResult<BTreeMap<String, (String, String)>> {
    let request = client.request(pb::WatchEnvironmentRequest {
        environment: environment.to_owned(),
    })?;
    let events = client
        .inner
        .watch_environment(request)
        .await
        .map_err(|s| client.failed(s))?
        .into_inner();
    follow_stream(client, environment, events, ids, output).await
}

pub(super) fn resting(state: &str) -> bool {
    matches!(
        state,
        "applied" | "failed" | "rolled_back" | "rejected" | "expired" | "cancelled"
    )
}

/// Shows progress (a bar per deployment at a terminal, plain lines otherwise) until every
/// deployment rests, or until none of those left can move on without someone acting (the
/// daemon's `needs` in environment status says so, and what is needed). Returns each one's
/// final state and error ("blocked" and what is needed for those that stopped).
///
/// The worker claims a run of deployments in one commit (all "running") and applies them one
/// after another in queue order; after a failure it puts the rest back in the queue. So a
/// deployment is shown running only once it is the first unfinished one of the run, never after
/// a failure in it.
pub(super) async fn follow_stream(
    client: &mut Client,
    environment: &str,
    mut events: tonic::Streaming<pb::DeploymentEvent>,
    ids: &[String],
    output: Output,
) -> CliResult<BTreeMap<String, (String, String)>> {
    let terminal = std::io::stderr().is_terminal();
    let bars = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    let mut progress: BTreeMap<String, indicatif::ProgressBar> = BTreeMap::new();
    let mut outcomes: BTreeMap<String, (String, String)> = BTreeMap::new();
    let wanted: HashSet<&String> = ids.iter().collect();
    for id in ids {
        if terminal {
            let bar = bars.add(indicatif::ProgressBar::new_spinner());
            bar.set_style(style.clone());
            bar.set_prefix(id.clone());
            bar.set_message("queued");
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            progress.insert(id.clone(), bar);
        }
    }
    let mut run = Run::default();
    // Deployments that finished before the watch began produce no event: read them once.
    for id in ids {
        let request = client.request(pb::GetDeploymentRequest { id: id.clone() })?;
        let d = client
            .inner
            .get_deployment(request)
            .await
            .map_err(|s| client.failed(s))?
            .into_inner();
        if resting(&d.state) {
            outcomes.insert(id.clone(), (d.state.clone(), d.error.text().to_owned()));
            show(&progress, output, id, &d.state, true);
        } else if d.state == "running" {
            run.claimed.insert(id.clone());
        } else if d.state != "queued" {
            show(&progress, output, id, &d.state, false);
        }
    }
    run.show_first(ids, &outcomes, &progress, output);
    // Nothing that can move without someone: say so instead of waiting forever.
    if let Some(reason) = stuck(client, environment, ids, &mut outcomes).await? {
        give_up(ids, &mut outcomes, &progress, &reason, output);
    }
    let mut look_again = tokio::time::Instant::now() + LOOK_AGAIN;
    while outcomes.len() < ids.len() {
        // Locks and changes in earlier environments send no event here: look again now and
        // then as well.
        let next = tokio::select! {
            next = events.next() => Some(next),
            _ = tokio::time::sleep_until(look_again) => None,
        };
        let Some(next) = next else {
            look_again = tokio::time::Instant::now() + LOOK_AGAIN;
            if let Some(reason) = stuck(client, environment, ids, &mut outcomes).await? {
                give_up(ids, &mut outcomes, &progress, &reason, output);
            }
            continue;
        };
        let Some(event) = next else {
            return Err(Failure {
                code: 3,
                message: "the daemon closed the watch stream before the deployments finished"
                    .into(),
                api_code: Some("unavailable"),
            });
        };
        let event = event.map_err(|s| client.failed(s))?;
        let id = event.deployment_id.clone();
        let mine = wanted.contains(&id) && !outcomes.contains_key(&id);
        match event.event {
            Some(pb::deployment_event::Event::State(state)) => {
                if mine {
                    match state.as_str() {
                        "running" => {
                            run.claimed.insert(id.clone());
                        }
                        "queued" => {
                            run.claimed.remove(&id);
                            if run.shown.remove(&id) {
                                show(&progress, output, &id, &state, false);
                            }
                        }
                        _ => {
                            if state == "failed" {
                                // The worker stops the run: the rest go back to the queue.
                                run.claimed.clear();
                            }
                            run.claimed.remove(&id);
                            let rests = resting(&state);
                            if rests {
                                outcomes.insert(
                                    id.clone(),
                                    (state.clone(), event.error.text().to_owned()),
                                );
                            }
                            show(&progress, output, &id, &state, rests);
                        }
                    }
                    run.show_first(ids, &outcomes, &progress, output);
                }
                // A change that may leave the rest with nothing that moves on by itself.
                if !mine || !matches!(state.as_str(), "running" | "applied" | "rolled_back") {
                    look_again = tokio::time::Instant::now() + LOOK_AGAIN;
                    if let Some(reason) = stuck(client, environment, ids, &mut outcomes).await? {
                        give_up(ids, &mut outcomes, &progress, &reason, output);
                    }
                }
            }
            Some(pb::deployment_event::Event::Log(line)) if mine => {
                // Its statements produce lines: it runs (its state event may come later).
                if run.claimed.contains(&id) && run.shown.insert(id.clone()) {
                    show(&progress, output, &id, "running", false);
                }
                match progress.get(&id) {
                    Some(bar) => {
                        bar.set_message(format!("{}: {}", line.level, printable(&line.message)))
                    }
                    None => say(
                        output,
                        format!("{id}: {}: {}", line.level, printable(&line.message)),
                    ),
                }
            }
            _ => {}
        }
    }
    Ok(outcomes)
}

/// How often a wait looks at the environment's status without an event.
const LOOK_AGAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The deployments of the run the worker claimed, and which of them were shown running.
#[derive(Default)]
struct Run {
    claimed: HashSet<String>,
    shown: HashSet<String>,
}

impl Run {
    /// Shows the first unfinished claimed deployment (in queue order) as running.
    fn show_first(
        &mut self,
        ids: &[String],
        outcomes: &BTreeMap<String, (String, String)>,
        progress: &BTreeMap<String, indicatif::ProgressBar>,
        output: Output,
    ) {
        let first = ids
            .iter()
            .find(|id| self.claimed.contains(*id) && !outcomes.contains_key(*id));
        if let Some(id) = first
            && self.shown.insert(id.clone())
        {
            show(progress, output, id, "running", false);
        }
    }
}

/// A deployment's new state, on its bar or as a line.
fn show(
    progress: &BTreeMap<String, indicatif::ProgressBar>,
    output: Output,
    id: &str,
    state: &str,
    rests: bool,
) {
    match progress.get(id) {
        Some(bar) if rests => bar.finish_with_message(state.to_owned()),
        Some(bar) => bar.set_message(state.to_owned()),
        None => say(output, format!("{id}: {state}")),
    }
}

/// Whether none of `ids` still open can move on without someone acting, and what is needed
/// (the daemon's decision: each deployment's `needs` in environment status). Failures found
/// there are outcomes, recorded in `outcomes` (their event may not have arrived yet).
pub(super) async fn stuck(
    client: &mut Client,
    environment: &str,
    ids: &[String],
    outcomes: &mut BTreeMap<String, (String, String)>,
) -> CliResult<Option<String>> {
    let status = environment_status(client, environment).await?;
    let mut needs: Vec<String> = Vec::new();
    let mut failed = Vec::new();
    for d in status.queue.iter().filter(|d| ids.contains(&d.id)) {
        if outcomes.contains_key(&d.id) {
            continue;
        }
        if d.state == "failed" {
            failed.push((d.id.clone(), d.error.text().to_owned()));
            continue;
        }
        match &d.needs {
            None => return Ok(None),
            Some(what) => {
                let what = printable(what);
                if !needs.contains(&what) {
                    needs.push(what);
                }
            }
        }
    }
    // Nothing moves on by itself: the failures are outcomes now, whatever the stream says.
    for (id, error) in failed {
        outcomes.insert(id, ("failed".into(), error));
    }
    Ok(Some(needs.join("; ")).filter(|_| !needs.is_empty()))
}

/// A progress line: on stdout for people, on stderr when stdout is one JSON document.
fn say(output: Output, line: String) {
    match output {
        Output::Table => println!("{line}"),
        Output::Json => eprintln!("{line}"),
    }
}

/// Ends the wait for every deployment without an outcome yet.
pub(super) fn give_up(
    ids: &[String],
    outcomes: &mut BTreeMap<String, (String, String)>,
    progress: &BTreeMap<String, indicatif::ProgressBar>,
    reason: &str,
    output: Output,
) {
    for id in ids {
        if outcomes.contains_key(id) {
            continue;
        }
        outcomes.insert(id.clone(), ("blocked".into(), reason.to_owned()));
        match progress.get(id) {
            Some(bar) => bar.abandon_with_message(format!("blocked: {reason}")),
            None => say(output, format!("{id}: blocked: {reason}")),
        }
    }
}

pub(super) fn finish(outcomes: BTreeMap<String, (String, String)>, output: Output) -> CliResult {
    let failed: Vec<(&String, &(String, String))> = outcomes
        .iter()
        .filter(|(_, (state, _))| state != "applied" && state != "rolled_back")
        .collect();
    if output == Output::Json {
        let map: BTreeMap<&String, serde_json::Value> = outcomes
            .iter()
            .map(|(id, (state, error))| {
                let error = Some(error).filter(|e| !e.is_empty());
                (id, serde_json::json!({"state": state, "error": error}))
            })
            .collect();
        print_json(&map)?;
    }
    if failed.is_empty() {
        return Ok(());
    }
    let mut message = String::new();
    for (id, (state, error)) in failed {
        message.push_str(&format!("{id} is {state}"));
        if !error.is_empty() {
            message.push_str(&format!(": {error}"));
        }
        message.push('\n');
    }
    Err(Failure::operation(message.trim_end().to_owned()))
}

pub(super) async fn watch(
    client: &mut Client,
    environment: &str,
    migration_id: Option<String>,
    output: Output,
) -> CliResult {
    let mut events = match &migration_id {
        Some(id) => {
            let request = client.request(pb::WatchDeploymentRequest {
                deployment_id: format!("{id}@{environment}"),
                follow_resting: false,
            })?;
            client
                .inner
                .watch_deployment(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner()
        }
        None => {
            let request = client.request(pb::WatchEnvironmentRequest {
                environment: environment.to_owned(),
            })?;
            client
                .inner
                .watch_environment(request)
                .await
                .map_err(|s| client.failed(s))?
                .into_inner()
        }
    };
    let mut last_state = String::new();
    while let Some(event) = events.next().await {
        let event = event.map_err(|s| client.failed(s))?;
        if let Some(pb::deployment_event::Event::State(state)) = &event.event {
            last_state = state.clone();
        }
        if output == Output::Json {
            // A stream: one JSON object a line (JSON Lines).
            print_json_line(&event)?;
            continue;
        }
        match &event.event {
            Some(pb::deployment_event::Event::State(state)) => {
                let error = if event.error.text().is_empty() {
                    String::new()
                } else {
                    format!(": {}", event.error.text().lines().next().unwrap_or(""))
                };
                println!(
                    "{} {} {}{error}",
                    event.at,
                    event.deployment_id,
                    paint(state)
                );
            }
            Some(pb::deployment_event::Event::Log(line)) => println!(
                "{} {} {}: {}",
                line.at, event.deployment_id, line.level, line.message
            ),
            Some(pb::deployment_event::Event::Missed(n)) => {
                println!("(missed {n} events: the watcher fell behind)")
            }
            None => {}
        }
    }
    // A watched deployment ends the stream when it rests: its outcome is the exit code.
    if migration_id.is_some() && last_state != "applied" && last_state != "rolled_back" {
        return Err(Failure::operation(format!(
            "the deployment is {last_state}"
        )));
    }
    Ok(())
}
