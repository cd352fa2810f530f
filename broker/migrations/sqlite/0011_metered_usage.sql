-- embark broker schema: metered usage (decision D25).
-- The latest metered_usage event's payload (JSON), or NULL: the provider's
-- usage as the runner's credential proxy counted it.
ALTER TABLE tasks ADD COLUMN metered_usage TEXT;
