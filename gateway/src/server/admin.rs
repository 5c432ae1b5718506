//! The admin API under `/admin/`: routing state, evidence, reload status and audit tail, and
//! manual promote / roll back / set weight / pause. A bearer token from the config (or
//! `FLYWHEEL_ADMIN_TOKEN`) is required; without one configured, only loopback clients are served.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request};
use serde_json::{Value, json};

use super::auth::{self, Caller, Role};
use super::body::{self, BodyLimits};
use super::{ApiError, AppState};
use crate::rollout::Reloader;
use crate::rollout::decision::{Decision, Refused, promote, roll_back};

/// Handles `/admin/...`; `rest` is the path after `admin`.
pub async fn handle(
    state: &AppState,
    req: Request<Incoming>,
    peer: SocketAddr,
    rest: &[&str],
) -> Result<Value, ApiError> {
    let reloader = state.reloader.clone().ok_or_else(|| ApiError::NotReady("no reloader".into()))?;
    let method = req.method().clone();
    let role = match (&method, rest) {
        (&Method::GET, _) => Role::Read,
        (_, ["models", _, "approve" | "reject"]) => Role::Approve,
        // Under a policy that wants an approval, a manual promotion is an approval too.
        (_, ["models", model, "promote"]) if needs_approval(&reloader, model) => Role::Approve,
        _ => Role::Operate,
    };
    let caller = auth::authorize(&reloader.config.load(), req.headers(), peer, role, "admin API")?;
    match (method, rest) {
        (Method::GET, ["routing"]) => Ok(routing(state, &reloader)),
        (Method::GET, ["audit"]) => {
            // `?limit=N`: the newest N entries (100); `?model=M`: the newest N of that model's.
            let model = query_value(&req, "model").map(str::to_owned);
            let limit = query_number(&req, "limit")?.unwrap_or(100);
            if !(1..=MAX_AUDIT_LINES).contains(&limit) {
                return Err(ApiError::BadRequest(format!("limit must be in 1..={MAX_AUDIT_LINES}, given {limit}")));
            }
            let r = Arc::clone(&reloader);
            off_runtime(move || {
                let entries = match model {
                    Some(model) => r.audit.tail_of(&model, limit as usize),
                    None => r.audit.tail(limit as usize),
                };
                json!({"entries": entries})
            })
            .await
        }
        (Method::GET, ["history", model]) => {
            let since = query_number(&req, "since")?.unwrap_or(0);
            let served = state.table.load().models.contains_key(*model);
            match crate::dashboard::history::global().view(model, since) {
                Some(view) => Ok(serde_json::to_value(view).unwrap_or_default()),
                None if served => Ok(json!({"model": model, "points": [], "drift_window": null})),
                None => Err(crate::model::RouteError::ModelNotFound((*model).to_owned()).into()),
            }
        }
        (Method::GET, ["drift", model]) => {
            let since = query_number(&req, "since")?.unwrap_or(0);
            let registry = reloader.registry().ok_or_else(|| ApiError::NotReady("no registry".into()))?;
            let path = registry.root().join(model).join(flywheel_registry::DRIFT_EVENTS_FILE);
            let model = String::from(*model);
            // The newest events only (read from the end of the log), so the call costs the same
            // whatever the log's age; the trainer reads the whole log itself.
            off_runtime(move || {
                let lines = flywheel_registry::tail_lines(&path, MAX_EVENTS).unwrap_or_default();
                let all: Vec<flywheel_registry::DriftEvent> =
                    lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
                // Older events than the newest MAX_EVENTS were asked for but not read: say so, so
                // a poller knows it has a gap.
                let truncated = lines.len() >= MAX_EVENTS && all.first().is_some_and(|e| e.seq > since);
                let events: Vec<_> = all.into_iter().filter(|e| e.seq >= since).collect();
                let next = events.last().map_or(since, |e| e.seq + 1);
                json!({"model": model, "events": events, "next": next, "truncated": truncated})
            })
            .await
        }
        (Method::GET, ["runs", model]) => {
            // The trainer's retraining runs and gate verdicts (newest last).
            let registry = reloader.registry().ok_or_else(|| ApiError::NotReady("no registry".into()))?;
            let path = registry.root().join(model).join(flywheel_registry::TRAINER_RUNS_FILE);
            let model = String::from(*model);
            off_runtime(move || {
                let lines = flywheel_registry::tail_lines(&path, 100).unwrap_or_default();
                let runs: Vec<Value> = lines.iter().filter_map(|l| serde_json::from_str(l).ok()).collect();
                json!({"model": model, "runs": runs})
            })
            .await
        }
        (Method::GET, ["lineage", request_id]) => {
            let registry = reloader.registry().ok_or_else(|| ApiError::NotReady("no registry".into()))?;
            let config = reloader.config.load_full();
            let query = req.uri().query().unwrap_or_default();
            let flag = |key: &str| query.split('&').any(|kv| kv == format!("{key}=true"));
            // A fleet's versions are trained on every replica's rows; this replica holds its own.
            if flag("verify") && config.registry_url.is_some() {
                return Err(ApiError::BadRequest(
                    "verify=true re-assembles training rows from this replica's samples, but a fleet trains on every \
                     replica's: run `registry --root <registry URL> lineage --request-id <id>`, which reads the \
                     fleet's sample store and the files each version's training-set record lists"
                        .into(),
                ));
            }
            let sources = flywheel_registry::lineage::Sources {
                sample_dir: config.sample_dir().ok_or_else(|| ApiError::NotReady("no sample folder".into()))?,
                audit_logs: config.audit_log_path().into_iter().collect(),
                verify_data: flag("verify"),
            };
            let id = String::from(*request_id);
            // Reads Parquet files (and re-assembles training rows with ?verify=true): off the
            // async threads.
            let found =
                off_runtime(move || flywheel_registry::lineage::lineage(&registry, &sources, &id, None)).await?;
            match found {
                Ok(lineage) => Ok(serde_json::to_value(&lineage).unwrap_or_default()),
                Err(e @ flywheel_registry::lineage::LineageError::NotSampled(..)) => {
                    Err(ApiError::Absent(e.to_string()))
                }
                Err(e) => Err(ApiError::NotReady(e.to_string())),
            }
        }
        (Method::POST, ["reload"]) => {
            let r = Arc::clone(&reloader);
            let status = tokio::task::spawn_blocking(move || r.reload())
                .await
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            Ok(serde_json::to_value(&*status).unwrap_or_default())
        }
        (Method::POST, ["models", model, action]) => {
            let headers = req.headers().clone();
            let body = read_json(state, req).await?;
            // Under a policy that wants approvals, raising the canary's weight by hand is an
            // approval too (an operator cannot pause and walk an unapproved candidate to 100%).
            let raises = body.get("weight").and_then(Value::as_u64).is_some_and(|w| {
                let table = state.table.load();
                let current = table.models.get(*model).and_then(|m| m.route.canary).map_or(0, |(_, w)| u64::from(w));
                w > current
            });
            let caller = if *action == "weight" && raises && needs_approval(&reloader, model) {
                auth::authorize(&reloader.config.load(), &headers, peer, Role::Approve, "admin API")?
            } else {
                caller
            };
            model_action(state, reloader, (model, action), body, caller).await
        }
        (method, _) => {
            Err(ApiError::NotFound { method: method.to_string(), path: format!("/admin/{}", rest.join("/")) })
        }
    }
}

