"""Test helpers that stand in for the world outside Clarion: real servers on loopback."""
