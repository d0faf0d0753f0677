-- warnd schema 12: sign-off (审核签发). A warning that needs sign-off is stored with state
-- 'awaiting_approval' (its drafter is the actor of its 'issue' audit event); an update or a
-- cancel of a warning in force that needs sign-off waits here until it is approved or rejected.
CREATE TABLE pending_changes (
    id          INTEGER PRIMARY KEY,
    warning_id  TEXT NOT NULL REFERENCES warnings (id),
    kind        TEXT NOT NULL,                      -- update / cancel
    body        TEXT NOT NULL,                      -- the request body as JSON
    drafted_by  TEXT NOT NULL,
    remote      TEXT,
    created_at  TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'pending',    -- pending / approved / rejected
    decided_by  TEXT,
    decided_at  TEXT
);
-- At most one change of a warning waits at a time.
CREATE UNIQUE INDEX pending_changes_one ON pending_changes (warning_id) WHERE state = 'pending';