fn needs_approval(reloader: &Reloader, model: &str) -> bool {
    let config = reloader.config.load();
    let policy = config.rollout_for(model).and_then(|r| r.policy.as_ref());
    policy.is_some_and(|p| p.require_approval != crate::config::ApprovalPoint::None)
}

async fn read_json(state: &AppState, req: Request<Incoming>) -> Result<Value, ApiError> {
    let limits = BodyLimits { max_bytes: 64 * 1024, timeout: state.limits.body_timeout(), request_deadline: None };
    let (parts, body) = req.into_parts();
    let (bytes, _held) = body::read(&parts.headers, body, limits, &state.body_bytes).await?;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("admin body is not JSON: {e}")))
}

fn routing(state: &AppState, reloader: &Reloader) -> Value {
    let table = state.table.load();
    let models: Vec<Value> = table
        .models
        .values()
        .map(|m| {
            let route = &m.route;
            let versions: Vec<Value> = m
                .versions
                .values()
                .map(|mv| {
                    json!({
                        "version": mv.version,
                        "state": "ready",
                        "sha256": mv.sha256,
                        "signed_by": mv.signed_by,
                        "path": mv.path,
                        "queue_depth": mv.queue.depth(),
                        "score": mv.score,
                    })
                })
                .collect();
            json!({
                "name": m.name,
                "versions": versions,
                "champion": route.champion,
                "canary": route.canary.map(|(v, w)| json!({"version": v, "weight": w})),
                "shadow": route.shadow.as_ref().map(|s| json!({"version": s.version, "fraction": s.fraction})),
                "paused": reloader.controls.is_paused(&m.name),
                "awaiting_approval": route.canary.and_then(|(v, _)| reloader.controls.awaiting_approval(&m.name, v)).map(|(_, held)| held),
                "evidence": arms_json(&route.evidence.step, route.evidence.weight),
                "lifetime_evidence": arms_json(&route.evidence.lifetime, None),
            })
        })
        .collect();
    let last = reloader.last.load_full();
    let draining: Vec<Value> =
        reloader.draining().into_iter().map(|(m, v)| json!({"model": m, "version": v, "state": "draining"})).collect();
    json!({"models": models, "draining": draining, "last_reload": &*last})
}

