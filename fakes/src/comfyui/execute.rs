//! ComfyUI's executor: one prompt at a time, its nodes in dependency
//! order, the WebSocket messages each step sends, the history entry, and
//! outputs rendered with ffmpeg where ComfyUI would run a model.

use super::*;

/// ComfyUI's prompt worker: one prompt at a time, FIFO, while healthy.
pub(super) async fn executor(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let next = {
            let mut inner = shared.lock();
            if inner.health == Health::Healthy {
                let next = inner.pending.pop_front();
                if let Some(q) = &next {
                    inner.running = Some(q.clone());
                    inner.interrupt_requested = false;
                    *inner.executions.entry(q.prompt_id.clone()).or_default() += 1;
                }
                next
            } else {
                None
            }
        };
        let Some(job) = next else {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = shared.work.notified() => continue,
                // Health changes and queue edits may not notify.
                _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
            }
        };
        let entry = tokio::select! {
            _ = stop.cancelled() => return,
            entry = execute(&shared, &job) => entry,
        };
        let success = entry["status"]["status_str"] == "success";
        let cid = job.client_id.as_deref();
        if success {
            shared.send(cid, "execution_success", json!({"prompt_id": job.prompt_id, "timestamp": now_ms()}));
            // ComfyUI writes history only after the executor returns.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        {
            let mut inner = shared.lock();
            inner.history.insert(job.prompt_id.clone(), entry);
            inner.running = None;
            if success {
                inner.completed.push(job.prompt_id.clone());
            }
        }
        shared.send(
            cid,
            "executing",
            json!({"node": null, "display_node": null, "prompt_id": job.prompt_id}),
        );
    }
}

/// Nodes in an order where every node comes after its inputs.
fn execution_order(prompt: &Map<String, Value>, outputs: &[String]) -> Vec<String> {
    fn visit(id: &str, prompt: &Map<String, Value>, seen: &mut Vec<String>, order: &mut Vec<String>) {
        if seen.iter().any(|s| s == id) {
            return;
        }
        seen.push(id.to_owned());
        for value in prompt[id]["inputs"].as_object().into_iter().flatten().map(|(_, v)| v) {
            if let Some(from) = value.as_array().filter(|a| a.len() == 2).and_then(|a| a[0].as_str())
                && prompt.contains_key(from)
            {
                visit(from, prompt, seen, order);
            }
        }
        order.push(id.to_owned());
    }
    let (mut seen, mut order) = (Vec::new(), Vec::new());
    for out in outputs {
        visit(out, prompt, &mut seen, &mut order);
    }
    order
}

/// Width, height and frame count of the latent an output node decodes,
/// found by walking its links back to the empty latent.
fn latent_size(prompt: &Map<String, Value>, id: &str, depth: u32) -> Option<(u64, u64, u64)> {
    let inputs = prompt.get(id)?["inputs"].as_object()?;
    if let (Some(w), Some(h)) =
        (inputs.get("width").and_then(Value::as_u64), inputs.get("height").and_then(Value::as_u64))
    {
        let frames = inputs.get("length").and_then(Value::as_u64).unwrap_or(1);
        let batch = inputs.get("batch_size").and_then(Value::as_u64).unwrap_or(1);
        return Some((w, h, frames.max(batch)));
    }
    if depth > 32 {
        return None;
    }
    // The latent, samples and image inputs lead back to it.
    for key in ["images", "samples", "latent_image", "pixels", "image", "video"] {
        if let Some(from) = inputs.get(key).and_then(|v| v.as_array()).and_then(|a| a.first()?.as_str())
            && let Some(size) = latent_size(prompt, from, depth + 1)
        {
            return Some(size);
        }
    }
    None
}

struct Run<'a> {
    shared: &'a Shared,
    job: &'a Queued,
    messages: Vec<Value>,
    dropped: bool,
}

impl Run<'_> {
    fn send(&mut self, kind: &str, data: Value) {
        if matches!(
            kind,
            "execution_start" | "execution_cached" | "execution_error" | "execution_interrupted"
        ) {
            self.messages.push(json!([kind, data]));
        }
        self.shared.send(self.job.client_id.as_deref(), kind, data);
    }

    fn ended(&mut self, status: &str, outputs: Map<String, Value>, meta: Map<String, Value>) -> Value {
        json!({
            "prompt": self.job.tuple(),
            "outputs": outputs,
            "status": {"status_str": status, "completed": status == "success", "messages": self.messages},
            "meta": meta,
        })
    }
}

