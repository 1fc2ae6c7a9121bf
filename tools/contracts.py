"""``./dev contracts``: the event contract (JSON Schemas, AsyncAPI) and the access matrix.

The access matrix is generated from the four services' OpenAPI documents (each route's
``x-roles``), which the shared library cannot import; this script joins them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from complaints_followup.app import SPEC as FOLLOWUP
from complaints_intake.app import SPEC as INTAKE
from complaints_learning.app import SPEC as LEARNING
from complaints_resolution.app import SPEC as RESOLUTION
from complaints_shared import contracts
from complaints_shared.privacy import new_master_key
from complaints_shared.service import create_app
from complaints_shared.settings import ServiceSettings
from complaints_shared.telemetry import setup_telemetry

SPECS = (INTAKE, RESOLUTION, FOLLOWUP, LEARNING)


def openapis() -> dict[str, dict[str, Any]]:
    """Each service's OpenAPI document (apps are built, nothing connects)."""
    settings = ServiceSettings(
        oidc_issuer="http://127.0.0.1/generating-documents",
        keyring_master_key=new_master_key(),  # type: ignore[arg-type]
    )
    return {
        spec.name: create_app(spec, settings, telemetry=setup_telemetry(spec.name)).openapi()
        for spec in SPECS
    }


def documents() -> dict[Path, str]:
    return {contracts.ACCESS_PATH: contracts.access_matrix(openapis())}


if __name__ == "__main__":
    sys.exit(contracts.main(extra=documents))
