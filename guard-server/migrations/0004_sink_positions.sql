-- Each audit sink's position: the seq of the last audit row its receiver acknowledged. A sink
-- resumes after it (at-least-once), after a restart too.
CREATE TABLE IF NOT EXISTS sink_positions (name TEXT PRIMARY KEY, seq BIGINT NOT NULL);
