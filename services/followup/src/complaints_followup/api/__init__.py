"""Followup's HTTP resources, one router module each."""

from complaints_followup.api import checks, satisfaction, surveys

ROUTERS = [checks.router, surveys.router, satisfaction.router]
