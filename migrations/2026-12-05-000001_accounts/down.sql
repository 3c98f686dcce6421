ALTER TABLE generations DROP COLUMN deleted_at;
DROP TABLE mails;
DROP TABLE email_tokens;
DROP TABLE api_keys;
DROP TABLE refresh_tokens;
DROP TABLE sessions;
ALTER TABLE users DROP COLUMN deleted_at, DROP COLUMN email_verified_at;
