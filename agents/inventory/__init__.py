"""The inventory service: step.py (reserve all or none, sell, release), app.py, web.py.
step.py imports only stores/, schemas/ and agents.messaging.errors; app.py wires the rest."""
