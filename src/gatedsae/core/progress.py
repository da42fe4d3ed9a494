"""Progress bars for the stages (tqdm, imported only when a bar is shown)."""

from __future__ import annotations

from typing import Iterable, Optional


def progress_bar(description: str, unit: str, total: Optional[int] = None, initial: int = 0,
                 items: Optional[Iterable] = None, enabled: bool = True, unit_scale: bool = False):
    """A tqdm bar over `items` (or counting to `total`), or `items` itself / None when disabled."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, total=total, initial=initial, unit=unit, unit_scale=unit_scale, desc=description,
                smoothing=0.1)
