//! What ingest stored for a READY asset (storage keys), kept as
//! `assets.output` (JSONB).

use diesel::deserialize::{FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{Output as SqlOutput, ToSql};
use diesel::sql_types::Jsonb;
use serde::{Deserialize, Serialize};
use std::io::Write;

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

impl ToSql<Jsonb, Pg> for AssetFiles {
    fn to_sql<'b>(&'b self, out: &mut SqlOutput<'b, '_, Pg>) -> diesel::serialize::Result {
        // JSONB's binary form: a version byte, then the text.
        out.write_all(&[1])?;
        serde_json::to_writer(out, self)?;
        Ok(diesel::serialize::IsNull::No)
    }
}

impl FromSql<Jsonb, Pg> for AssetFiles {
    fn from_sql(bytes: PgValue<'_>) -> diesel::deserialize::Result<Self> {
        let value = <serde_json::Value as FromSql<Jsonb, Pg>>::from_sql(bytes)?;
        Ok(serde_json::from_value(value)?)
    }
}
