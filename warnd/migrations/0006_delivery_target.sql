-- warnd schema 6: find a receiver's deliveries fast. An LED board decides what to show from the
-- warnings in force that were sent to it (Store.in_force_for), at every send to that board.
CREATE INDEX deliveries_target ON deliveries (target, channel, warning_id);
