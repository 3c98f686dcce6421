DROP INDEX generations_running_heartbeat_idx;
UPDATE render_models SET workflow = 'synthetic-image' WHERE workflow = 'text-to-image';
UPDATE render_models SET workflow = 'synthetic-video' WHERE workflow = 'text-to-video';
ALTER TABLE render_models DROP COLUMN max_attempts;
ALTER TABLE render_models DROP COLUMN render_timeout_seconds;
ALTER TABLE generations DROP COLUMN backend_job_id;
ALTER TABLE generations DROP COLUMN backend_url;