/// One span of a route's evidence: each arm's record, the shadow pairs, labelled rows.
fn arms_json(r: &crate::model::table::ArmsRecord, weight: Option<u32>) -> Value {
    json!({
        "weight": weight,
        "champion": r.champion.snapshot(),
        "canary": r.canary.snapshot(),
        "shadow": r.shadow.snapshot(),
        "labelled": {"champion": r.champion_labelled.len(), "canary": r.canary_labelled.len()},
    })
}

async fn model_action(
    state: &AppState,
    reloader: Arc<Reloader>,
    (model, action): (&str, &str),
    body: Value,
    caller: Caller,
) -> Result<Value, ApiError> {
    let (champion, canary) = {
        let table = state.table.load();
        let served =
            table.models.get(model).ok_or_else(|| crate::model::RouteError::ModelNotFound(model.to_owned()))?;
        (served.route.champion, served.route.canary)
    };
    // An operator may name the version the decision is about (`{"version": 2}`): if the route
    // moved on meanwhile, the answer is a conflict, never a decision about another version.
    let expected = body.get("version").and_then(Value::as_u64);
    let need_canary = || match (canary, expected) {
        (Some((v, w)), Some(e)) if v == e => Ok((v, w)),
        (Some((v, w)), None) => Ok((v, w)),
        (_, Some(e)) if reloader.controls.is_rejected(model, e) => {
            Err(ApiError::Conflict(format!("version {e} of '{model}' was rolled back")))
        }
        (now, Some(e)) => Err(ApiError::Conflict(format!(
            "version {e} of '{model}' is not the canary (the canary is {})",
            now.map_or_else(|| "none".to_owned(), |(v, _)| format!("version {v}"))
        ))),
        (None, None) => Err(ApiError::BadRequest(format!("model '{model}' has no canary in rollout"))),
    };
    let reason = body.get("reason").and_then(Value::as_str).unwrap_or("manual").to_owned();
    let (model_owned, r) = (model.to_owned(), Arc::clone(&reloader));
    match action {
        "promote" | "rollback" | "reject" => {
            let conflict = if action == "promote" { "promote_conflict" } else { "roll_back_conflict" };
            let (candidate, _) = audit_conflict(&reloader, (model, &caller), conflict, need_canary()).await?;
            let reason =
                if action == "reject" { format!("rejected by approver {}: {reason}", caller.0) } else { reason };
            let promoting = action == "promote";
            blocking(move || {
                let d = Decision {
                    model: &model_owned,
                    champion,
                    candidate,
                    actor: "admin",
                    credential: Some(caller.0.clone()),
                    reason,
                    evidence: Value::Null,
                };
                if promoting { promote(&r, d) } else { roll_back(&r, d) }
            })
            .await?
            .map_err(decision_error)?;
        }
        "weight" => {
            let (candidate, current) = need_canary()?;
            let weight =
                body.get("weight").and_then(Value::as_u64).filter(|w| *w <= 100).ok_or_else(|| {
                    ApiError::BadRequest(format!("body must be {{\"weight\": 0..=100}}, given {body}"))
                })? as u32;
            let mut entry = crate::rollout::audit::AuditEntry::now(model, "admin", "set_weight");
            entry.credential = Some(caller.0.clone());
            entry.to = Some(candidate);
            entry.reason = format!("{reason}: canary weight {current}% -> {weight}%");
            // The state is written through to the registry (a store request in a fleet): off
            // the async threads.
            blocking(move || {
                r.controls.set_weight(&model_owned, candidate, weight)?;
                r.audit.append(&entry);
                r.reload();
                Ok(())
            })
            .await?
            .map_err(|e: String| ApiError::NotReady(format!("canary weight not set: {e}")))?;
        }
        "approve" => {
            // The approver names what they looked at: never an approval of a candidate that
            // replaced it meanwhile.
            if expected.is_none() {
                return Err(ApiError::BadRequest(format!(
                    "an approval names the candidate: body {{\"version\": N}} (the canary of '{model}'), given {body}"
                )));
            }
            let (candidate, _) = need_canary()?;
            let comment = body.get("comment").and_then(Value::as_str).map(str::to_owned);
            let wanted_step = body.get("step").and_then(Value::as_u64).map(|s| s as usize);
            blocking(move || approve(&r, &model_owned, candidate, wanted_step, (&caller, comment))).await??;
        }
        "pause" | "resume" => {
            let paused = action == "pause";
            let mut entry =
                crate::rollout::audit::AuditEntry::now(model, "admin", if paused { "pause" } else { "resume" });
            entry.credential = Some(caller.0.clone());
            entry.reason = reason;
            blocking(move || {
                r.controls.set_paused(&model_owned, paused)?;
                r.audit.append(&entry);
                Ok(())
            })
            .await?
            .map_err(|e: String| ApiError::NotReady(format!("{action} not applied: {e}")))?;
        }
        other => {
            return Err(ApiError::NotFound { method: "POST".into(), path: format!("/admin/models/{model}/{other}") });
        }
    }
    Ok(routing(state, &reloader))
}

