"""Intake's HTTP resources, one router module each."""

from complaints_intake.api import complaints, customers

ROUTERS = [complaints.router, customers.router]
