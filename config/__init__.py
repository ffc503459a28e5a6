"""Typed settings for every OMS process: one frozen object read from env / `.env`."""

from config.settings import SERVICES, Settings, get_settings

__all__ = ["SERVICES", "Settings", "get_settings"]