/// Records an approver's go for the step `model`'s `candidate` is held on; the controller
/// proceeds at its next look. A request that does not match the hold is a conflict (audited).
fn approve(
    r: &Reloader,
    model: &str,
    candidate: u64,
    wanted_step: Option<usize>,
    (caller, comment): (&Caller, Option<String>),
) -> Result<(), ApiError> {
    // In a fleet the hold is written by the lease holder, maybe another replica: read the
    // store's state rather than this copy's (a folder's state is this process's own).
    if r.registry().is_some_and(|g| g.remote().is_some()) {
        r.controls.reread_from_source(model);
    }
    let checked = match r.controls.awaiting_approval(model, candidate) {
        None => Err(format!(
            "version {candidate} of '{model}' does not await approval (the controller asks once a step's evidence passed)"
        )),
        Some((step, _)) if wanted_step.is_some_and(|w| w != step) => {
            Err(format!("version {candidate} awaits approval of step {step}, not {}", wanted_step.unwrap_or(step)))
        }
        Some((step, _)) => {
            let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
            let approval =
                flywheel_registry::Approval { credential: caller.0.clone(), time, step, comment: comment.clone() };
            match r.controls.approve(model, candidate, approval) {
                Ok(None) => Ok(step),
                Ok(Some(why)) => Err(why),
                Err(e) => return Err(ApiError::NotReady(format!("approval not recorded: {e}"))),
            }
        }
    };
    let mut entry = crate::rollout::audit::AuditEntry::now(model, "admin", "approve");
    entry.credential = Some(caller.0.clone());
    entry.to = Some(candidate);
    let result = match checked {
        Ok(step) => {
            let said = comment.map(|c| format!(": {c}")).unwrap_or_default();
            entry.reason = format!("approved leaving step {step}{said}");
            Ok(())
        }
        Err(why) => {
            entry.action = "approve_conflict";
            entry.reason = why.clone();
            Err(ApiError::Conflict(why))
        }
    };
    r.audit.append(&entry);
    result
}

/// Most drift events one `/admin/drift` call returns (the newest).
const MAX_EVENTS: usize = 1000;
/// Most audit lines one `/admin/audit` call reads (the newest).
const MAX_AUDIT_LINES: u64 = 5000;

/// The value of `key` in the request's query string.
fn query_value<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// The number `key` names in the query string; a value that is not one is a 400 naming it.
fn query_number(req: &Request<Incoming>, key: &str) -> Result<Option<u64>, ApiError> {
    query_value(req, key)
        .map(|v| v.parse::<u64>().map_err(|_| ApiError::BadRequest(format!("{key} must be a number, given {v:?}"))))
        .transpose()
}

/// Runs file reads and fsyncs on the blocking pool, never on an async worker.
async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::BadRequest(format!("admin call failed: {e}")))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError::BadRequest(format!("admin action failed: {e}")))
}

/// Records an operator's decision that was refused as a conflict before it was applied.
async fn audit_conflict<T>(
    reloader: &Arc<Reloader>,
    (model, caller): (&str, &Caller),
    action: &'static str,
    checked: Result<T, ApiError>,
) -> Result<T, ApiError> {
    if let Err(ApiError::Conflict(why)) = &checked {
        let mut entry = crate::rollout::audit::AuditEntry::now(model, "admin", action);
        entry.credential = Some(caller.0.clone());
        entry.reason = why.clone();
        let r = Arc::clone(reloader);
        blocking(move || r.audit.append(&entry)).await?;
    }
    checked
}

/// A decision that lost a race is a 409; one that cannot apply as configured, a 400.
fn decision_error(refused: Refused) -> ApiError {
    match refused {
        Refused::Conflict(why) => ApiError::Conflict(why),
        Refused::Failed(why) => ApiError::BadRequest(why),
    }
}
