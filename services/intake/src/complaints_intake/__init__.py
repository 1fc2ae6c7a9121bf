"""Intake: records complaints from every channel and acknowledges them at once."""
