-- warnd schema 2: health of MQTT devices (loudspeakers, LED boards), from their retained
-- `warnd/v1/device/{id}/status` messages, last wills and acknowledgements.

CREATE TABLE devices (
    id          TEXT PRIMARY KEY,           -- device id as in directory.toml
    online      INTEGER,                    -- 1 / 0 as last reported; NULL: never reported
    status      TEXT NOT NULL DEFAULT '{}', -- the last status payload (JSON)
    status_at   TEXT,                       -- when the last status arrived
    last_seen   TEXT                        -- last message of any kind (status or ack)
);
CREATE INDEX devices_online ON devices (online);
