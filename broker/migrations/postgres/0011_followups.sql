-- embark broker schema: follow-ups (D28).
--
-- tasks.parent: the task a follow-up continues (its result is the base, its
-- Pi session is resumed); NULL for a task that follows nothing. The index
-- serves the chain (a task's follow-ups) and the retention sweep, which
-- keeps a parent's artifacts while one of its follow-ups is not finished.
ALTER TABLE tasks ADD COLUMN parent TEXT;
CREATE INDEX tasks_by_parent ON tasks (parent) WHERE parent IS NOT NULL;
