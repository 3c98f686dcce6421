ALTER TABLE generations DROP COLUMN media_expired_at;
