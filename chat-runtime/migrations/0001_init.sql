-- Chorus chat runtime schema, version 1.
--
-- Migrations are expand-then-contract: a release only adds tables, columns
-- (nullable or with defaults) and indexes; a later release removes what the
-- previous one stopped using. So the old and the new runtime can share this
-- database during a rollout (docs/runtime.md, "Migrations").

-- Identity of this database's history, part of every resume epoch. A logical
-- restore (pg_restore into a new database) changes the database oid, a
-- point-in-time recovery or failover changes the timeline; both change the
-- epoch, so clients reload instead of trusting sequence numbers that may
-- have been reused.
CREATE TABLE chat_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO chat_meta (key, value) VALUES ('instance', md5(random()::text || clock_timestamp()::text));

CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    -- argon2id PHC string; NULL for users of External auth.
    password_hash TEXT,
    -- the `sub` claim of External auth users.
    external_subject TEXT UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Logged-out tokens, until they would have expired anyway.
CREATE TABLE revoked_tokens (
    jti TEXT PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX revoked_tokens_expiry ON revoked_tokens (expires_at);

CREATE TABLE rooms (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('public', 'private', 'dm')),
    name TEXT NOT NULL,
    topic TEXT NOT NULL DEFAULT '',
    created_by BIGINT NOT NULL REFERENCES users (id),
    -- Sequence of the room's last event. Taken with `UPDATE ... RETURNING`
    -- in the event's own transaction: the row lock serializes writers, so
    -- commit order is seq order and a reader never skips a seq.
    last_seq BIGINT NOT NULL DEFAULT 0,
    -- "<low user id>:<high user id>" for DMs: one room per pair.
    dm_key TEXT UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE room_members (
    room_id BIGINT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES users (id),
    role TEXT NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'moderator', 'member')),
    last_read_seq BIGINT NOT NULL DEFAULT 0,
    joined_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_members_by_user ON room_members (user_id, room_id);

CREATE TABLE room_bans (
    room_id BIGINT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES users (id),
    banned_by BIGINT NOT NULL REFERENCES users (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, user_id)
);

-- Messages in their current state (edits applied, deletions tombstoned).
CREATE TABLE messages (
    room_id BIGINT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    sender_id BIGINT NOT NULL REFERENCES users (id),
    client_msg_id TEXT NOT NULL,
    body TEXT NOT NULL,
    thread_root_seq BIGINT,
    attachments JSONB NOT NULL DEFAULT '[]',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    edited_at TIMESTAMPTZ,
    deleted_at TIMESTAMPTZ,
    search TSVECTOR GENERATED ALWAYS AS (to_tsvector('simple', body)) STORED,
    PRIMARY KEY (room_id, seq),
    -- A retried send returns the original ack instead of a second message.
    UNIQUE (room_id, sender_id, client_msg_id)
);
CREATE INDEX messages_threads ON messages (room_id, thread_root_seq, seq) WHERE thread_root_seq IS NOT NULL;
CREATE INDEX messages_search ON messages USING GIN (search);
CREATE INDEX messages_created ON messages (created_at);

CREATE TABLE reactions (
    room_id BIGINT NOT NULL,
    message_seq BIGINT NOT NULL,
    user_id BIGINT NOT NULL REFERENCES users (id),
    emoji TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, message_seq, user_id, emoji),
    FOREIGN KEY (room_id, message_seq) REFERENCES messages (room_id, seq) ON DELETE CASCADE
);

-- The room's event log, replayed on resume: every message, edit, deletion,
-- reaction and membership change, each with its own seq.
CREATE TABLE room_events (
    room_id BIGINT NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    actor_id BIGINT NOT NULL,
    message_seq BIGINT,
    payload JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, seq)
);
CREATE INDEX room_events_created ON room_events (created_at);
