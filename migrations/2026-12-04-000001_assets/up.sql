-- Media users bring in: staged uploads, checked and cleaned by the ingest
-- job before anything may use them.
CREATE TABLE assets (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id          UUID NOT NULL REFERENCES users (id),
    -- Declared by the upload's content type; ingest refuses content of
    -- another kind.
    kind             TEXT NOT NULL CHECK (kind IN ('image', 'video')),
    status           TEXT NOT NULL DEFAULT 'awaiting_upload' CHECK (status IN
                       ('awaiting_upload', 'processing', 'ready', 'rejected')),
    filename         TEXT NOT NULL,
    -- As declared until ingest; then the type the content's bytes show.
    content_type     TEXT NOT NULL,
    byte_size        BIGINT NOT NULL CHECK (byte_size > 0),
    width            INTEGER,
    height           INTEGER,
    duration_seconds DOUBLE PRECISION,
    error            TEXT,
    -- What ingest stored (storage keys): see domain/src/assets.rs.
    output           JSONB,
    upload_expires_at TIMESTAMPTZ NOT NULL,
    -- Deleted by its owner: hidden at once; the bytes go when no unfinished
    -- generation uses it any more.
    deleted_at       TIMESTAMPTZ,
    -- The sweeper removed the stored bytes (expiry, rejection, deletion or
    -- retention).
    purged_at        TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    ready_at         TIMESTAMPTZ
);
CREATE INDEX assets_user_created_idx ON assets (user_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX assets_awaiting_idx ON assets (upload_expires_at) WHERE status = 'awaiting_upload';
CREATE INDEX assets_purge_idx ON assets (updated_at) WHERE purged_at IS NULL;

-- Bytes a user holds in storage (declared sizes of assets not purged),
-- raised by a conditional UPDATE so concurrent uploads cannot pass the quota.
ALTER TABLE users ADD COLUMN storage_used_bytes BIGINT NOT NULL DEFAULT 0 CHECK (storage_used_bytes >= 0);

-- The user's assets a generation renders from, in the model's order.
CREATE TABLE generation_inputs (
    generation_id UUID NOT NULL REFERENCES generations (id) ON DELETE CASCADE,
    position      SMALLINT NOT NULL CHECK (position >= 0),
    asset_id      UUID NOT NULL REFERENCES assets (id),
    PRIMARY KEY (generation_id, position)
);
CREATE INDEX generation_inputs_asset_idx ON generation_inputs (asset_id);

-- What a model takes, in order (e.g. {image}); empty for text-to-media.
ALTER TABLE render_models ADD COLUMN inputs TEXT[] NOT NULL DEFAULT '{}'
    CHECK (inputs <@ ARRAY['image', 'video']::TEXT[]);

INSERT INTO render_models (id, kind, name, workflow, max_duration_seconds, default_duration_seconds, sort_order, inputs) VALUES
    ('synth-edit', 'image', 'Photo edit', 'image-edit', NULL, NULL, 30, '{image}'),
    ('synth-i2v', 'video', 'Image to video', 'image-to-video', 10, 5, 40, '{image}');

INSERT INTO render_model_prices (model_id, resolution, credits, credits_per_second) VALUES
    ('synth-edit', '480p', 2, 0),
    ('synth-edit', '720p', 3, 0),
    ('synth-edit', '1080p', 5, 0),
    ('synth-i2v', '480p', 0, 3),
    ('synth-i2v', '720p', 0, 5),
    ('synth-i2v', '1080p', 0, 10);
