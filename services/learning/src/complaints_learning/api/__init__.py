"""Learning's HTTP resources, one router module each."""

from complaints_learning.api import admin, insights, problems, similar

ROUTERS = [problems.router, similar.router, insights.router, admin.router]
