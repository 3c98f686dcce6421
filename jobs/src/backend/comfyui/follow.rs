//! Following one prompt: its WebSocket events, the `/history` and `/queue`
//! reconciliation, and what ends it.

use super::*;

/// Follows one prompt until it ends, through reconnects.
pub(super) struct Follow {
    pub(super) client: Client,
    pub(super) job: RenderJob,
    pub(super) tracker: Option<Tracker>,
    pub(super) graphs: Arc<Mutex<HashMap<String, Value>>>,
    pub(super) tx: mpsc::Sender<Event>,
}

/// What one connected stretch ended with.
pub(super) enum Next {
    Reconnect(String),
    End(Event),
    /// The receiver went away (the job was cancelled or abandoned).
    Gone,
}

impl Follow {
    pub(super) async fn run(mut self) {
        let mut failures = 0;
        let mut delay = Duration::from_millis(500);
        let end = loop {
            let why = match self.connected().await {
                Next::End(ev) => break Some(ev),
                Next::Gone => break None,
                Next::Reconnect(why) => why,
            };
            failures += 1;
            if failures > RECONNECTS {
                break Some(Err(RenderError::Unavailable(format!(
                    "{}: lost contact with prompt {}: {why}",
                    self.client.base, self.job.id
                ))));
            }
            tracing::warn!(prompt_id = %self.job.id, backend = %self.client.base, error = %why, "ComfyUI connection lost; reconnecting");
            tokio::select! {
                _ = self.tx.closed() => break None,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(16));
        };
        if let Ok(mut graphs) = self.graphs.lock() {
            graphs.remove(&self.job.id);
        }
        if let Some(ev) = end {
            let _ = self.tx.send(ev).await;
        }
    }

