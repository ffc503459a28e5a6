"""The payments service: step.py (charge, refund, void), psp.py (the PSP port and simulator),
app.py, web.py. step.py imports only stores/, schemas/, psp.py and agents.messaging.errors."""
