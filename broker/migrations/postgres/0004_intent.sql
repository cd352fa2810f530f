-- embark broker schema on PostgreSQL: capability routing and session stats
-- (issue 8), as SQLite's 0006_intent.
--
-- A task keeps the optional parts of its execution intent (isolation, labels)
-- and Pi's session stats; a runner keeps what it advertised at enrollment:
-- the whole advertisement as JSON (for GET /v1/runners and the submit check)
-- and, for the claim's filter, one row per allowed provider, model and
-- isolation mode of each profile, and one per label.

ALTER TABLE tasks ADD COLUMN isolation TEXT CHECK (isolation IN ('process', 'bwrap', 'docker'));
-- A JSON array of label strings (text, read with jsonb_array_elements_text).
ALTER TABLE tasks ADD COLUMN labels TEXT NOT NULL DEFAULT '[]';
-- The latest session_stats event's payload (JSON), or NULL.
ALTER TABLE tasks ADD COLUMN session_stats TEXT;

-- NULL: the runner advertised nothing (older than routing) and serves any intent.
ALTER TABLE runners ADD COLUMN capabilities TEXT;

-- part 'provider' and 'model': pattern is a LIKE pattern made from the glob
-- ('*' → '%', '?' → '_', a literal '_' escaped as '\_'); part 'isolation':
-- pattern is a mode name.
CREATE TABLE runner_allows (
    runner_id TEXT NOT NULL REFERENCES runners (id),
    profile   TEXT NOT NULL,
    part      TEXT NOT NULL CHECK (part IN ('provider', 'model', 'isolation')),
    pattern   TEXT NOT NULL,
    PRIMARY KEY (runner_id, profile, part, pattern)
);

CREATE TABLE runner_labels (
    runner_id TEXT NOT NULL REFERENCES runners (id),
    label     TEXT NOT NULL,
    PRIMARY KEY (runner_id, label)
);
