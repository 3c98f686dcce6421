DROP TABLE replicate_webhooks;
DROP INDEX generations_queue_idx;
CREATE INDEX generations_queue_idx ON generations (status, queued_at, id);
ALTER TABLE generations DROP CONSTRAINT generations_backend_check;
ALTER TABLE generations ALTER COLUMN backend DROP NOT NULL;
ALTER TABLE render_models DROP CONSTRAINT render_models_id_format;
ALTER TABLE render_models DROP COLUMN backend;
