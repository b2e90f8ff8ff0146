"""The built-in status page: one snapshot of everything a screen needs, and the page's files.

May import the core modules and the parts it summarises (`proxy/`, `models/`, `health/`,
`telemetry/`); never Flask. Only `routes/` (which serves it) and the wiring import it; no other
part may, so the page can change without touching what it reads.
"""

from management_api.status.assets import Asset, asset
from management_api.status.snapshot import (
    CRITICAL_C,
    WARNING_C,
    RecentRejections,
    StatusBuilder,
    render,
)

__all__ = [
    "CRITICAL_C",
    "WARNING_C",
    "Asset",
    "RecentRejections",
    "StatusBuilder",
    "asset",
    "render",
]
