"""Followup: satisfaction checks after resolution, and reopening when the customer is unhappy."""
