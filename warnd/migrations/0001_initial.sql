-- warnd schema 1: warnings, their audit trail, scheduled jobs, the delivery outbox and acks.
-- Times are UTC text 'YYYY-MM-DDTHH:MM:SS.ffffffZ' so that text order is time order.

CREATE TABLE warnings (
    id              TEXT PRIMARY KEY,
    sender          TEXT,
    identifier      TEXT,
    idempotency_key TEXT UNIQUE,
    source          TEXT NOT NULL,
    msg_type        TEXT NOT NULL DEFAULT 'alert',
    event           TEXT NOT NULL,
    level           TEXT NOT NULL,
    status          TEXT NOT NULL,
    headline        TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    instruction     TEXT NOT NULL DEFAULT '',
    area            TEXT NOT NULL,          -- JSON {codes, polygons, circles}
    villages        TEXT NOT NULL,          -- JSON list of matched 12-digit codes
    onset           TEXT,                   -- ISO 8601 as given, with its offset
    expires         TEXT,
    state           TEXT NOT NULL,
    version         INTEGER NOT NULL DEFAULT 1,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    document        TEXT                    -- the original upstream document, if any
);
CREATE UNIQUE INDEX warnings_sender_identifier ON warnings (sender, identifier)
    WHERE sender IS NOT NULL AND identifier IS NOT NULL;
CREATE INDEX warnings_state ON warnings (state, created_at);

CREATE TABLE audit (
    id          INTEGER PRIMARY KEY,
    at          TEXT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    warning_id  TEXT,
    remote      TEXT,
    detail      TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_warning ON audit (warning_id);

-- Everything timed is a job: pre-warning steps, re-broadcasts, escalations, expiry.
CREATE TABLE jobs (
    id          INTEGER PRIMARY KEY,
    key         TEXT NOT NULL UNIQUE,       -- makes scheduling idempotent
    warning_id  TEXT REFERENCES warnings (id),
    kind        TEXT NOT NULL,
    due_at      TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'pending',   -- pending / done / cancelled
    payload     TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL,
    fired_at    TEXT
);
CREATE INDEX jobs_due ON jobs (state, due_at);
CREATE INDEX jobs_warning ON jobs (warning_id, state);

-- The outbox. One row per (message, receiver); a loudspeaker message for a whole
-- village shares one msg_id between the village's speakers, each acking on its own.
CREATE TABLE deliveries (
    id            INTEGER PRIMARY KEY,
    msg_id        TEXT NOT NULL,
    warning_id    TEXT NOT NULL REFERENCES warnings (id),
    step          TEXT NOT NULL,
    kind          TEXT NOT NULL,            -- warning / update / cancel
    channel       TEXT NOT NULL,
    target        TEXT NOT NULL,            -- device id, person id or robot key_env
    village       TEXT,
    person_id     TEXT,
    address       TEXT,                     -- phone / wecom user at planning time
    ack_required  INTEGER NOT NULL DEFAULT 0,
    state         TEXT NOT NULL DEFAULT 'pending',
    attempts      INTEGER NOT NULL DEFAULT 0,
    due_at        TEXT NOT NULL,
    last_error    TEXT,
    provider_ref  TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    sent_at       TEXT,
    delivered_at  TEXT,
    acked_at      TEXT,
    UNIQUE (msg_id, target)
);
CREATE INDEX deliveries_due ON deliveries (state, due_at);
CREATE INDEX deliveries_warning ON deliveries (warning_id, channel);
CREATE INDEX deliveries_provider ON deliveries (provider_ref) WHERE provider_ref IS NOT NULL;

CREATE TABLE acks (
    id           INTEGER PRIMARY KEY,
    delivery_id  INTEGER REFERENCES deliveries (id),
    msg_id       TEXT,
    target       TEXT,
    source       TEXT NOT NULL,
    status       TEXT NOT NULL,
    at           TEXT NOT NULL,
    detail       TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX acks_delivery ON acks (delivery_id);
