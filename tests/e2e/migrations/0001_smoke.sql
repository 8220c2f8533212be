-- A table for the harness smoke test: proves sqlx migrations run against the
-- test PostgreSQL server.
CREATE TABLE smoke_notes (
    id BIGSERIAL PRIMARY KEY,
    body TEXT NOT NULL
);
