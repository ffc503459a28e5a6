"""Faust web views: the operators' read (and guarded write) surface of each service."""
