"""Running the whole system on one machine: embedded broker and PostgreSQL, supervisor,
stack, demo, bench, the demo catalogue. May import messaging, ops and topology; never a service."""
