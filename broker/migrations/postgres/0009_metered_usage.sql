-- embark broker schema on PostgreSQL: metered usage (decision D25), as the
-- SQLite migration 0011_metered_usage.sql.
-- The latest metered_usage event's payload (JSON), or NULL.
ALTER TABLE tasks ADD COLUMN metered_usage TEXT;
