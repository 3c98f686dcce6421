//! The predictions API and what happens to a prediction between its
//! creation and its end: cog's logs, tqdm progress, the output, deadlines.

use axum::body::Bytes;
use axum::http::HeaderMap;

use super::*;

/// How long a prediction stays `starting` (a warm model's queue time).
const STARTING: Duration = Duration::from_millis(100);
/// Replicate sends `logs` and `output` webhooks at most this often.
const LOGS_THROTTLE: Duration = Duration::from_millis(500);
/// Sync mode waits at most this long.
const MAX_WAIT: Duration = Duration::from_secs(60);
const EVENTS: [&str; 4] = ["start", "output", "logs", "completed"];

pub(super) async fn create_for_model(
    State(shared): State<Arc<Shared>>,
    Path((owner, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Official models run their current version, which Replicate hides.
    create_prediction(shared, Some(format!("{owner}/{name}")), headers, body).await
}

pub(super) async fn create(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    create_prediction(shared, None, headers, body).await
}

fn invalid(fields: Vec<(&str, &str, String)>) -> Response {
    let detail: String = fields.iter().map(|(_, field, d)| format!("- {field}: {d}\n")).collect();
    let invalid_fields: Vec<Value> = fields
        .into_iter()
        .map(|(kind, field, description)| json!({"type": kind, "field": field, "description": description}))
        .collect();
    let body = json!({
        "title": "Input validation failed",
        "detail": detail,
        "status": 422,
        "invalid_fields": invalid_fields,
    });
    (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
}

/// `(model, version)` from a create body's `version`: a version id,
/// `owner/name:id`, or an official model's `owner/name`; else the invalid
/// field's type and description.
fn model_and_version(version: &Value) -> Result<(String, String), (&'static str, String)> {
    let Some(version) = version.as_str() else {
        return Err(("required", "version is required".into()));
    };
    let is_id = |v: &str| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit());
    let is_model =
        |m: &str| m.split_once('/').is_some_and(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'));
    match version.split_once(':') {
        Some((model, id)) if is_model(model) && is_id(id) => Ok((model.to_owned(), id.to_owned())),
        None if is_id(version) => Ok(("fake/unknown".to_owned(), version.to_owned())),
        None if is_model(version) => Ok((version.to_owned(), "hidden".to_owned())),
        _ => Err((
            "invalid",
            format!(
                "Invalid version. It must be a 64-character version id or owner/name:id, not {version:?}"
            ),
        )),
    }
}

async fn create_prediction(
    shared: Arc<Shared>,
    model: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&body) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid request body",
            "The request body must be a JSON object.",
        );
    };
    let (model, version) = match model {
        Some(model) => (model, "hidden".to_owned()),
        None => match model_and_version(body.get("version").unwrap_or(&Value::Null)) {
            Ok(found) => found,
            Err((kind, description)) => return invalid(vec![(kind, "version", description)]),
        },
    };
    let input = match body.get("input") {
        Some(input @ Value::Object(_)) => input.clone(),
        None | Some(Value::Null) => {
            return invalid(vec![("required", "input", "input is required".into())]);
        }
        Some(_) => return invalid(vec![("invalid_type", "input", "Invalid type. Expected: object".into())]),
    };
    let webhook = match body.get("webhook") {
        None | Some(Value::Null) => None,
        Some(Value::String(url)) if url.starts_with("https://") || url.starts_with("http://") => {
            Some(url.clone())
        }
        Some(other) => {
            return invalid(vec![("invalid", "webhook", format!("Invalid webhook URL: {other}"))]);
        }
    };
    let filter: Vec<String> = match body.get("webhook_events_filter") {
        None | Some(Value::Null) => EVENTS.iter().map(|e| (*e).to_owned()).collect(),
        Some(Value::Array(events)) => {
            let mut filter = Vec::new();
            for event in events {
                match event.as_str() {
                    Some(e) if EVENTS.contains(&e) => filter.push(e.to_owned()),
                    _ => {
                        return invalid(vec![(
                            "enum",
                            "webhook_events_filter",
                            format!("{event} is not one of start, output, logs, completed"),
                        )]);
                    }
                }
            }
            filter
        }
        Some(_) => {
            return invalid(vec![(
                "invalid_type",
                "webhook_events_filter",
                "Invalid type. Expected: array".into(),
            )]);
        }
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let cancel_after = match header("cancel-after") {
        None => None,
        Some(value) => match parse_duration(value) {
            Some(d) => Some(d),
            None => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "Invalid Cancel-After header",
                    &format!("{value:?} is not a duration such as 30s, 5m or 1h30m"),
                );
            }
        },
    };
    let wait = header("prefer").and_then(sync_wait);

    let id = random_id();
    let created = Utc::now();
    let base = &shared.base;
    let mut object = json!({
        "id": id,
        "model": model,
        "version": version,
        "input": input,
        "logs": "",
        "output": null,
        "data_removed": false,
        "error": null,
        "source": "api",
        "status": "starting",
        "created_at": timestamp(created),
        "started_at": null,
        "completed_at": null,
        "urls": {
            "cancel": format!("{base}/v1/predictions/{id}/cancel"),
            "get": format!("{base}/v1/predictions/{id}"),
            "stream": null,
            "web": format!("https://replicate.com/p/{id}"),
        },
        "metrics": {},
    });
    if let Some(url) = &webhook {
        object["webhook"] = json!(url);
        object["webhook_events_filter"] = json!(filter);
    }
    if let Some(after) = cancel_after {
        let deadline = created + chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
        object["deadline"] = json!(timestamp(deadline));
    }
    let hook = webhook.map(|url| Hook { events: webhooks::sender(shared.clone(), url), filter });
    {
        let mut inner = shared.lock();
        let index = inner.predictions.len();
        inner.by_id.insert(id.clone(), index);
        inner.predictions.push(Prediction { object, created, started: None, hook });
    }
    let stop = shared.stop.clone();
    let runner = shared.clone();
    let run_id = id.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = run(&runner, &run_id) => {}
        }
    });
    if let Some(after) = cancel_after {
        let stop = shared.stop.clone();
        let runner = shared.clone();
        let run_id = id.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(after) => {
                    // Replicate aborts what has not started and cancels what runs.
                    runner.update(&run_id, |p| {
                        let status = if p.status() == "starting" { "aborted" } else { "canceled" };
                        p.finish(status, None)
                    });
                }
            }
        });
    }
    if let Some(wait) = wait {
        wait_until_done(&shared, &id, wait).await;
    }
    let object = shared.lock().prediction(&id).map(|p| p.object.clone()).unwrap_or_default();
    (StatusCode::CREATED, Json(object)).into_response()
}

