-- Each model names the backend its renders run on; each backend has its
-- own render queue. Models that existed before rendered on whichever
-- backend the deployment ran: they start on the synthetic one, and an
-- operator moves them with `updateModel`.
ALTER TABLE render_models
    ADD COLUMN backend TEXT NOT NULL DEFAULT 'synthetic'
        CHECK (backend IN ('synthetic', 'comfyui', 'replicate'));
ALTER TABLE render_models ALTER COLUMN backend DROP DEFAULT;
ALTER TABLE render_models
    ADD CONSTRAINT render_models_id_format CHECK (id ~ '^[a-z0-9]+(-[a-z0-9]+)*$') NOT VALID;

-- A generation's backend is fixed when it is created (its render job waits
-- in that backend's queue), so moving a model never strands queued work.
UPDATE generations g SET backend = COALESCE(
    g.backend,
    (SELECT m.backend FROM render_models m WHERE m.id = g.model),
    'synthetic');
ALTER TABLE generations ALTER COLUMN backend SET NOT NULL;
ALTER TABLE generations
    ADD CONSTRAINT generations_backend_check CHECK (backend IN ('synthetic', 'comfyui', 'replicate'));

-- Queue positions count within a backend's queue.
DROP INDEX generations_queue_idx;
CREATE INDEX generations_queue_idx ON generations (status, backend, queued_at, id);

-- Replicate's signed webhooks, by their `webhook-id`: a repeat is seen and
-- does nothing. Pruned by the sweeper.
CREATE TABLE replicate_webhooks (
    id TEXT PRIMARY KEY,
    prediction_id TEXT NOT NULL,
    generation_id UUID,
    status TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX replicate_webhooks_received_idx ON replicate_webhooks (received_at);
