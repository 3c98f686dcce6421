//! What ingest stored for a READY asset (storage keys), kept as
//! `assets.output` (JSONB).

use diesel::deserialize::FromSqlRow;
use diesel::expression::AsExpression;
use diesel::sql_types::Jsonb;
use serde::{Deserialize, Serialize};

use crate::output::Rendition;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AsExpression, FromSqlRow)]
#[diesel(sql_type = Jsonb)]
#[serde(rename_all = "camelCase")]
pub struct AssetFiles {
    /// The clean file: the re-encoded image, or the video's faststart MP4.
    pub original: String,
    pub thumbnail: String,
    /// Videos: a still of the first seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poster: Option<String>,
    /// Videos: the HLS master playlist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hls: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub renditions: Vec<Rendition>,
}

crate::output::jsonb_column!(AssetFiles);
