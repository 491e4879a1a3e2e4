"""Clarion's three services, and the `clarion` command that runs them."""
