"""The message contract: oms.proto, its generated modules, the codec and the field ledger.
Imports nothing of the project."""
