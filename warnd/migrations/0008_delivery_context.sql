-- warnd schema 8: what a delivery's message says beyond the warning itself (JSON): its message
-- kind (issue, reminder, upgrade, all_clear, escalation_superior …) and that kind's facts — the
-- level before an upgrade, why a warning was lifted, who has not confirmed since when.
ALTER TABLE deliveries ADD COLUMN context TEXT;
