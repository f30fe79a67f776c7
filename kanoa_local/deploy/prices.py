"""The deployment's price in kanoa's user pricing file, for as long as it runs: registered when
`up` succeeds, so any kanoa client on this machine (the seed page's own snippet, kanoa's CLI, a
notebook) reports an estimated cost, and taken out at `down` once no deployment on record
serves that name."""

from __future__ import annotations

from .. import state
from ..state import Deployment


def register(dep: Deployment) -> str | None:
    """Price ``dep``'s served name; a note when kanoa's file could not take it (the start stands)."""
    from ..interpreter import ensure_price

    try:
        ensure_price(dep.served_model_name, dep.cost_per_mtok)
    except Exception as exc:  # noqa: BLE001 - the server runs: a price is never worth failing `up`
        return f"cost not registered with kanoa: {getattr(exc, 'message', exc)}"
    return None


def release(served_names: set[str]) -> None:
    """Remove kanoa-local's price of each name no remaining deployment serves."""
    from ..interpreter import remove_price

    still = {d.served_model_name for d in state.list_all()[0]}
    for name in served_names - still:
        try:
            remove_price(name)
        except Exception:  # noqa: BLE001 - a file kanoa-local cannot read is not rewritten; down stands
            pass
