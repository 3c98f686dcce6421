-- Accounts as apps need them: sessions with rotating refresh tokens, API
-- keys, single-use email links, an outbox of mails, and deletion.

ALTER TABLE users
    ADD COLUMN email_verified_at TIMESTAMPTZ,
    -- Set when the account is deleted: the email and password hash are
    -- scrubbed, orders and the ledger stay tied to the row.
    ADD COLUMN deleted_at TIMESTAMPTZ;

-- A signed-in device. Access tokens name it (`sid`); revoking it stops
-- them on every instance through `revoked_at` (polled, indexed below).
CREATE TABLE sessions (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL REFERENCES users (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    user_agent TEXT,
    ip_address TEXT,
    revoked_at TIMESTAMPTZ,
    revoked_reason TEXT
);
CREATE INDEX sessions_user_active ON sessions (user_id, created_at) WHERE revoked_at IS NULL;
CREATE INDEX sessions_revoked_at ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;

-- Every refresh token a session was given, by SHA-256: a used one shown
-- again is theft and ends the session.
CREATE TABLE refresh_tokens (
    token_hash BYTEA PRIMARY KEY,
    session_id UUID NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    used_at TIMESTAMPTZ
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE api_keys (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL REFERENCES users (id),
    name TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    -- The key's first characters, shown in lists and used to find it.
    prefix TEXT NOT NULL UNIQUE,
    secret_hash BYTEA NOT NULL,
    scopes TEXT[] NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX api_keys_user ON api_keys (user_id, created_at);
CREATE INDEX api_keys_revoked_at ON api_keys (revoked_at) WHERE revoked_at IS NOT NULL;

-- Single-use links sent by mail (password reset, email verification), by
-- SHA-256 of the token.
CREATE TABLE email_tokens (
    token_hash BYTEA PRIMARY KEY,
    user_id UUID NOT NULL REFERENCES users (id),
    purpose TEXT NOT NULL CHECK (purpose IN ('verify_email', 'reset_password')),
    -- The address the link went to: a link sent to an old address verifies
    -- nothing.
    email TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL,
    used_at TIMESTAMPTZ
);
CREATE INDEX email_tokens_user ON email_tokens (user_id, purpose);

-- The mail outbox: written in the transaction that decides to send, sent by
-- the `mail` queue, picked up by the sweeper when an enqueue was lost.
CREATE TABLE mails (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID REFERENCES users (id),
    to_address TEXT NOT NULL,
    subject TEXT NOT NULL,
    -- Cleared once sent over SMTP: a sent link lives only in the mailbox.
    body_text TEXT,
    idempotency_key TEXT UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at TIMESTAMPTZ,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX mails_unsent ON mails (created_at) WHERE sent_at IS NULL;
CREATE INDEX mails_recent ON mails (created_at DESC);

-- A deleted generation: its media are gone, its ledger entries stay.
ALTER TABLE generations ADD COLUMN deleted_at TIMESTAMPTZ;
