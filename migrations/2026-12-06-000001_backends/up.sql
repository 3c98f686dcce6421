CREATE TABLE replicate_webhooks (
    id TEXT PRIMARY KEY,
    prediction_id TEXT NOT NULL,
    generation_id UUID,
    status TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX replicate_webhooks_received_idx ON replicate_webhooks (received_at);
