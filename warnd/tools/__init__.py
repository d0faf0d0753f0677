"""Tools beside the daemon (the device simulator, `warnd-sim`): they import warnd, never the reverse."""
