-- warnd schema 13: coverage and the delivery gauges from counters kept beside the deliveries, so
-- /metrics and a warning's page read a few rows instead of grouping 1,000,000 deliveries.
-- The counters are kept by the triggers below, in the same transaction as every change of a
-- delivery (insert, claim, record, acks, cancel, recovery, republish, retention's delete):
-- no write path can forget them. warnd.store.sqlite.COUNTER_TRIGGERS names them.

-- Deliveries by (warning, channel, state): the warnd_deliveries gauge sums them per channel.
CREATE TABLE delivery_counts (
    warning_id  TEXT NOT NULL,
    channel     TEXT NOT NULL,
    state       TEXT NOT NULL,
    n           INTEGER NOT NULL,
    PRIMARY KEY (warning_id, channel, state)
) WITHOUT ROWID;

-- One row per receiver of a warning (its deliveries of kind 'warning'): how many of them are in
-- each state that decides coverage. `class` is where the receiver counts (rows.count_receiver):
-- the furthest state any of its deliveries reached, else failed if one failed or died.
CREATE TABLE coverage_receivers (
    warning_id   TEXT NOT NULL,
    channel      TEXT NOT NULL,
    target       TEXT NOT NULL,
    n            INTEGER NOT NULL,
    n_acked      INTEGER NOT NULL,
    n_delivered  INTEGER NOT NULL,
    n_sent       INTEGER NOT NULL,
    n_failed     INTEGER NOT NULL,      -- failed or dead
    class        TEXT GENERATED ALWAYS AS (
        CASE WHEN n = 0 THEN NULL
             WHEN n_acked > 0 THEN 'acknowledged'
             WHEN n_delivered > 0 THEN 'delivered'
             WHEN n_sent > 0 THEN 'sent'
             WHEN n_failed > 0 THEN 'failed'
             ELSE 'open' END
    ) VIRTUAL,
    PRIMARY KEY (warning_id, channel, target)
) WITHOUT ROWID;

-- Receivers by (warning, channel, class): Store.coverage reads these.
CREATE TABLE coverage_counts (
    warning_id  TEXT NOT NULL,
    channel     TEXT NOT NULL,
    class       TEXT NOT NULL,
    n           INTEGER NOT NULL,
    PRIMARY KEY (warning_id, channel, class)
) WITHOUT ROWID;

-- What a database from before this schema already holds.
INSERT INTO delivery_counts (warning_id, channel, state, n)
    SELECT warning_id, channel, state, COUNT(*) FROM deliveries GROUP BY warning_id, channel, state;
INSERT INTO coverage_receivers (warning_id, channel, target, n, n_acked, n_delivered, n_sent, n_failed)
    SELECT warning_id, channel, target, COUNT(*), SUM(state = 'acknowledged'), SUM(state = 'delivered'),
           SUM(state = 'sent'), SUM(state IN ('failed', 'dead'))
    FROM deliveries WHERE kind = 'warning' GROUP BY warning_id, channel, target;
INSERT INTO coverage_counts (warning_id, channel, class, n)
    SELECT warning_id, channel, class, COUNT(*) FROM coverage_receivers
    WHERE class IS NOT NULL GROUP BY warning_id, channel, class;

-- A delivery in or out of a state. `WHERE true` before ON CONFLICT: SQLite's parser needs it
-- after a SELECT.
CREATE TRIGGER delivery_counts_insert AFTER INSERT ON deliveries
BEGIN
    INSERT INTO delivery_counts (warning_id, channel, state, n)
        SELECT NEW.warning_id, NEW.channel, NEW.state, 1 WHERE true
        ON CONFLICT (warning_id, channel, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER delivery_counts_update AFTER UPDATE OF state ON deliveries
WHEN OLD.state IS NOT NEW.state
BEGIN
    UPDATE delivery_counts SET n = n - 1
        WHERE warning_id = OLD.warning_id AND channel = OLD.channel AND state = OLD.state;
    INSERT INTO delivery_counts (warning_id, channel, state, n)
        SELECT NEW.warning_id, NEW.channel, NEW.state, 1 WHERE true
        ON CONFLICT (warning_id, channel, state) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER delivery_counts_delete AFTER DELETE ON deliveries
BEGIN
    UPDATE delivery_counts SET n = n - 1
        WHERE warning_id = OLD.warning_id AND channel = OLD.channel AND state = OLD.state;
END;

-- A receiver's deliveries of kind 'warning' (the only kind coverage counts).
CREATE TRIGGER coverage_receivers_insert AFTER INSERT ON deliveries
WHEN NEW.kind = 'warning'
BEGIN
    INSERT INTO coverage_receivers (warning_id, channel, target, n, n_acked, n_delivered, n_sent, n_failed)
        SELECT NEW.warning_id, NEW.channel, NEW.target, 1, NEW.state = 'acknowledged',
               NEW.state = 'delivered', NEW.state = 'sent', NEW.state IN ('failed', 'dead') WHERE true
        ON CONFLICT (warning_id, channel, target) DO UPDATE SET
            n = n + 1,
            n_acked = n_acked + excluded.n_acked,
            n_delivered = n_delivered + excluded.n_delivered,
            n_sent = n_sent + excluded.n_sent,
            n_failed = n_failed + excluded.n_failed;
END;

CREATE TRIGGER coverage_receivers_update AFTER UPDATE OF state ON deliveries
WHEN OLD.state IS NOT NEW.state AND NEW.kind = 'warning'
BEGIN
    UPDATE coverage_receivers SET
        n_acked = n_acked + (NEW.state = 'acknowledged') - (OLD.state = 'acknowledged'),
        n_delivered = n_delivered + (NEW.state = 'delivered') - (OLD.state = 'delivered'),
        n_sent = n_sent + (NEW.state = 'sent') - (OLD.state = 'sent'),
        n_failed = n_failed + (NEW.state IN ('failed', 'dead')) - (OLD.state IN ('failed', 'dead'))
        WHERE warning_id = NEW.warning_id AND channel = NEW.channel AND target = NEW.target;
END;

CREATE TRIGGER coverage_receivers_delete AFTER DELETE ON deliveries
WHEN OLD.kind = 'warning'
BEGIN
    UPDATE coverage_receivers SET
        n = n - 1,
        n_acked = n_acked - (OLD.state = 'acknowledged'),
        n_delivered = n_delivered - (OLD.state = 'delivered'),
        n_sent = n_sent - (OLD.state = 'sent'),
        n_failed = n_failed - (OLD.state IN ('failed', 'dead'))
        WHERE warning_id = OLD.warning_id AND channel = OLD.channel AND target = OLD.target;
END;

-- A receiver moving from one class to another.
CREATE TRIGGER coverage_counts_insert AFTER INSERT ON coverage_receivers
BEGIN
    INSERT INTO coverage_counts (warning_id, channel, class, n)
        SELECT NEW.warning_id, NEW.channel, NEW.class, 1 WHERE NEW.class IS NOT NULL
        ON CONFLICT (warning_id, channel, class) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER coverage_counts_update AFTER UPDATE ON coverage_receivers
WHEN OLD.class IS NOT NEW.class
BEGIN
    UPDATE coverage_counts SET n = n - 1
        WHERE warning_id = OLD.warning_id AND channel = OLD.channel AND class = OLD.class;
    INSERT INTO coverage_counts (warning_id, channel, class, n)
        SELECT NEW.warning_id, NEW.channel, NEW.class, 1 WHERE NEW.class IS NOT NULL
        ON CONFLICT (warning_id, channel, class) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER coverage_counts_delete AFTER DELETE ON coverage_receivers
BEGIN
    UPDATE coverage_counts SET n = n - 1
        WHERE warning_id = OLD.warning_id AND channel = OLD.channel AND class = OLD.class;
END;
