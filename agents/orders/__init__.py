"""The orders service: step.py (create, confirm, cancel), intake.py, app.py (wiring), web.py.
step.py imports only stores/, schemas/ and agents.messaging.errors; app.py wires the rest."""