async fn execute(shared: &Shared, job: &Queued) -> Value {
    let mut run = Run { shared, job, messages: Vec::new(), dropped: false };
    let pid = job.prompt_id.clone();
    let Some(prompt) = job.prompt.as_object() else {
        return run.ended("error", Map::new(), Map::new());
    };
    run.send("execution_start", json!({"prompt_id": pid, "timestamp": now_ms()}));
    run.send("execution_cached", json!({"nodes": [], "prompt_id": pid, "timestamp": now_ms()}));
    let text = prompt.values().filter_map(|n| n["inputs"]["text"].as_str()).collect::<Vec<_>>().join("\n");
    let failure =
        shared.lock().fail_rules.iter().find(|(needle, _)| text.contains(needle)).map(|(_, m)| m.clone());
    let mut executed: Vec<String> = Vec::new();
    let mut outputs = Map::new();
    let mut meta = Map::new();
    for id in execution_order(prompt, &job.outputs) {
        let class = prompt[&id]["class_type"].as_str().unwrap_or_default().to_owned();
        run.send("executing", json!({"node": id, "display_node": id, "prompt_id": pid}));
        if SAMPLERS.contains(&class.as_str()) {
            if let Some(message) = &failure {
                let data = json!({
                    "prompt_id": pid, "node_id": id, "node_type": class, "executed": executed,
                    "exception_message": message, "exception_type": "RuntimeError",
                    "traceback": ["  File \"execution.py\", line 496, in execute\n"],
                    "current_inputs": {}, "current_outputs": {}, "timestamp": now_ms(),
                });
                run.send("execution_error", data);
                return run.ended("error", outputs, meta);
            }
            let steps = prompt[&id]["inputs"]["steps"].as_u64().unwrap_or(20).max(1);
            for step in 1..=steps {
                let (delay, drop_after) = {
                    let inner = shared.lock();
                    (inner.step_delay, inner.drop_after_steps)
                };
                tokio::time::sleep(delay).await;
                if std::mem::take(&mut shared.lock().interrupt_requested) {
                    let data = json!({"prompt_id": pid, "node_id": id, "node_type": class,
                        "executed": executed, "timestamp": now_ms()});
                    run.send("execution_interrupted", data);
                    return run.ended("error", outputs, meta);
                }
                run.send("progress", json!({"value": step, "max": steps, "prompt_id": pid, "node": id}));
                if drop_after == Some(step as u32) && !run.dropped {
                    run.dropped = true;
                    if let Some(cid) = &job.client_id {
                        // Dropping the sender closes the socket after what
                        // was already queued on it.
                        let mut inner = shared.lock();
                        if let Some(s) = inner.sockets.remove(cid) {
                            let _ = s.tx.send(Message::Close(None));
                        }
                    }
                }
            }
        }
        if let Some((_, key)) = OUTPUT_NODES.iter().find(|(c, _)| *c == class) {
            match write_output(shared, prompt, &id, &class).await {
                Ok(files) => {
                    let output = json!({ *key: files });
                    run.send(
                        "executed",
                        json!({"node": id, "display_node": id, "output": output, "prompt_id": pid}),
                    );
                    outputs.insert(id.clone(), output);
                }
                Err(e) => {
                    run.send(
                        "execution_error",
                        json!({
                            "prompt_id": pid, "node_id": id, "node_type": class, "executed": executed,
                            "exception_message": e, "exception_type": "RuntimeError", "traceback": [],
                            "current_inputs": {}, "current_outputs": {}, "timestamp": now_ms(),
                        }),
                    );
                    return run.ended("error", outputs, meta);
                }
            }
        }
        meta.insert(
            id.clone(),
            json!({"node_id": id, "display_node": id, "parent_node": null, "real_node_id": id}),
        );
        executed.push(id);
    }
    run.messages.push(json!(["execution_success", {"prompt_id": pid, "timestamp": now_ms()}]));
    run.ended("success", outputs, meta)
}

/// Renders an output node's files with ffmpeg, named as ComfyUI and
/// VideoHelperSuite name them, and returns their listing.
async fn write_output(
    shared: &Shared,
    prompt: &Map<String, Value>,
    id: &str,
    class: &str,
) -> Result<Vec<Value>, String> {
    let inputs = &prompt[id]["inputs"];
    let prefix = inputs["filename_prefix"].as_str().unwrap_or("ComfyUI").to_owned();
    if prefix.contains("..") || prefix.starts_with('/') {
        return Err(format!("invalid filename_prefix {prefix:?}"));
    }
    let (w, h, frames) = latent_size(prompt, id, 0).unwrap_or((512, 512, 1));
    let video = class != "SaveImage";
    let fps = inputs["frame_rate"].as_f64().or_else(|| inputs["fps"].as_f64()).unwrap_or(16.0).max(1.0);
    let count = if video { 1 } else { frames.max(1) };
    let mut files = Vec::new();
    for _ in 0..count {
        let n = {
            let mut inner = shared.lock();
            let c = inner.counters.entry(prefix.clone()).or_insert(0);
            *c += 1;
            *c
        };
        let name = if video { format!("{prefix}_{n:05}.mp4") } else { format!("{prefix}_{n:05}_.png") };
        let path = shared.out_dir.join(&name);
        let source = format!("testsrc2=size={w}x{h}:rate={fps}");
        let mut cmd = tokio::process::Command::new("ffmpeg");
        cmd.args(["-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", &source]);
        if video {
            let frames = frames.max(1).to_string();
            cmd.args([
                "-frames:v",
                &frames,
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
            ]);
        } else {
            cmd.args(["-frames:v", "1"]);
        }
        let out = cmd.arg(&path).output().await.map_err(|e| format!("ffmpeg: {e}"))?;
        if !out.status.success() {
            return Err(format!("ffmpeg: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        files.push(if video {
            json!({"filename": name, "subfolder": "", "type": "output", "format": "video/h264-mp4",
                   "frame_rate": fps, "workflow": format!("{prefix}_{n:05}.png"),
                   "fullpath": path.to_string_lossy()})
        } else {
            json!({"filename": name, "subfolder": "", "type": "output"})
        });
    }
    Ok(files)
}
