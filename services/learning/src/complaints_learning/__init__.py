"""Learning: recurring root causes become problems with corrective actions."""
