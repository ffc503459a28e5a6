"""The saga tracker: saga.py (the pure transition), table.py (the Faust table, batches, timer),
app.py (wiring), web.py and the dashboard. saga.py imports schemas/ only."""