/// How long `Prefer: wait` or `Prefer: wait=N` holds the request.
fn sync_wait(prefer: &str) -> Option<Duration> {
    prefer.split(',').map(str::trim).find_map(|p| match p.split_once('=') {
        None if p == "wait" => Some(MAX_WAIT),
        Some(("wait", secs)) => secs.trim().parse::<u64>().ok().map(|s| Duration::from_secs(s).min(MAX_WAIT)),
        _ => None,
    })
}

async fn wait_until_done(shared: &Shared, id: &str, max: Duration) {
    // Subscribed before looking, so no change is missed in between.
    let mut changed = shared.changed.subscribe();
    let until = tokio::time::Instant::now() + max;
    loop {
        if shared.lock().prediction(id).is_none_or(Prediction::terminal) {
            return;
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep_until(until) => return,
            _ = shared.stop.cancelled() => return,
        }
    }
}

/// A Go-style duration as `Cancel-After` takes it: `30s`, `5m`, `1h30m`,
/// `1.5h`, `250ms`; a bare number is seconds.
pub(super) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let (mut total, mut rest) = (0.0, s);
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let amount: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let letters = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..letters] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += amount * unit;
        rest = &rest[letters..];
    }
    Duration::try_from_secs_f64(total).ok()
}

pub(super) async fn get_one(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match shared.lock().prediction(&id) {
        Some(p) => Json(p.object.clone()).into_response(),
        None => not_found_detail("Prediction not found"),
    }
}

/// `?cursor=` is ignored: every prediction fits on the first page.
pub(super) async fn list(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let results: Vec<Value> = shared.lock().predictions.iter().rev().map(|p| p.object.clone()).collect();
    Json(json!({"next": null, "previous": null, "results": results}))
}

pub(super) async fn cancel(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    shared.lock().cancels.push(id.clone());
    match shared.update(&id, |p| {
        p.finish("canceled", None);
        p.object.clone()
    }) {
        Some(object) => Json(object).into_response(),
        None => not_found_detail("Prediction not found"),
    }
}

/// One tqdm progress line as tqdm writes it to a file: `{percentage:3.0f}%`,
/// a ten-character bar, `n/total`, elapsed and remaining time, and the rate.
pub(super) fn tqdm_line(n: u32, total: u32, elapsed: Duration) -> String {
    const BLOCKS: [char; 9] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉', '█'];
    const BAR: usize = 10;
    let frac = if total == 0 { 0.0 } else { f64::from(n.min(total)) / f64::from(total) };
    let eighths = (frac * (BAR * 8) as f64) as usize;
    let (full, part) = (eighths / 8, eighths % 8);
    let mut bar: String = std::iter::repeat_n('█', full).collect();
    if full < BAR {
        bar.push(BLOCKS[part]);
        bar.extend(std::iter::repeat_n(' ', BAR - full - 1));
    }
    let secs = elapsed.as_secs_f64();
    let rate = (n > 0 && secs > 0.0).then(|| f64::from(n) / secs);
    let remaining = rate.map_or_else(|| "?".to_owned(), |r| interval(f64::from(total - n.min(total)) / r));
    let rate = match rate {
        None => "?it/s".to_owned(),
        Some(r) if r < 1.0 => format!("{:5.2}s/it", 1.0 / r),
        Some(r) => format!("{r:5.2}it/s"),
    };
    format!("{:3.0}%|{bar}| {n}/{total} [{}<{remaining}, {rate}]", frac * 100.0, interval(secs))
}

