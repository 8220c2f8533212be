-- One-time WebSocket tickets (POST /api/v1/ws-ticket, GET /ws?ticket=): the
-- token stays out of URLs and so out of proxy access logs. Only a SHA-256 of
-- the ticket is stored; redeeming deletes the row, so a ticket opens one
-- socket on any replica. Expand-only: an older runtime ignores the table.
CREATE TABLE IF NOT EXISTS ws_tickets (
    ticket_hash TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The token's id and expiry: the socket lives until the token expires,
    -- and a logged-out token's tickets are refused.
    jti TEXT,
    token_exp BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS ws_tickets_expiry ON ws_tickets (expires_at);
