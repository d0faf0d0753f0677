-- warnd schema 5: upstream CAP documents, feed cursors and health, hydrological readings.

-- Every CAP message warnd took in (Alert, Update, Cancel, Ack, Error; every status), by its own
-- (sender, identifier): a re-delivery through any source is a duplicate. `outcome` says what
-- became of it; `flag` is set when an operator must look (unmatched reference, no village …).
CREATE TABLE feed_documents (
    id           INTEGER PRIMARY KEY,
    sender       TEXT NOT NULL,
    identifier   TEXT NOT NULL,
    feed         TEXT NOT NULL,              -- feed name, or 'api'
    source       TEXT NOT NULL,              -- push / poll / mqtt / api
    msg_type     TEXT NOT NULL,
    status       TEXT NOT NULL,
    sent         TEXT,                       -- ISO 8601 as sent, with its offset
    refs         TEXT NOT NULL DEFAULT '[]', -- JSON [{sender, identifier, sent}]
    outcome      TEXT NOT NULL,              -- accepted / updated / cancelled / recorded / unmatched / stale
    warning_id   TEXT,
    flag         TEXT,
    received_at  TEXT NOT NULL,
    document     TEXT,
    UNIQUE (sender, identifier)
);
CREATE INDEX feed_documents_flag ON feed_documents (flag) WHERE flag IS NOT NULL;
CREATE INDEX feed_documents_warning ON feed_documents (warning_id);

-- Conditional-GET state of a polled URL.
CREATE TABLE feed_cursors (
    feed           TEXT NOT NULL,
    url            TEXT NOT NULL,
    etag           TEXT,
    last_modified  TEXT,
    updated_at     TEXT NOT NULL,
    PRIMARY KEY (feed, url)
);

-- Entries of a polled index already fetched: each is fetched once.
CREATE TABLE feed_entries (
    feed        TEXT NOT NULL,
    entry       TEXT NOT NULL,
    fetched_at  TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    PRIMARY KEY (feed, entry)
);

-- Per-feed health for GET /api/v1/feeds.
CREATE TABLE feed_health (
    feed            TEXT PRIMARY KEY,
    last_success    TEXT,
    last_error      TEXT,
    last_error_at   TEXT,
    failures        INTEGER NOT NULL DEFAULT 0,   -- consecutive
    counts          TEXT NOT NULL DEFAULT '{}'    -- JSON {outcome: n}
);

-- Water-level readings, accepted and rejected (with the reason).
CREATE TABLE hydro_readings (
    id           INTEGER PRIMARY KEY,
    station      TEXT NOT NULL,
    at           TEXT NOT NULL,              -- store UTC text
    level_m      REAL NOT NULL,
    received_at  TEXT NOT NULL,
    accepted     INTEGER NOT NULL,
    reason       TEXT
);
CREATE INDEX hydro_readings_station ON hydro_readings (station, accepted, at);

-- Where each station's threshold state machine stands.
CREATE TABLE hydro_state (
    station       TEXT PRIMARY KEY,
    warning_id    TEXT,
    level         TEXT,                      -- colour raised, NULL when none in force
    below_since   TEXT,
    updated_at    TEXT NOT NULL
);
