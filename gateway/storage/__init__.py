"""Where state lives: the contracts (`contracts`), the typed records (`records`), the backends
(SQLite, PostgreSQL, Redis, this process's memory), and the one place that opens the ones the
config names (`backends`)."""
