-- warnd schema 7: the audit log is append-only. The store only ever inserts into it; these
-- triggers make SQLite itself refuse to change or remove a row, so neither a bug nor someone
-- with the sqlite3 shell can quietly rewrite who issued or cancelled a warning. (Someone who can
-- write the database file can still drop the triggers: this guards against accidents and casual
-- tampering; off-host copies of the journald log are the record of last resort.)
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only');
END;

CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only');
END;
