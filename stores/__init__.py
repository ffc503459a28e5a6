"""PostgreSQL access: pools and migrations, the inbox and outbox, one module per service's tables.
Imports config/ only; never agents/."""
