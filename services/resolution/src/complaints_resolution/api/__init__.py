"""Resolution's HTTP resources, one router module each."""

from complaints_resolution.api import cases

ROUTERS = [cases.router]
