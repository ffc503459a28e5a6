"""Operator tools: provisioning (oms init), audit (oms check), replay, and their commands.
May import agents.messaging, agents.topology and agents.dev; never a service."""
