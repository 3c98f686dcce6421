//! The Files API: multipart uploads kept in memory, their metadata, and the
//! download URL predictions read them from.

use axum::extract::Multipart;
use md5::Md5;
use sha2::{Digest, Sha256};

use super::*;

/// Replicate keeps uploaded files for a day.
const FILE_LIFETIME_HOURS: i64 = 24;

pub(super) async fn create(State(shared): State<Arc<Shared>>, mut form: Multipart) -> Response {
    let bad = |detail: &str| problem(StatusCode::BAD_REQUEST, "Invalid request", detail);
    let (mut content, mut filename, mut kind, mut metadata) = (None, None, None, None);
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_owned();
                let part_name = field.file_name().map(str::to_owned);
                let part_type = field.content_type().map(str::to_owned);
                let Ok(bytes) = field.bytes().await else {
                    return bad("The multipart body could not be read.");
                };
                let text = || String::from_utf8_lossy(&bytes).into_owned();
                match name.as_str() {
                    "content" => content = Some((bytes.to_vec(), part_name, part_type)),
                    "filename" => filename = Some(text()),
                    "type" => kind = Some(text()),
                    "metadata" => match serde_json::from_slice::<Value>(&bytes) {
                        Ok(value) => metadata = Some(value),
                        Err(_) => return bad("metadata must be valid JSON."),
                    },
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(_) => return bad("The multipart body could not be read."),
        }
    }
    let Some((bytes, part_name, part_type)) = content else {
        return bad("content is required.");
    };
    let Some(name) = filename.or(part_name).filter(|n| !n.is_empty()) else {
        return bad("filename is required.");
    };
    if name.len() > 255 {
        return bad("filename must be at most 255 bytes.");
    }
    let content_type = kind.or(part_type).unwrap_or_else(|| "application/octet-stream".to_owned());
    let id = random_id();
    let created = Utc::now();
    let md5 = hex::encode(Md5::digest(&bytes));
    let object = json!({
        "id": id,
        "name": name,
        "content_type": content_type,
        "size": bytes.len(),
        "etag": md5,
        "checksums": {"sha256": hex::encode(Sha256::digest(&bytes)), "md5": md5},
        "metadata": metadata.unwrap_or_else(|| json!({})),
        "created_at": timestamp(created),
        "expires_at": timestamp(created + chrono::Duration::hours(FILE_LIFETIME_HOURS)),
        "urls": {"get": format!("{}/v1/files/{id}", shared.base)},
    });
    let file = UploadedFile { id, name, content_type, bytes };
    shared.lock().files.push(StoredFile { file, object: object.clone() });
    (StatusCode::CREATED, Json(object)).into_response()
}

/// Newest first, as Replicate lists them.
pub(super) async fn list(State(shared): State<Arc<Shared>>) -> Json<Value> {
    let results: Vec<Value> = shared.lock().files.iter().rev().map(|f| f.object.clone()).collect();
    Json(json!({"next": null, "previous": null, "results": results}))
}

pub(super) async fn get_one(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match shared.lock().file(&id) {
        Some(f) => Json(f.object.clone()).into_response(),
        None => not_found_detail("File not found"),
    }
}

pub(super) async fn delete(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let mut inner = shared.lock();
    let before = inner.files.len();
    inner.files.retain(|f| f.file.id != id);
    if inner.files.len() == before {
        return not_found_detail("File not found");
    }
    StatusCode::NO_CONTENT.into_response()
}

/// The bytes; Replicate checks `owner`, `expiry` and `signature` here, the
/// fake serves whoever asks.
pub(super) async fn download(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match shared.lock().file(&id) {
        Some(f) => {
            ([(header::CONTENT_TYPE, f.file.content_type.clone())], f.file.bytes.clone()).into_response()
        }
        None => not_found_detail("File not found"),
    }
}
