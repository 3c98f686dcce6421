//! `POST /prompt`: ComfyUI's validation of a graph, its refusals (`400`
//! with `error` and `node_errors`) and the queueing of what passes.

use super::*;

pub(super) fn bad_request(kind: &str, message: &str, details: &str, node_errors: Value) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({
            "error": {"type": kind, "message": message, "details": details, "extra_info": {}},
            "node_errors": node_errors,
        })),
    )
        .into_response()
}

/// ComfyUI's `validate_prompt`, reduced to what a template can get wrong:
/// unknown classes, dangling links, no output node, an image `LoadImage`
/// cannot find.
fn validate(prompt: &Map<String, Value>, uploads: &uploads::Uploads) -> Result<Vec<String>, Box<Response>> {
    let mut outputs = Vec::new();
    let mut node_errors = Map::new();
    for (id, node) in prompt {
        let Some(class) = node["class_type"].as_str() else {
            return Err(Box::new(bad_request(
                "invalid_prompt",
                "Cannot execute because a node is missing the class_type property.",
                &format!("Node ID '#{id}'"),
                json!({}),
            )));
        };
        if !KNOWN_NODES.contains(&class) {
            return Err(Box::new(bad_request(
                "invalid_prompt",
                &format!("Cannot execute because node {class} does not exist."),
                &format!("Node ID '#{id}'"),
                json!({}),
            )));
        }
        for (name, value) in node["inputs"].as_object().into_iter().flatten() {
            if let Some(link) = value.as_array().filter(|a| a.len() == 2 && a[1].is_u64())
                && !link[0].as_str().is_some_and(|from| prompt.contains_key(from))
            {
                node_errors.insert(
                    id.clone(),
                    json!({"errors": [{"type": "bad_linked_input", "message": "Bad linked input",
                        "details": name, "extra_info": {"input_name": name}}],
                        "dependent_outputs": [], "class_type": class}),
                );
            }
        }
        if OUTPUT_NODES.iter().any(|(c, _)| *c == class) {
            outputs.push(id.clone());
        }
    }
    if outputs.is_empty() {
        return Err(Box::new(bad_request("prompt_no_outputs", "Prompt has no outputs", "", json!([]))));
    }
    outputs.sort();
    uploads::missing_images(prompt, &outputs, uploads, &mut node_errors);
    if !node_errors.is_empty() {
        return Err(Box::new(bad_request(
            "prompt_outputs_failed_validation",
            "Prompt outputs failed validation",
            "",
            Value::Object(node_errors),
        )));
    }
    Ok(outputs)
}

pub(super) async fn submit(State(shared): State<Arc<Shared>>, body: Option<Json<Value>>) -> Response {
    let Some(Json(body)) = body else {
        return bad_request("invalid_prompt", "Invalid JSON", "", json!({}));
    };
    let Some(prompt) = body["prompt"].as_object() else {
        return bad_request("no_prompt", "No prompt provided", "", json!({}));
    };
    let validated = validate(prompt, &shared.lock().uploads);
    let outputs = match validated {
        Ok(outputs) => outputs,
        Err(resp) => return *resp,
    };
    let prompt_id =
        body["prompt_id"].as_str().map(str::to_owned).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let client_id = body["client_id"].as_str().map(str::to_owned);
    let mut extra_data = body["extra_data"].clone();
    if !extra_data.is_object() {
        extra_data = json!({});
    }
    if let Some(c) = &client_id {
        extra_data["client_id"] = json!(c);
    }
    let number = {
        let mut inner = shared.lock();
        let number = inner.next_number;
        inner.next_number += 1;
        inner.submissions.push(Submission {
            prompt_id: prompt_id.clone(),
            client_id: client_id.clone(),
            prompt: Value::Object(prompt.clone()),
            number,
        });
        inner.pending.push_back(Queued {
            number,
            prompt_id: prompt_id.clone(),
            prompt: Value::Object(prompt.clone()),
            extra_data,
            outputs,
            client_id,
        });
        number
    };
    shared.work.notify_one();
    Json(json!({"prompt_id": prompt_id, "number": number, "node_errors": {}})).into_response()
}

pub(super) async fn prompt_info(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let inner = shared.lock();
    let remaining = inner.pending.len() + usize::from(inner.running.is_some());
    Json(json!({"exec_info": {"queue_remaining": remaining}}))
}
