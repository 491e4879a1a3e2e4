"""What Clarion's services share: contracts, settings, logging and Redis helpers."""
