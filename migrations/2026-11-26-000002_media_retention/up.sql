-- When a generation's stored media were deleted by the retention policy
-- (MAGE_MEDIA_RETENTION_DAYS); the row and its history stay.
ALTER TABLE generations ADD COLUMN media_expired_at TIMESTAMPTZ;
CREATE INDEX generations_retention_idx ON generations (finished_at)
    WHERE media_expired_at IS NULL AND output IS NOT NULL;
