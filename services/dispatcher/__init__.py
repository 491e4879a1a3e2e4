"""The dispatcher: renders incident messages and sends them on every channel.

Pipeline: plan -> dedup -> render -> send -> record (see ``pipeline.Dispatcher``).
"""
