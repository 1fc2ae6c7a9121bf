"""Resolution: runs the case from acknowledgement to a customer-approved solution."""
