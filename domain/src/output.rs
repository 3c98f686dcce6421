//! What a SUCCEEDED generation produced: storage keys of its files and the
//! figures the API shows. Written by the transcode job, read by the API,
//! stored as `generations.output` (JSONB); a stored value of another shape
//! is a read error, not an empty output.

use diesel::deserialize::FromSqlRow;
use diesel::expression::AsExpression;
use diesel::sql_types::Jsonb;
use serde::{Deserialize, Serialize};

use crate::enums::MediaKind;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AsExpression, FromSqlRow)]
#[diesel(sql_type = Jsonb)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    pub kind: MediaKind,
    /// The HLS master playlist (videos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hls: Option<String>,
    /// The progressive MP4 (videos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<String>,
    /// The image (images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub poster: String,
    pub width: u32,
    pub height: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub renditions: Vec<Rendition>,
}

/// One rung of a video's HLS ladder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendition {
    /// `720p`; also the rung's directory under `hls/`.
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Peak bits per second, as the master playlist announces it.
    pub bandwidth: u64,
    /// The rung's media playlist.
    pub playlist: String,
}

/// A serde type stored as one JSONB column: written as JSONB's binary form
/// (a version byte, then the text), read through `serde_json::Value`, so a
/// stored value of another shape is a read error.
macro_rules! jsonb_column {
    ($t:ty) => {
        impl diesel::serialize::ToSql<diesel::sql_types::Jsonb, diesel::pg::Pg> for $t {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
            ) -> diesel::serialize::Result {
                use std::io::Write;
                out.write_all(&[1])?;
                serde_json::to_writer(out, self)?;
                Ok(diesel::serialize::IsNull::No)
            }
        }

        impl diesel::deserialize::FromSql<diesel::sql_types::Jsonb, diesel::pg::Pg> for $t {
            // Straight from the text, as diesel reads a `Value`: through a
            // `Value` first, this was a tenth of `generations(first: 20)`'s
            // CPU (bench/profile queries).
            fn from_sql(bytes: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
                match bytes.as_bytes().split_first() {
                    Some((1, json)) => Ok(serde_json::from_slice(json)?),
                    _ => Err("unsupported JSONB encoding version".into()),
                }
            }
        }
    };
}
pub(crate) use jsonb_column;

jsonb_column!(Output);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_transcode_job_wrote_before_it_was_typed() {
        let video = serde_json::json!({
            "kind": "video", "hls": "g/1/hls/master.m3u8", "video": "g/1/video.mp4", "poster": "g/1/poster.jpg",
            "width": 854, "height": 480, "durationSeconds": 5.0,
            "renditions": [{ "name": "480p", "width": 854, "height": 480, "bandwidth": 1200000,
                             "playlist": "g/1/hls/480p.m3u8" }],
        });
        let out: Output = serde_json::from_value(video.clone()).expect("video output");
        assert_eq!(out.kind, MediaKind::Video);
        assert_eq!(out.renditions[0].bandwidth, 1_200_000);
        assert_eq!(serde_json::to_value(&out).expect("json"), video);

        let image = serde_json::json!({
            "kind": "image", "image": "g/2/image.png", "poster": "g/2/poster.jpg", "width": 1024, "height": 1024,
        });
        let out: Output = serde_json::from_value(image.clone()).expect("image output");
        assert_eq!(out.hls, None);
        assert_eq!(serde_json::to_value(&out).expect("json"), image);
    }

    #[test]
    fn another_shape_is_an_error() {
        assert!(serde_json::from_value::<Output>(serde_json::json!({ "kind": "audio" })).is_err());
        assert!(
            serde_json::from_value::<Output>(serde_json::json!({ "kind": "video", "width": 1 })).is_err()
        );
    }
}
