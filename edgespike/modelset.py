"""Noise-adaptive model sets: networks trained for one noise level each, and the rule that picks one per frame.

A small network trained for one Gaussian noise level beats the same network trained for all of them at that level
(docs/MODELS.md: the 8 x 64 bit-plane network by 0.4-1 dB), and loses to it away from that level. A
:class:`ModelSet` keeps such *members* and cuts the axis of the frame's estimated noise level (:func:`estimate_sigma`,
Immerkaer 1996, without the windows that clipping touched) into bands, each served by the member that is best
there. That is a blind denoiser: nothing about the noise is given. The choice is the only thing a set adds to the
integer semantics of its members (docs/SEMANTICS.md, section 9): each member is an ordinary model, run bit for bit
as it would run alone.

A set is stored in the ``.esnn`` container (:mod:`edgespike.fileformat`) with its members' files inside it.
Executors of one network (the accelerator, the exporters, the profiler) take one member: :meth:`ModelSet.member_for`.

Examples
--------
>>> mset = ModelSet.from_spec({"blind-net": mb, "s15": m15, "s25": m25}, "blind-net,9.5,s15,18,s25")  # doctest: +SKIP
>>> out, stats = SetRuntime(mset).denoise(frame)                      # doctest: +SKIP
>>> stats.member, stats.sigma_estimate                                # doctest: +SKIP
('s25', 24.3)
"""

from __future__ import annotations

import bisect
import math
import time
from dataclasses import dataclass, field

import numpy as np

from edgespike.model import Model, ModelError

ESTIMATORS = ("immerkaer-unclipped",)
"""Noise estimators a set may name. Only one so far; the name is stored so that another can be added."""

STRIP_ROWS = 512
"""Rows per strip of the noise estimate: its int16 temporaries for a 40-megapixel photo would take 80 MB each."""

MASK = ((1, -2, 1), (-2, 4, -2), (1, -2, 1))
"""Immerkaer's mask: the difference of two Laplacians. It cancels a frame's smooth parts (up to second order) and
keeps 36 sigma^2 of white noise's variance."""


def laplacian_abs_sum(frame: np.ndarray) -> tuple[int, int]:
    """``(S, n)``: the sum of absolute responses of Immerkaer's mask (:data:`MASK`) over the frame's 3 x 3 windows
    that hold no clipped pixel (0 or 255), and their number; over all windows when every one holds one.

    Clipping removes noise (a pixel pushed below 0 reads 0): saturated skies and shadows made the plain estimate
    of a sigma-25 frame as low as 17.8 and its spread over BSD68 1.4; without the clipped windows 21.9 and 0.8
    (docs/MODELS.md). ``S`` and ``n`` are exact integers.
    """
    x = np.asarray(frame)
    if x.ndim != 2:
        raise ValueError(f"the noise estimate takes one grey plane, got shape {x.shape}")
    h, w = x.shape
    if h < 3 or w < 3:
        return 0, 0
    total = count = total_all = 0
    for r0 in range(0, h - 2, STRIP_ROWS):
        a = x[r0:min(h, r0 + STRIP_ROWS + 2)].astype(np.int16)  # |response| <= 16 * 255 fits
        rows, cols = a.shape[0] - 2, w - 2
        lap = sum(c * a[dy:dy + rows, dx:dx + cols] for dy, row in enumerate(MASK) for dx, c in enumerate(row))
        mag = np.abs(lap)
        clipped = (a == 0) | (a == 255)
        hit = np.zeros((rows, cols), bool)
        for dy in range(3):
            for dx in range(3):
                hit |= clipped[dy:dy + rows, dx:dx + cols]
        total_all += int(mag.sum(dtype=np.int64))
        total += int(mag[~hit].sum(dtype=np.int64))
        count += int(hit.size - np.count_nonzero(hit))
    return (total, count) if count else (total_all, (h - 2) * (w - 2))


def estimate_sigma(frame: np.ndarray) -> float:
    """Immerkaer's (1996) estimate of a frame's Gaussian noise level (0..255 scale), without clipped windows.

    ``sigma = sqrt(pi / 2) * S / (6 n)`` with ``S``, ``n`` from :func:`laplacian_abs_sum`; 0 for a frame smaller
    than 3 x 3. Texture raises it a little: on the project's noisy BSD68 frames it gives 16.0 +/- 1.1, 25.2 +/- 0.8
    and 45.9 +/- 1.1 at sigma 15, 25 and 50 (docs/MODELS.md).
    """
    s, n = laplacian_abs_sum(frame)
    return math.sqrt(math.pi / 2) * s / (6 * n) if n else 0.0