/// tqdm's `format_interval`: `mm:ss`, or `h:mm:ss` from an hour.
fn interval(secs: f64) -> String {
    let secs = secs as u64;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 { format!("{h}:{m:02}:{s:02}") } else { format!("{m:02}:{s:02}") }
}

/// A prediction from `starting` to its end, unless something else (a
/// cancel, its deadline) ends it first.
async fn run(shared: &Arc<Shared>, id: &str) {
    tokio::time::sleep(STARTING).await;
    let (model, input, run_time, steps, failure) = {
        let inner = shared.lock();
        let Some(p) = inner.prediction(id) else { return };
        let prompt = p.object["input"]["prompt"].as_str().unwrap_or_default();
        let failure = inner
            .fail_rules
            .iter()
            .find(|(needle, _)| prompt.contains(needle.as_str()))
            .map(|(_, e)| e.clone());
        let model = p.object["model"].as_str().unwrap_or_default().to_owned();
        (model, p.object["input"].clone(), inner.run_time, inner.steps, failure)
    };
    let seed = input["seed"].as_u64().unwrap_or_else(|| rand::thread_rng().gen_range(0..65_536));
    let started = Instant::now();
    let begun = shared.update(id, |p| {
        if p.terminal() {
            return false;
        }
        let now = Utc::now();
        p.started = Some(now);
        p.object["status"] = json!("processing");
        p.object["started_at"] = json!(timestamp(now));
        p.object["logs"] = json!(format!("Using seed: {seed}\n{}\n", tqdm_line(0, steps, Duration::ZERO)));
        p.emit("start");
        true
    });
    if begun != Some(true) {
        return;
    }
    if let Err(missing) = check_inputs(shared, &input) {
        shared.update(id, |p| p.finish("failed", Some(missing)));
        return;
    }
    let fail_at = failure.as_ref().map(|_| steps.div_ceil(2));
    let mut logs_sent = Instant::now();
    for n in 1..=steps {
        tokio::time::sleep(run_time / steps).await;
        let line = tqdm_line(n, steps, started.elapsed());
        let going = shared.update(id, |p| {
            if p.terminal() {
                return false;
            }
            let mut logs = p.object["logs"].as_str().unwrap_or_default().to_owned();
            logs.push_str(&line);
            logs.push('\n');
            if fail_at == Some(n)
                && let Some(error) = &failure
            {
                // cog logs the exception before it reports the failure.
                logs.push_str(&format!(
                    "Traceback (most recent call last):\n  File \"predict.py\", line 42, in predict\nRuntimeError: {error}\n"
                ));
                p.object["logs"] = json!(logs);
                p.finish("failed", Some(error.clone()));
                return false;
            }
            p.object["logs"] = json!(logs);
            if logs_sent.elapsed() >= LOGS_THROTTLE {
                p.emit("logs");
                logs_sent = Instant::now();
            }
            true
        });
        if going != Some(true) {
            return;
        }
    }
    let plan = render::plan(&model, &input);
    match render::render(&shared.out_dir, id, &plan).await {
        Ok(bytes) => {
            let url = format!("{}/delivery/{id}/{}", shared.base, plan.file_name());
            {
                let mut inner = shared.lock();
                let Some(p) = inner.prediction_mut(id).filter(|p| !p.terminal()) else { return };
                // FLUX and most image models answer a list; video models one file.
                p.object["output"] = if plan.video { json!(url) } else { json!([url]) };
                p.emit("output");
                p.finish("succeeded", None);
                // Stored with the status, so the URL works once anyone sees it.
                let output = Output {
                    name: plan.file_name().to_owned(),
                    content_type: plan.content_type(),
                    bytes,
                    ready: Instant::now(),
                };
                inner.outputs.insert(id.to_owned(), output);
            }
            shared.changed.send_modify(|n| *n += 1);
        }
        Err(e) => {
            shared.update(id, |p| p.finish("failed", Some(e)));
        }
    }
}

/// Input URLs must name files the fake has: Files API files or earlier
/// outputs. Data URLs carry their file and pass.
fn check_inputs(shared: &Shared, input: &Value) -> Result<(), String> {
    let inner = shared.lock();
    let urls = input.as_object().into_iter().flat_map(|o| o.values()).flat_map(|v| match v {
        Value::String(s) => vec![s.as_str()],
        Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    });
    for url in urls {
        let Some(rest) = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")) else {
            continue;
        };
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let segments: Vec<&str> = path.split('/').collect();
        let found = match segments.as_slice() {
            ["", "v1", "files", id] | ["", "v1", "files", id, "download"] => inner.file(id).is_some(),
            ["", "delivery", id, name] => inner
                .outputs
                .get(*id)
                .is_some_and(|o| o.name == *name && o.ready.elapsed() < inner.output_ttl),
            _ => false,
        };
        if !found {
            return Err("input image not found".to_owned());
        }
    }
    Ok(())
}
