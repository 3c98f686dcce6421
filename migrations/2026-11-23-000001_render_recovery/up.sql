-- Where a generation's render runs on its backend (a ComfyUI URL and the
-- prompt_id Mage chose), written before the render is submitted: a worker
-- that takes over after a crash, a WebSocket drop or a retry attaches to
-- that render (or collects its result) instead of rendering twice.
ALTER TABLE generations ADD COLUMN backend_url TEXT;
ALTER TABLE generations ADD COLUMN backend_job_id TEXT;

-- Per-model overrides of MAGE_RENDER_TIMEOUT_SECONDS and MAGE_JOB_ATTEMPTS:
-- a long video model may legitimately render for hours.
ALTER TABLE render_models ADD COLUMN render_timeout_seconds INTEGER CHECK (render_timeout_seconds > 0);
ALTER TABLE render_models ADD COLUMN max_attempts INTEGER CHECK (max_attempts BETWEEN 1 AND 20);

-- Workflows are named for what they do, so a ComfyUI template of the same
-- name (workflows/comfyui/<workflow>.json) serves the model on GPU backends.
UPDATE render_models SET workflow = 'text-to-video' WHERE workflow = 'synthetic-video';
UPDATE render_models SET workflow = 'text-to-image' WHERE workflow = 'synthetic-image';

-- The sweeper looks for RENDERING / TRANSCODING generations by heartbeat.
CREATE INDEX generations_running_heartbeat_idx ON generations (heartbeat_at)
    WHERE status IN ('rendering', 'transcoding');
