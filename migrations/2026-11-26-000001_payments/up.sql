-- Payments: Checkout orders for packs (mode payment) and plans (mode
-- subscription), and the subscriptions that renew plan credits.

-- Plans sell monthly credits (`credits`) at a Stripe recurring price.
ALTER TABLE products ADD CONSTRAINT products_plan_has_price
    CHECK (kind = 'pack' OR stripe_price_id IS NOT NULL);
CREATE UNIQUE INDEX products_stripe_price_idx ON products (stripe_price_id) WHERE stripe_price_id IS NOT NULL;
INSERT INTO products (id, kind, name, credits, price_cents, currency, stripe_price_id, sort_order) VALUES
    ('basic', 'plan', 'Basic plan (monthly)', 1000, 1000, 'usd', 'price_mage_basic_monthly', 10),
    ('pro', 'plan', 'Pro plan (monthly)', 5000, 4000, 'usd', 'price_mage_pro_monthly', 11);

ALTER TABLE orders ADD COLUMN mode TEXT NOT NULL DEFAULT 'payment' CHECK (mode IN ('payment', 'subscription'));
ALTER TABLE orders ADD COLUMN stripe_customer_id TEXT;
-- Credits taken back by refunds and disputes, so a later refund or dispute
-- takes back only what is left.
ALTER TABLE orders ADD COLUMN credits_clawed_back BIGINT NOT NULL DEFAULT 0 CHECK (credits_clawed_back >= 0);
ALTER TABLE orders ADD COLUMN disputed_credits BIGINT NOT NULL DEFAULT 0 CHECK (disputed_credits >= 0);

-- One row per Stripe subscription: whose it is, which plan, and the grant of
-- the current period (expired on renewal, replaced on a plan change).
CREATE TABLE subscriptions (
    id                 TEXT PRIMARY KEY,
    user_id            UUID NOT NULL REFERENCES users (id),
    order_id           UUID REFERENCES orders (id),
    product_id         TEXT NOT NULL REFERENCES products (id),
    status             TEXT NOT NULL DEFAULT 'active',
    current_period_end TIMESTAMPTZ,
    grant_id           UUID REFERENCES credit_grants (id),
    canceled_at        TIMESTAMPTZ,
    -- `created` of the newest subscription event applied: an older one
    -- arriving late must not undo a newer plan change.
    event_at           TIMESTAMPTZ,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_user_idx ON subscriptions (user_id);

ALTER TABLE stripe_events ADD COLUMN user_id UUID REFERENCES users (id);
