"""Text placed where it hides nothing: each label beside its point is tried at several offsets once the figure
is laid out at its final size, and goes where it crosses the fewest lines, markers, error bars, other labels
and axes edges (fewest first, then the order of preference). Labels are queued while a panel is drawn
(`queue_label`) and placed by `place_labels` just before the figure is saved."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.lines import Line2D
from matplotlib.transforms import Bbox

# (dx, dy) in points from the point, the text aligned away from it: sixteen directions (beside and
# diagonally first, then above and below) at 6 points, then at two to six times that distance.
ANGLES = (25, -25, 155, 205, 0, 180, 50, -50, 130, 230, 90, 270, 70, -70, 110, 250)
OFFSETS = [(round(6 * scale * math.cos(math.radians(a)), 1), round(6 * scale * math.sin(math.radians(a)), 1))
           for scale in range(1, 7) for a in ANGLES]
# Cost of each collision: a data line or marker hidden, a reference line (dashed) crossed, two labels on
# top of each other, a label cut by the panel's edge (never chosen while anything else is possible); and
# of distance, per step away from the point (a far label no longer reads as the point's).
CROSSING, REFERENCE, COVERED, CLASH, OUTSIDE, DISTANCE = 4.0, 2.0, 4.0, 8.0, 1000.0, 0.5
PER_SCALE = len(ANGLES)  # offsets per distance step in OFFSETS
LEADER_FROM = 1  # distance steps from which a label gets a leader line to its point


@dataclass
class PendingLabel:
    text: str
    x: float          # the point, in data coordinates
    y: float
    colour: str
    fontsize: float


def queue_label(ax, text: str, x: float, y: float, colour: str, fontsize: float) -> None:
    if not hasattr(ax, "pending_labels"):
        ax.pending_labels = []
    ax.pending_labels.append(PendingLabel(text, float(x), float(y), colour, fontsize))


def queue_note(ax, text: str, fontsize: float) -> None:
    """A note for a top corner of the panel, whichever hides nothing (the y axis grows until one does)."""
    if not hasattr(ax, "pending_notes"):
        ax.pending_notes = []
    ax.pending_notes.append((text, fontsize))


def _obstacles(ax) -> tuple[list, np.ndarray]:
    """([(path in display coordinates, cost of crossing it)], points in display coordinates with their
    radius in pixels)."""
    paths, points = [], []
    dpi = ax.figure.dpi
    for line in ax.lines:
        path = line.get_transform().transform_path(line.get_path())
        if line.get_linestyle() not in ("None", "none", "", " ") and len(path.vertices) > 1:
            paths.append((path, REFERENCE if line.get_linestyle() == "--" else CROSSING))
        if line.get_marker() not in (None, "None", "none", "", " "):
            radius = line.get_markersize() * dpi / 72 / 2 + 1
            points += [(x, y, radius) for x, y in path.vertices]
    for patch in ax.patches:  # histogram outlines (stairs)
        paths.append((patch.get_transform().transform_path(patch.get_path()), CROSSING))
    for collection in ax.collections:
        if isinstance(collection, LineCollection):
            transform = collection.get_transform()
            paths += [(transform.transform_path(path), CROSSING) for path in collection.get_paths()
                      if len(path.vertices) > 1]
        elif isinstance(collection, PathCollection):
            offsets = collection.get_offset_transform().transform(collection.get_offsets())
            sizes = collection.get_sizes() if len(collection.get_sizes()) else [9.0]
            radius = float(np.sqrt(max(sizes))) * dpi / 72 / 2 + 1
            points += [(x, y, radius) for x, y in offsets]
    return paths, np.array(points).reshape(-1, 3)


def _cost(box: Bbox, paths: list, points: np.ndarray, placed: list[Bbox], inside: Bbox) -> float:
    crossings = sum(cost for path, cost in paths if path.intersects_bbox(box, filled=False))
    covered = 0
    if len(points):
        x, y, r = points.T
        covered = int(((x + r > box.x0) & (x - r < box.x1) & (y + r > box.y0) & (y - r < box.y1)).sum())
    clashes = sum(box.overlaps(other) for other in placed)
    outside = not (inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1)
    return crossings + COVERED * covered + CLASH * clashes + OUTSIDE * outside


CORNERS = ((0.02, "left"), (0.98, "right"))
HEADROOM_STEPS = 20  # at most this many 10% extensions of the y axis to make room for a note


def _place_notes(fig, renderer) -> None:
    """Each queued note in the top corner where it covers nothing; while none is free, the y axis of its
    panel (and of those sharing it) grows by 10%."""
    for ax in fig.axes:
        for text, fontsize in getattr(ax, "pending_notes", []):
            for _ in range(HEADROOM_STEPS):
                paths, points = _obstacles(ax)
                inside = ax.get_window_extent(renderer)
                tried = []
                for x, align in CORNERS:
                    note = ax.text(x, 0.97, text, transform=ax.transAxes, va="top", ha=align, fontsize=fontsize)
                    box = note.get_window_extent(renderer).padded(1.0)
                    tried.append((_cost(box, paths, points, [], inside), note))
                cost, chosen = min(tried, key=lambda item: item[0])
                for _, note in tried:
                    if note is not chosen:
                        note.remove()
                if cost == 0:
                    break
                chosen.remove()
                bottom, top = ax.get_ylim()
                ax.set_ylim(bottom, bottom + (top - bottom) * 1.1)
            else:
                ax.text(*CORNERS[0][:1], 0.97, text, transform=ax.transAxes, va="top", ha="left", fontsize=fontsize)
        ax.pending_notes = []


def _alignment(dx: float, dy: float) -> dict:
    """Text set off from its point: left-aligned to its right, top-aligned below it, and so on."""
    return {"ha": "left" if dx > 0.5 else "right" if dx < -0.5 else "center",
            "va": "bottom" if dy > 0.5 else "top" if dy < -0.5 else "center"}


def place_labels(fig) -> None:
    """Place every queued note and label of `fig`'s axes (after the final layout, before saving)."""
    renderer = fig.canvas.get_renderer()
    _place_notes(fig, renderer)
    for ax in fig.axes:
        pending = getattr(ax, "pending_labels", [])
        if not pending:
            continue
        paths, points = _obstacles(ax)
        inside = ax.get_window_extent(renderer)
        placed: list[Bbox] = []
        for label in pending:
            best = None
            for index, (dx, dy) in enumerate(OFFSETS):
                text = ax.annotate(label.text, (label.x, label.y), textcoords="offset points", xytext=(dx, dy),
                                   fontsize=label.fontsize, color=label.colour, **_alignment(dx, dy))
                box = text.get_window_extent(renderer).expanded(1.0, 1.0).padded(1.0)
                cost = (_cost(box, paths, points, placed, inside) + DISTANCE * (index // PER_SCALE), index)
                if best is None or cost < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (cost, text, box)
                else:
                    text.remove()
            if best[0][1] // PER_SCALE >= LEADER_FROM:  # far from its point: a thin line leads back to it
                best[1].arrow_patch = None
                best[1].remove()
                dx, dy = OFFSETS[best[0][1]]
                ax.annotate(label.text, (label.x, label.y), textcoords="offset points", xytext=(dx, dy),
                            fontsize=label.fontsize, color=label.colour, **_alignment(dx, dy),
                            arrowprops={"arrowstyle": "-", "lw": 0.5, "color": label.colour, "shrinkA": 1, "shrinkB": 3})
            placed.append(best[2])
        ax.pending_labels = []
