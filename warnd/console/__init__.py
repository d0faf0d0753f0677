"""The duty officer's console: static files served at / (warnd.api.console)."""
