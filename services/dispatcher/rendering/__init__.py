"""Rendering: turn an incident event into each channel's message."""
