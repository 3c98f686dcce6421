-- The catalogue of what can be generated, with prices. Kept in the database so
-- operators can change prices and add models without a release.
CREATE TABLE render_models (
    id                       TEXT PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    kind                     TEXT NOT NULL CHECK (kind IN ('image', 'video')),
    name                     TEXT NOT NULL,
    -- The backend's workflow (a ComfyUI template name, or a synthetic one).
    workflow                 TEXT NOT NULL,
    max_duration_seconds     INTEGER CHECK (max_duration_seconds > 0),
    default_duration_seconds INTEGER CHECK (default_duration_seconds > 0),
    fps                      INTEGER NOT NULL DEFAULT 24 CHECK (fps BETWEEN 1 AND 120),
    active                   BOOLEAN NOT NULL DEFAULT true,
    sort_order               INTEGER NOT NULL DEFAULT 0,
    created_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((kind = 'video') = (max_duration_seconds IS NOT NULL)),
    CHECK (default_duration_seconds IS NULL OR default_duration_seconds <= max_duration_seconds)
);

-- One row per resolution a model offers. Price = credits + credits_per_second
-- * duration (video); an image model has credits_per_second = 0.
CREATE TABLE render_model_prices (
    model_id           TEXT NOT NULL REFERENCES render_models (id) ON DELETE CASCADE,
    resolution         TEXT NOT NULL CHECK (resolution IN ('480p', '720p', '1080p')),
    credits            BIGINT NOT NULL DEFAULT 0 CHECK (credits >= 0),
    credits_per_second BIGINT NOT NULL DEFAULT 0 CHECK (credits_per_second >= 0),
    PRIMARY KEY (model_id, resolution),
    CHECK (credits + credits_per_second > 0)
);

INSERT INTO render_models (id, kind, name, workflow, max_duration_seconds, default_duration_seconds, sort_order) VALUES
    ('synth-video', 'video', 'Synthetic video', 'synthetic-video', 10, 5, 10),
    ('synth-image', 'image', 'Synthetic image', 'synthetic-image', NULL, NULL, 20);

-- 10 credits per 5 s at 480p, 20 at 720p, 40 at 1080p; images 1 / 2 / 4.
INSERT INTO render_model_prices (model_id, resolution, credits, credits_per_second) VALUES
    ('synth-video', '480p', 0, 2),
    ('synth-video', '720p', 0, 4),
    ('synth-video', '1080p', 0, 8),
    ('synth-image', '480p', 1, 0),
    ('synth-image', '720p', 2, 0),
    ('synth-image', '1080p', 4, 0);

-- The generation records its model's kind and workflow at creation, and a
-- cancel request, so a worker that missed the Redis signal still stops.
ALTER TABLE generations ADD COLUMN kind TEXT NOT NULL DEFAULT 'video' CHECK (kind IN ('image', 'video'));
ALTER TABLE generations ALTER COLUMN kind DROP DEFAULT;
ALTER TABLE generations ADD COLUMN cancel_requested_at TIMESTAMPTZ;
ALTER TABLE generations ADD COLUMN worker TEXT;