@dataclass(frozen=True)
class Member:
    """One network of a set, by the name the set's summaries use (``"s15"``, ``"blind-net"``)."""

    name: str
    model: Model

    @property
    def trained_for(self) -> str:
        """What its metadata says it was trained for: ``"sigma 15"``, ``"sigma 0..55 (blind)"`` or ``"?"``."""
        sigma = self.model.metadata.get("sigma")
        if sigma == "blind":
            return "sigma 0..55 (blind)"
        return f"sigma {sigma}" if sigma not in (None, "") else "?"


@dataclass(eq=False)
class ModelSet:
    """Networks for several noise levels and the rule that picks one per frame.

    The estimated noise level's axis is cut into bands at ``bounds``; band ``i`` (estimates in ``[bounds[i - 1],
    bounds[i])``, the first from 0, the last to infinity) is served by member ``bands[i]``. A member may serve
    several bands: a network trained for all levels serves the levels between the experts, where an expert trained
    for one level is worse than it (docs/MODELS.md, "The blind set").

    Parameters
    ----------
    members : tuple of Member
        At least two, each serving at least one band, names unique.
    bounds : tuple of float
        Increasing positive noise levels (0..255 scale), one fewer than the bands.
    bands : tuple of int
        The member (index into ``members``) of each band.
    estimator : str
        How a frame's noise level is estimated (:data:`ESTIMATORS`).
    metadata : dict
        Free JSON metadata (name, provenance), as a model's.
    """

    members: tuple[Member, ...]
    bounds: tuple[float, ...]
    bands: tuple[int, ...]
    estimator: str = "immerkaer-unclipped"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.members = tuple(self.members)
        self.bounds = tuple(self.bounds)
        self.bands = tuple(self.bands)
        n = len(self.members)
        if n < 2:
            raise ModelError(f"a model set needs at least two members, got {n}")
        names = [m.name for m in self.members]
        if len(set(names)) != n or not all(isinstance(x, str) and x for x in names):
            raise ModelError(f"member names must be distinct non-empty strings, got {names}")
        for m in self.members:
            if not isinstance(m.model, Model):
                raise ModelError(f"member {m.name!r}: a member of a model set must be a single network, not a set")
        if not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and b > 0
                   for b in self.bounds) or list(self.bounds) != sorted(set(self.bounds)):
            raise ModelError(f"bounds must be increasing positive noise levels, got {list(self.bounds)}")
        self.bounds = tuple(float(b) for b in self.bounds)
        if len(self.bands) != len(self.bounds) + 1:
            raise ModelError(f"{len(self.bounds)} bounds make {len(self.bounds) + 1} bands, but {len(self.bands)} "
                             "band members are given")
        if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n for i in self.bands):
            raise ModelError(f"band members must be member indices 0..{n - 1}, got {list(self.bands)}")
        unused = [m.name for i, m in enumerate(self.members) if i not in self.bands]
        if unused:
            raise ModelError(f"member(s) {', '.join(unused)} serve no band")
        if any(a == b for a, b in zip(self.bands, self.bands[1:], strict=False)):
            raise ModelError(f"neighbouring bands have the same member (a bound that changes nothing): "
                             f"{list(self.bands)}")
        if self.estimator not in ESTIMATORS:
            raise ModelError(f"unknown noise estimator {self.estimator!r} (this edgespike knows "
                             f"{', '.join(ESTIMATORS)}): upgrade edgespike")

    @classmethod
    def from_spec(cls, members: dict[str, Model], spec: str, metadata: dict | None = None) -> ModelSet:
        """A set from a band spec alternating member names and bounds, lowest band first:
        ``"blind-net,9.5,s15,18,s25"`` is blind-net below an estimate of 9.5, s15 up to 18, s25 above."""
        parts = [p.strip() for p in spec.split(",")]
        if len(parts) % 2 == 0 or not all(parts):
            raise ModelError(f"a band spec alternates member names and bounds, starting and ending with a name, "
                             f"e.g. 'blind-net,9.5,s15,18,s25'; got {spec!r}")
        order = list(members)
        band_names, bounds = parts[0::2], []
        for text in parts[1::2]:
            try:
                bounds.append(float(text))
            except ValueError:
                raise ModelError(f"band spec {spec!r}: {text!r} is not a noise level") from None
        missing = [b for b in band_names if b not in members]
        if missing:
            raise ModelError(f"band spec {spec!r} names {', '.join(missing)}, which is not a member "
                             f"({', '.join(order)})")
        return cls(tuple(Member(k, members[k]) for k in order), tuple(bounds),
                   tuple(order.index(b) for b in band_names), metadata=dict(metadata or {}))

    @property
    def timesteps(self) -> int | None:
        """The members' T when they share it (the shipped sets do), else None."""
        ts = {m.model.timesteps for m in self.members}
        return ts.pop() if len(ts) == 1 else None

    @property
    def spec(self) -> str:
        """The band spec :meth:`from_spec` reads: ``"blind-net,9.5,s15,18,s25"``."""
        out = [self.members[self.bands[0]].name]
        for b, i in zip(self.bounds, self.bands[1:], strict=True):
            out += [f"{b:g}", self.members[i].name]
        return ",".join(out)

    def index_for(self, sigma: float) -> int:
        """The member (index) serving noise level ``sigma`` (an estimate, or a level the caller knows)."""
        return self.bands[bisect.bisect_right(self.bounds, sigma)]

    def member_for(self, sigma: float) -> Member:
        return self.members[self.index_for(sigma)]

    def member_named(self, name: str) -> Member:
        """The member called ``name`` (as ``Stats.member`` names the one that ran)."""
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(f"no member {name!r} in this set ({', '.join(m.name for m in self.members)})")

    def choose(self, frame: np.ndarray) -> tuple[int, float]:
        """``(member index, estimated sigma)`` for a grey uint8 frame."""
        s = estimate_sigma(frame)
        return self.index_for(s), s

    def band_ranges(self) -> list[tuple[str, str]]:
        """``(range of estimates, member name)`` per band, for summaries: ``[("< 9.5", "blind-net"), ...]``."""
        b = self.bounds
        ranges = [f"< {b[0]:g}"] + [f"{lo:g} .. {hi:g}" for lo, hi in zip(b, b[1:], strict=False)] + [f">= {b[-1]:g}"]
        return [(r, self.members[i].name) for r, i in zip(ranges, self.bands, strict=True)]

    def describe(self) -> str:
        """One line: the members and the estimator."""
        names = ", ".join(f"{m.name} ({m.trained_for})" for m in self.members)
        return (f"a noise-adaptive set of {len(self.members)} networks, {names}, one chosen per frame by its "
                f"estimated noise level ({self.estimator})")