    /// Connects, reconciles, then reads events until the prompt ends or the
    /// socket drops.
    pub(super) async fn connected(&mut self) -> Next {
        let url =
            format!("{}/ws?clientId={}", self.client.base.replacen("http", "ws", 1), client_id(&self.job.id));
        let mut ws = match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(&url)).await
        {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => return Next::Reconnect(format!("WebSocket: {e}")),
            Err(_) => return Next::Reconnect("WebSocket: connect timed out".into()),
        };
        // Connected first, then asked: nothing that happens after the
        // answer can be missed.
        match self.client.find(&self.job.id).await {
            Err(e) => return Next::Reconnect(e.to_string()),
            Ok(Found::Done(entry)) => return Next::End(self.collect(entry).await),
            Ok(Found::Unknown) => {
                return Next::End(Err(RenderError::Lost(format!(
                    "{} knows no prompt {}",
                    self.client.base, self.job.id
                ))));
            }
            Ok(Found::Waiting(graph)) => {
                if self.tracker.is_none() {
                    self.tracker = Some(Tracker::new(&graph));
                }
            }
        }
        let mut poll = tokio::time::interval(POLL_EVERY);
        poll.reset();
        loop {
            let msg = tokio::select! {
                _ = self.tx.closed() => {
                    let _ = ws.close(None).await;
                    return Next::Gone;
                }
                _ = poll.tick() => {
                    match self.client.history(&self.job.id).await {
                        Ok(Some(entry)) => return Next::End(self.collect(entry).await),
                        Ok(None) => continue,
                        Err(e) => return Next::Reconnect(e.to_string()),
                    }
                }
                msg = ws.next() => msg,
            };
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | None => return Next::Reconnect("socket closed".into()),
                Some(Err(e)) => return Next::Reconnect(e.to_string()),
                Some(Ok(_)) => continue,
            };
            let Ok(msg) = serde_json::from_str::<Value>(&text) else { continue };
            if let Some(next) = self.on_message(&msg).await {
                return next;
            }
        }
    }

    pub(super) async fn on_message(&mut self, msg: &Value) -> Option<Next> {
        let data = &msg["data"];
        if data["prompt_id"].as_str() != Some(self.job.id.as_str()) {
            return None;
        }
        let tracker = self.tracker.get_or_insert_with(|| Tracker::new(&Value::Null));
        let before = (tracker.percent(), tracker.stage());
        match msg["type"].as_str().unwrap_or_default() {
            "execution_start" => tracker.started(),
            "execution_cached" => {
                let nodes: Vec<String> = data["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect();
                tracker.cached(&nodes);
            }
            "executing" => match data["node"].as_str() {
                Some(node) => tracker.executing(node),
                // `node: null` is how ComfyUI before execution_success said
                // "done".
                None => return Some(self.finished().await),
            },
            "progress" => tracker.step(
                data["node"].as_str(),
                data["value"].as_f64().unwrap_or(0.0),
                data["max"].as_f64().unwrap_or(0.0),
            ),
            "executed" => {
                if let Some(node) = data["node"].as_str() {
                    tracker.executed(node);
                }
            }
            "execution_success" => return Some(self.finished().await),
            "execution_error" => return Some(Next::End(Err(execution_error(data)))),
            "execution_interrupted" => {
                // Not by Mage (its cancels stop following first): someone
                // interrupted it on the server; the next attempt runs it again.
                return Some(Next::End(Err(RenderError::Unavailable(format!(
                    "{}: prompt {} was interrupted on the server",
                    self.client.base, self.job.id
                )))));
            }
            _ => {}
        }
        if (tracker.percent(), tracker.stage()) != before {
            let ev =
                Ok(RenderEvent::Progress { stage: tracker.stage().to_owned(), percent: tracker.percent() });
            if self.tx.send(ev).await.is_err() {
                return Some(Next::Gone);
            }
        }
        None
    }

    pub(super) async fn finished(&self) -> Next {
        let deadline = tokio::time::Instant::now() + HISTORY_WAIT;
        loop {
            match self.client.history(&self.job.id).await {
                Ok(Some(entry)) => return Next::End(self.collect(entry).await),
                Ok(None) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Ok(None) => return Next::Reconnect("finished, but not in /history".into()),
                Err(e) => return Next::Reconnect(e.to_string()),
            }
        }
    }

    /// Turns a history entry into the job's end: its outputs downloaded, or
    /// why it failed.
    pub(super) async fn collect(&self, entry: Value) -> Event {
        let status = &entry["status"];
        if status["status_str"].as_str() != Some("success") {
            let messages = status["messages"].as_array().cloned().unwrap_or_default();
            for m in &messages {
                if m[0].as_str() == Some("execution_error") {
                    return Err(execution_error(&m[1]));
                }
            }
            // Interrupted, or ComfyUI restarted mid-run: nothing to collect,
            // so it runs again.
            return Err(RenderError::Lost(format!(
                "{}: prompt {} ended without a result ({})",
                self.client.base,
                self.job.id,
                status["status_str"].as_str().unwrap_or("no status")
            )));
        }
        let mut nodes: Vec<(&String, &Value)> =
            entry["outputs"].as_object().map(|m| m.iter().collect()).unwrap_or_default();
        nodes.sort_by_key(|(id, _)| (id.parse::<u64>().unwrap_or(u64::MAX), id.to_string()));
        let mut files = Vec::new();
        tokio::fs::create_dir_all(&self.job.work_dir).await?;
        for (node, output) in nodes {
            for key in ["gifs", "videos", "images"] {
                for file in output[key].as_array().into_iter().flatten() {
                    // Previews live in ComfyUI's temp folder; they are not
                    // results.
                    if file["type"].as_str() == Some("temp") {
                        continue;
                    }
                    let Some(name) = file["filename"].as_str().and_then(|f| Path::new(f).file_name()) else {
                        continue;
                    };
                    let to = self.job.work_dir.join(format!("{node}-{}", name.to_string_lossy()));
                    self.client.download(file, &to).await?;
                    files.push(to);
                }
            }
        }
        match order_outputs(files, self.job.kind) {
            Some(files) => {
                tracing::info!(prompt_id = %self.job.id, files = files.len(), "ComfyUI outputs downloaded");
                Ok(RenderEvent::Finished(RenderOutput { files }))
            }
            None => Err(RenderError::Failed {
                user_message: "The renderer produced nothing.".into(),
                detail: format!(
                    "{}: prompt {} has no {:?} output",
                    self.client.base, self.job.id, self.job.kind
                ),
            }),
        }
    }
}
