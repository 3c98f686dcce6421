-- Webhooks out: endpoints users register, the events their changes raise
-- (an outbox written in the transaction of the change), one delivery per
-- event and endpoint, and every attempt of it (the delivery log).
CREATE TABLE webhook_endpoints (
    id UUID PRIMARY KEY,
    user_id UUID NOT NULL REFERENCES users (id),
    url TEXT NOT NULL,
    description TEXT,
    -- Event type names (`generation.succeeded`, ...).
    events TEXT[] NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT true,
    disabled_reason TEXT,
    -- `whsec_` + base64: kept in the clear because every delivery signs
    -- with it (as Svix and Stripe do).
    secret TEXT NOT NULL,
    -- After a rotation the old secret signs beside the new one until then.
    previous_secret TEXT,
    previous_secret_expires_at TIMESTAMPTZ,
    -- The first failed attempt since the last success: five days of
    -- failures disable the endpoint.
    failing_since TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_user_idx ON webhook_endpoints (user_id, created_at);

CREATE TABLE webhook_events (
    -- UUID v7: the `webhook-id` of every delivery of it.
    id UUID PRIMARY KEY,
    user_id UUID NOT NULL,
    event_type TEXT NOT NULL,
    -- The object as the transaction saw it (the row); rendered as the API
    -- shows it into `body` when fanned out, so every attempt sends the same
    -- bytes.
    data JSONB NOT NULL,
    body TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    fanned_out_at TIMESTAMPTZ
);
CREATE INDEX webhook_events_unfanned_idx ON webhook_events (created_at) WHERE fanned_out_at IS NULL;
CREATE INDEX webhook_events_created_idx ON webhook_events (created_at);

CREATE TABLE webhook_deliveries (
    id UUID PRIMARY KEY,
    event_id UUID NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    endpoint_id UUID NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts INT NOT NULL DEFAULT 0,
    -- A redelivery asked for by hand: one attempt, no schedule.
    manual BOOLEAN NOT NULL DEFAULT false,
    next_attempt_at TIMESTAMPTZ,
    -- An attempt in flight holds the delivery until then (a crashed
    -- worker's lease runs out and the sweeper sends it again).
    locked_until TIMESTAMPTZ,
    last_status_code INT,
    last_error TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_endpoint_idx ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';

CREATE TABLE webhook_attempts (
    delivery_id UUID NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt INT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL,
    duration_ms INT NOT NULL,
    status_code INT,
    error TEXT,
    -- The first 4 KiB of what the endpoint answered.
    response_body TEXT,
    PRIMARY KEY (delivery_id, attempt)
);

-- The outbox is written by triggers, in the transaction of the change it
-- reports, whichever path made the change (a worker, the API, the sweeper,
-- an account deletion): an event can neither be lost after its change
-- commits nor exist without it. Only users with an enabled endpoint
-- listening for the type get a row. NOTIFY reaches the workers' listener
-- at commit; the sweeper fans out whatever a listener missed.
CREATE FUNCTION mage_webhook_event(p_user UUID, p_type TEXT, p_data JSONB) RETURNS VOID
LANGUAGE plpgsql AS $$
DECLARE
    v_id UUID;
BEGIN
    IF EXISTS (SELECT 1 FROM webhook_endpoints
               WHERE user_id = p_user AND enabled AND p_type = ANY (events)) THEN
        INSERT INTO webhook_events (id, user_id, event_type, data)
        VALUES (gen_random_uuid(), p_user, p_type, p_data)
        RETURNING id INTO v_id;
        PERFORM pg_notify('mage_webhook_events', v_id::text);
    END IF;
END $$;

CREATE FUNCTION mage_webhook_generation() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
BEGIN
    -- Started once per run: a retry resets `attempts`, a takeover or a
    -- requeue after a failed attempt does not.
    IF NEW.status = 'rendering' AND OLD.status = 'queued' AND NEW.attempts = 1 THEN
        PERFORM mage_webhook_event(NEW.user_id, 'generation.started', to_jsonb(NEW));
    ELSIF NEW.status IN ('succeeded', 'failed', 'canceled') THEN
        PERFORM mage_webhook_event(NEW.user_id, 'generation.' || NEW.status, to_jsonb(NEW));
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER generations_webhooks AFTER UPDATE OF status ON generations
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION mage_webhook_generation();

CREATE FUNCTION mage_webhook_asset() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM mage_webhook_event(NEW.user_id, 'asset.' || NEW.status, to_jsonb(NEW));
    RETURN NULL;
END $$;
CREATE TRIGGER assets_webhooks AFTER UPDATE OF status ON assets
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('ready', 'rejected'))
    EXECUTE FUNCTION mage_webhook_asset();

CREATE FUNCTION mage_webhook_order() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM mage_webhook_event(NEW.user_id, 'order.paid', to_jsonb(NEW));
    RETURN NULL;
END $$;
CREATE TRIGGER orders_webhooks AFTER UPDATE OF status ON orders
    FOR EACH ROW WHEN (OLD.status = 'pending' AND NEW.status = 'paid')
    EXECUTE FUNCTION mage_webhook_order();

-- CREDITS_LOW: once, when the spendable balance (held credits excluded)
-- crosses below the price of the cheapest generation on offer (an active
-- model at its cheapest resolution, one second of video); it fires again
-- only after the balance has risen to that price or above.
CREATE FUNCTION mage_webhook_credits() RETURNS TRIGGER
LANGUAGE plpgsql AS $$
DECLARE
    v_floor BIGINT;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints
                   WHERE user_id = NEW.user_id AND enabled AND 'credits.low' = ANY (events)) THEN
        RETURN NULL;
    END IF;
    SELECT min(p.credits + p.credits_per_second * CASE WHEN m.kind = 'video' THEN 1 ELSE 0 END)
      INTO v_floor
      FROM render_model_prices p JOIN render_models m ON m.id = p.model_id
     WHERE m.active;
    IF v_floor IS NOT NULL
       AND OLD.balance - OLD.held >= v_floor
       AND NEW.balance - NEW.held < v_floor THEN
        PERFORM mage_webhook_event(NEW.user_id, 'credits.low', jsonb_build_object(
            'balance', NEW.balance - NEW.held, 'held', NEW.held, 'threshold', v_floor));
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER credit_accounts_webhooks AFTER UPDATE OF balance, held ON credit_accounts
    FOR EACH ROW WHEN (NEW.balance - NEW.held < OLD.balance - OLD.held)
    EXECUTE FUNCTION mage_webhook_credits();
