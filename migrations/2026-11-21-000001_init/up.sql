-- Mage's data model. Enumerations are TEXT with CHECK constraints rather than
-- PostgreSQL enums: adding a value later is a one-line constraint change that
-- needs no type rewrite, and diesel maps them without custom SQL types.

CREATE TABLE users (
    id            UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    email         TEXT NOT NULL CHECK (email = lower(email) AND length(email) <= 254),
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Emails are stored lower-cased (the CHECK above), so a plain unique index is
-- case-insensitive uniqueness, and lookups by email use it.
CREATE UNIQUE INDEX users_email_key ON users (email);

-- One row per user: the cached balance and held amounts, and the row that
-- serialises every change of them (SELECT ... FOR UPDATE).
CREATE TABLE credit_accounts (
    user_id    UUID PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    balance    BIGINT NOT NULL DEFAULT 0,
    held       BIGINT NOT NULL DEFAULT 0 CHECK (held >= 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE products (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL DEFAULT 'pack' CHECK (kind IN ('pack', 'plan')),
    name            TEXT NOT NULL,
    credits         BIGINT NOT NULL CHECK (credits > 0),
    price_cents     BIGINT NOT NULL CHECK (price_cents >= 0),
    currency        TEXT NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    stripe_price_id TEXT,
    active          BOOLEAN NOT NULL DEFAULT TRUE,
    sort_order      INTEGER NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id                         UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id                    UUID NOT NULL REFERENCES users (id),
    status                     TEXT NOT NULL DEFAULT 'pending' CHECK (status IN
                                 ('pending', 'paid', 'failed', 'canceled', 'refunded',
                                  'partially_refunded', 'disputed')),
    total_cents                BIGINT NOT NULL CHECK (total_cents >= 0),
    currency                   TEXT NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    credits                    BIGINT NOT NULL CHECK (credits >= 0),
    refunded_cents             BIGINT NOT NULL DEFAULT 0 CHECK (refunded_cents >= 0),
    stripe_checkout_session_id TEXT UNIQUE,
    stripe_payment_intent_id   TEXT,
    stripe_subscription_id     TEXT,
    checkout_url               TEXT,
    failure_reason             TEXT,
    created_at                 TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at                 TIMESTAMPTZ NOT NULL DEFAULT now(),
    paid_at                    TIMESTAMPTZ
);
CREATE INDEX orders_user_created_idx ON orders (user_id, created_at DESC, id DESC);
CREATE INDEX orders_payment_intent_idx ON orders (stripe_payment_intent_id);
CREATE INDEX orders_subscription_idx ON orders (stripe_subscription_id);

-- Items copy the product's price and credits at the moment of the order, so a
-- later price change never alters what a customer was charged or is owed.
CREATE TABLE order_items (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    order_id         UUID NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    product_id       TEXT NOT NULL REFERENCES products (id),
    product_name     TEXT NOT NULL,
    quantity         INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_cents BIGINT NOT NULL CHECK (unit_price_cents >= 0),
    unit_credits     BIGINT NOT NULL CHECK (unit_credits >= 0),
    currency         TEXT NOT NULL
);
CREATE INDEX order_items_order_idx ON order_items (order_id);

CREATE TABLE stripe_events (
    id           TEXT PRIMARY KEY,
    type         TEXT NOT NULL,
    livemode     BOOLEAN NOT NULL DEFAULT FALSE,
    payload      JSONB NOT NULL,
    status       TEXT NOT NULL DEFAULT 'received' CHECK (status IN
                   ('received', 'processed', 'ignored', 'failed')),
    order_id     UUID REFERENCES orders (id),
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    processed_at TIMESTAMPTZ,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT
);
CREATE INDEX stripe_events_order_idx ON stripe_events (order_id);
CREATE INDEX stripe_events_unprocessed_idx ON stripe_events (received_at) WHERE processed_at IS NULL;

CREATE TABLE generations (
    id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id          UUID NOT NULL REFERENCES users (id),
    model            TEXT NOT NULL,
    prompt           TEXT NOT NULL,
    negative_prompt  TEXT,
    resolution       TEXT NOT NULL,
    duration_seconds INTEGER,
    seed             BIGINT,
    status           TEXT NOT NULL DEFAULT 'queued' CHECK (status IN
                       ('queued', 'rendering', 'transcoding', 'succeeded', 'failed', 'canceled')),
    progress         INTEGER NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    stage            TEXT,
    priority         INTEGER NOT NULL DEFAULT 0,
    cost             BIGINT NOT NULL CHECK (cost >= 0),
    idempotency_key  TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    backend          TEXT,
    output           JSONB,
    error            TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    queued_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    heartbeat_at     TIMESTAMPTZ
);
CREATE INDEX generations_queue_idx ON generations (status, queued_at, id);
CREATE INDEX generations_user_created_idx ON generations (user_id, created_at DESC, id DESC);
CREATE UNIQUE INDEX generations_idempotency_key ON generations (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Buckets of credits. Spending draws from the bucket that expires first.
-- `remaining` may go below zero only through a clawback that found nothing
-- left to take back: the debt then sits on the clawed-back purchase, so the
-- sum of remaining always equals the account balance.
CREATE TABLE credit_grants (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         UUID NOT NULL REFERENCES credit_accounts (user_id) ON DELETE CASCADE,
    source          TEXT NOT NULL CHECK (source IN ('signup', 'purchase', 'subscription', 'admin', 'promo')),
    amount          BIGINT NOT NULL CHECK (amount > 0),
    remaining       BIGINT NOT NULL CHECK (remaining <= amount),
    expires_at      TIMESTAMPTZ,
    expired_at      TIMESTAMPTZ,
    order_id        UUID REFERENCES orders (id),
    stripe_event_id TEXT,
    memo            TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX credit_grants_spend_idx ON credit_grants (user_id, expires_at NULLS LAST, created_at)
    WHERE remaining > 0 AND expired_at IS NULL;
CREATE INDEX credit_grants_expiry_idx ON credit_grants (expires_at)
    WHERE expired_at IS NULL AND expires_at IS NOT NULL;
CREATE INDEX credit_grants_order_idx ON credit_grants (order_id);

-- A hold reserves credits for one piece of work (a generation run) until it is
-- captured (charged) or released. Closing is a guarded status change, so a
-- hold is captured or released once, never both.
CREATE TABLE credit_holds (
    id            UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id       UUID NOT NULL REFERENCES credit_accounts (user_id) ON DELETE CASCADE,
    generation_id UUID REFERENCES generations (id),
    amount        BIGINT NOT NULL CHECK (amount > 0),
    status        TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'captured', 'released')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    closed_at     TIMESTAMPTZ
);
CREATE INDEX credit_holds_open_idx ON credit_holds (user_id) WHERE status = 'open';
CREATE INDEX credit_holds_generation_idx ON credit_holds (generation_id);

-- The append-only ledger: one row for every change of a balance or a hold.
-- `amount` is the change of the balance, `held_delta` the change of the held
-- amount; the unique idempotency key makes every change exactly-once.
CREATE TABLE credit_entries (
    id              BIGSERIAL PRIMARY KEY,
    user_id         UUID NOT NULL REFERENCES credit_accounts (user_id) ON DELETE CASCADE,
    kind            TEXT NOT NULL CHECK (kind IN
                      ('grant', 'purchase', 'hold', 'capture', 'release', 'clawback', 'expire', 'adjustment')),
    amount          BIGINT NOT NULL,
    held_delta      BIGINT NOT NULL DEFAULT 0,
    balance_after   BIGINT NOT NULL,
    held_after      BIGINT NOT NULL,
    idempotency_key TEXT NOT NULL,
    grant_id        UUID REFERENCES credit_grants (id),
    hold_id         UUID REFERENCES credit_holds (id),
    order_id        UUID REFERENCES orders (id),
    generation_id   UUID REFERENCES generations (id),
    stripe_event_id TEXT,
    memo            TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- Keys are per account: one user's key can never answer for another's.
CREATE UNIQUE INDEX credit_entries_idempotency_key ON credit_entries (user_id, idempotency_key);
CREATE INDEX credit_entries_user_idx ON credit_entries (user_id, id DESC);
CREATE INDEX credit_entries_generation_idx ON credit_entries (generation_id) WHERE generation_id IS NOT NULL;
CREATE INDEX credit_entries_order_idx ON credit_entries (order_id) WHERE order_id IS NOT NULL;
CREATE INDEX credit_entries_created_idx ON credit_entries (created_at);

-- One row per day (in the stats time zone); recomputing a day is an upsert.
CREATE TABLE daily_stats (
    day                    DATE PRIMARY KEY,
    new_users              BIGINT NOT NULL DEFAULT 0,
    active_users           BIGINT NOT NULL DEFAULT 0,
    orders_paid            BIGINT NOT NULL DEFAULT 0,
    revenue                JSONB NOT NULL DEFAULT '{}'::jsonb,
    credits_purchased      BIGINT NOT NULL DEFAULT 0,
    credits_granted        BIGINT NOT NULL DEFAULT 0,
    credits_captured       BIGINT NOT NULL DEFAULT 0,
    credits_released       BIGINT NOT NULL DEFAULT 0,
    credits_clawed_back    BIGINT NOT NULL DEFAULT 0,
    credits_expired        BIGINT NOT NULL DEFAULT 0,
    generations_created    BIGINT NOT NULL DEFAULT 0,
    generations_succeeded  BIGINT NOT NULL DEFAULT 0,
    generations_failed     BIGINT NOT NULL DEFAULT 0,
    generations_canceled   BIGINT NOT NULL DEFAULT 0,
    queue_wait_p50_seconds DOUBLE PRECISION,
    queue_wait_p95_seconds DOUBLE PRECISION,
    render_p50_seconds     DOUBLE PRECISION,
    render_p95_seconds     DOUBLE PRECISION,
    render_seconds_total   DOUBLE PRECISION NOT NULL DEFAULT 0,
    by_model               JSONB NOT NULL DEFAULT '[]'::jsonb,
    time_zone              TEXT NOT NULL DEFAULT 'UTC',
    computed_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);

INSERT INTO products (id, kind, name, credits, price_cents, currency, sort_order) VALUES
    ('starter', 'pack', 'Starter pack', 100, 500, 'usd', 1),
    ('creator', 'pack', 'Creator pack', 500, 2000, 'usd', 2),
    ('studio', 'pack', 'Studio pack', 2000, 6000, 'usd', 3);
