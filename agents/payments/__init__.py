"""The payments service: step.py (intents, PSP calls, settlements), psp.py (PSP port, simulator),
caller.py (the calls after the commit), app.py, web.py. step.py: stores/, schemas/, psp.py only."""