class SetRuntime:
    """A :class:`~edgespike.runtime.Runtime` per member, and the choice per frame.

    ``denoise(frame) -> (frame, stats)`` as a runtime's; ``stats`` also carries ``member`` (the chosen member's
    name) and ``sigma_estimate``. Keyword arguments go to every member's runtime, which is built when a frame first
    needs it.

    Parameters
    ----------
    mset : ModelSet
    hold : float
        For video (``edgespike run``): keep the previous frame's member while the estimate stays within ``hold`` of
        its band, so that a scene whose estimate sits on a bound does not flip between two networks (a visible
        flicker). 0 (the default) chooses every frame afresh, as for stills.
    """

    def __init__(self, mset: ModelSet, hold: float = 0.0, **kwargs) -> None:
        from edgespike.runtime import Runtime

        self.model = mset
        self.hold = float(hold)
        self._last: int | None = None  # the previous frame's band
        self._kwargs = kwargs
        self._runtimes: list = [None] * len(mset.members)
        self._runtimes[0] = Runtime(mset.members[0].model, **kwargs)  # checks the kwargs, builds the kernel once
        self.backend = self._runtimes[0].backend

    def runtime(self, index: int):
        """The runtime of member ``index`` (built on first use)."""
        from edgespike.runtime import Runtime

        if self._runtimes[index] is None:
            self._runtimes[index] = Runtime(self.model.members[index].model, **self._kwargs)
        return self._runtimes[index]

    def denoise(self, frame: np.ndarray):
        """Denoise one uint8 grey frame with the member its estimated noise level chooses: ``(frame, stats)``."""
        from edgespike.frames import check_frame

        t0 = time.perf_counter()
        sigma = estimate_sigma(check_frame(frame))
        band = self._band(sigma)
        index = self.model.bands[band]
        out, stats = self.runtime(index).denoise(frame)
        stats.total_seconds = time.perf_counter() - t0  # the estimate is part of the work
        stats.member = self.model.members[index].name
        stats.sigma_estimate = sigma
        return out, stats

    def _band(self, sigma: float) -> int:
        """The band of estimate ``sigma``: the previous frame's while within ``hold`` of it."""
        bounds = self.model.bounds
        band = bisect.bisect_right(bounds, sigma)
        last = self._last
        if last is not None and self.hold > 0 and band != last:
            lo = bounds[last - 1] - self.hold if last > 0 else -math.inf
            hi = bounds[last] + self.hold if last < len(bounds) else math.inf
            if lo <= sigma < hi:
                band = last
        self._last = band
        return band

    def model_of(self, stats) -> Model:
        """The network that produced ``stats`` (for energy estimates, which price one network)."""
        return self.model.member_named(stats.member).model
