"""CPCC: correlation between class distances in feature space and in the label tree."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from hierot.checks import config_check
from hierot.distances import (
    DEFAULT_MEMORY_MB,
    check_memory,
    check_options,
    class_distance_chunks,
    class_distances,
    list_distances,
)
from hierot.errors import ConfigError, require_number
from hierot.hierarchy import Hierarchy
from hierot.hierarchy.labels import label_ancestors
from hierot.shared import SharedTensor, attach

if TYPE_CHECKING:
    from omegaconf import DictConfig

# dist=none: plain cross-entropy, no CPCC term (TestCPCC is then measured with l2).
NO_DISTANCE = "none"


def pearson(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pearson correlation of two (P,) vectors, and whether it is defined.

    Undefined (returned as a 0 that still carries a zero, finite gradient) when P < 3 or
    either vector is constant to within rounding of its dtype.
    """
    if x.numel() < 3:
        return x.sum() * 0, torch.tensor(False, device=x.device)
    t = t.to(x.dtype)
    xc = x - x.mean()
    tc = t - t.mean()
    tiny = torch.finfo(x.dtype).tiny
    eps = 64 * torch.finfo(x.dtype).eps
    spread_x = torch.linalg.vector_norm(xc)
    spread_t = torch.linalg.vector_norm(tc)
    # A spread at rounding level is noise: distances of identical features, say.
    valid = (spread_x > eps * x.abs().max() + tiny) & (spread_t > eps * t.abs().max() + tiny)
    r = (xc * tc).sum() / (spread_x * spread_t).clamp_min(tiny)
    return torch.where(valid, r, r * 0), valid


def _check_labels(classes: torch.Tensor, tree_dist: torch.Tensor) -> None:
    """Labels (sorted ``classes``) within the tree's classes, checked on the device: a GPU
    asserts without the host waiting (a failure ends the process); on the CPU a failure
    names the label."""
    k, size = classes.numel(), tree_dist.shape[0]
    if k == 0:
        return
    try:
        torch._assert_async((classes[0] >= 0) & (classes[-1] < size), "label out of range")
    except RuntimeError:
        label = int(classes[0]) if int(classes[0]) < 0 else int(classes[-1])
        where = "negative" if label < 0 else f"outside the hierarchy's {size} classes"
        raise ValueError(f"label {label} is {where}") from None


def present_tree_distances(
    classes: torch.Tensor, tree_dist: torch.Tensor, num_pairs: int
) -> torch.Tensor:
    """(P,) tree distances of the pairs of ``classes`` in ``triu_indices`` order."""
    _check_labels(classes, tree_dist)
    k = classes.numel()
    a, b = torch.triu_indices(k, k, 1, device=classes.device)
    t = tree_dist.to(classes.device)[classes[a], classes[b]]
    assert t.numel() == num_pairs
    return t


class _Moments:
    """Running sums for a Pearson correlation over chunks, in float64 and shifted by the
    first values (so a constant vector gives exactly zero spread)."""

    def __init__(self) -> None:
        self.n = 0
        self.shift: tuple[float, float] | None = None
        self.sums = torch.zeros(5, dtype=torch.float64)  # x, t, xx, tt, xt
        self.largest = torch.zeros(2, dtype=torch.float64)  # max |x|, max |t|

    def add(self, x: torch.Tensor, t: torch.Tensor) -> None:
        if x.numel() == 0:
            return
        x, t = x.detach().double(), t.detach().double()
        if self.shift is None:
            self.shift = (float(x[0]), float(t[0]))
        xs, ts = x - self.shift[0], t - self.shift[1]
        parts = torch.stack([xs.sum(), ts.sum(), (xs * xs).sum(), (ts * ts).sum(), (xs * ts).sum()])
        self.sums += parts.cpu()
        top = torch.stack([x.abs().max(), t.abs().max()]).cpu()
        self.largest = torch.maximum(self.largest, top)
        self.n += x.numel()

    def pearson(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The same as ``pearson`` of the concatenated vectors (up to rounding)."""
        r, lacking = self.correlation(dtype)
        return torch.tensor(r, dtype=dtype), torch.tensor(lacking is None)

    def correlation(self, dtype: torch.dtype) -> tuple[float, str | None]:
        """``(r, None)``, or ``(0.0, lacking)`` when undefined: ``pairs`` (fewer than 3),
        ``tree`` (the tree distances constant to within rounding of ``dtype``) or
        ``features`` (the class distances so)."""
        if self.n < 3:
            return 0.0, "pairs"
        sx, st, sxx, stt, sxt = self.sums.tolist()
        n = self.n
        var_x = max(sxx - sx * sx / n, 0.0)
        var_t = max(stt - st * st / n, 0.0)
        cov = sxt - sx * st / n
        tiny = torch.finfo(dtype).tiny
        eps = 64 * torch.finfo(dtype).eps
        spread_x, spread_t = var_x**0.5, var_t**0.5
        max_x, max_t = self.largest.tolist()
        if not spread_t > eps * max_t + tiny:
            return 0.0, "tree"
        if not spread_x > eps * max_x + tiny:
            return 0.0, "features"
        return cov / max(spread_x * spread_t, tiny), None


def _streamed(
    z: torch.Tensor,
    y: torch.Tensor,
    tree_dist: torch.Tensor,
    method: str,
    memory_mb: float,
    options: dict[str, object],
    labels_below: int | None = None,
) -> tuple[_Moments, torch.dtype]:
    """The Pearson sums of the class and tree distances of ``(z, y)``, chunk by chunk, and
    the class distances' dtype."""
    moments, dtype = _Moments(), torch.float32
    tree = None
    chunks = class_distance_chunks(z, y, method, memory_mb, labels_below=labels_below, **options)
    for chunk, dist in chunks:
        if tree is None:
            _check_labels(chunk.classes, tree_dist)
            tree, dtype = tree_dist.to(chunk.classes.device), dist.dtype
        t = tree[chunk.classes[chunk.pair_a], chunk.classes[chunk.pair_b]]
        moments.add(dist, t)
    return moments, dtype


def cpcc_with_validity(
    z: torch.Tensor,
    y: torch.Tensor,
    tree_dist: torch.Tensor,
    method: str = "l2",
    memory_mb: float = DEFAULT_MEMORY_MB,
    *,
    labels_below: int | None = None,
    **options: object,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cpcc, valid)``; see ``cpcc``. ``valid`` is a bool 0-dim tensor. With
    ``labels_below`` only the samples labelled below it count (``group_by_class``)."""
    if tree_dist.dim() != 2 or tree_dist.shape[0] != tree_dist.shape[1]:
        raise ValueError(f"tree distances must be (K, K), got shape {tuple(tree_dist.shape)}")
    if torch.is_grad_enabled() and z.requires_grad:
        classes, dist = class_distances(
            z, y, method, memory_mb, labels_below=labels_below, **options
        )
        t = present_tree_distances(classes, tree_dist, dist.numel())
        return pearson(dist, t)
    # Without a gradient nothing needs the (P,) vectors at once: a test split of 10 000
    # classes has 5e7 pairs.
    moments, dtype = _streamed(z, y, tree_dist, method, memory_mb, options, labels_below)
    r, valid = moments.pearson(dtype)
    return r.to(z.device), valid.to(z.device)


def cpcc(
    z: torch.Tensor,
    y: torch.Tensor,
    tree_dist: torch.Tensor,
    method: str = "l2",
    memory_mb: float = DEFAULT_MEMORY_MB,
    **options: object,
) -> torch.Tensor:
    """Pearson correlation between class distances and tree distances of the classes present.

    Args:
        z: (B, d) features; y: (B,) labels in ``0..K-1``.
        tree_dist: (K, K) tree distances (``Hierarchy.tree_distances()``).
        method, options: the class distance (``hierot.distances.class_distances``).
        memory_mb: the memory budget of the class distances (``class_distances``). Without
            a gradient the correlation is accumulated chunk by chunk, so neither the (P,)
            distances nor the tree distances are held at once.
    Returns:
        0-dim tensor, with gradient when ``z`` requires one. On a degenerate batch (fewer
        than 3 classes, constant class or tree distances) the correlation is undefined: 0
        with a zero gradient. A report states it as undefined instead (``reported_cpcc``).
    """
    return cpcc_with_validity(z, y, tree_dist, method, memory_mb, **options)[0]


# What a defined CPCC needs, for the line that says why one is not.
CPCC_NEEDS = "a CPCC needs 3 classes or more whose distances are not all equal"


def reported_cpcc(
    z: torch.Tensor,
    y: torch.Tensor,
    tree_dist: torch.Tensor,
    method: str = "l2",
    memory_mb: float = DEFAULT_MEMORY_MB,
    **options: object,
) -> tuple[torch.Tensor, str | None]:
    """CPCC as a report states it (TestCPCC, ``val/cpcc``), without gradient: a 0-dim
    tensor on ``z``'s device equal to ``cpcc``'s where the correlation is defined, and
    ``why`` None; where it is not, NaN and ``why`` naming the classes of ``y``: ``2
    classes``, ``4 classes whose tree distances are all equal``, ``5 classes whose l2
    distances are all equal``. 0 would read as "no structure"; NaN says there is no
    number."""
    with torch.no_grad():
        moments, dtype = _streamed(z, y, tree_dist, method, memory_mb, options)
    r, lacking = moments.correlation(dtype)
    if lacking is None:
        return torch.tensor(r, dtype=dtype, device=z.device), None
    k = int(y.unique().numel())
    why = {0: "no class", 1: "1 class"}.get(k, f"{k} classes")
    if lacking != "pairs":
        why += f" whose {'tree' if lacking == 'tree' else method} distances are all equal"
    return torch.tensor(float("nan"), dtype=dtype, device=z.device), why


def undefined_lines(undefined: Mapping[str, str], split: str, samples: int) -> list[str]:
    """What a log says once about the undefined CPCCs of ``samples`` samples of ``split``:
    a line per reason of ``{key: why}`` (``reported_cpcc``'s), naming its keys."""
    keys_of: dict[str, list[str]] = {}
    for key, why in undefined.items():
        keys_of.setdefault(why, []).append(key)
    evaluated = f"{samples} {split} sample{'' if samples == 1 else 's'} evaluated"
    return [
        f"{', '.join(keys)} undefined: {evaluated}, of {why} ({CPCC_NEEDS}); shown as n/a, "
        "null in metrics.json"
        for why, keys in keys_of.items()
    ]


# cpcc.nodes: which points the regularizer correlates.
NODES = ("leaves", "all")


def check_nodes(nodes: object) -> None:
    if nodes not in NODES:
        raise ValueError(f"nodes must be one of {', '.join(NODES)}, got {nodes!r}")


class CPCCLoss(nn.Module):
    """``1 - CPCC`` of a batch; exactly 0 (with zero gradient) on degenerate batches, so such
    a batch adds nothing to training.

    Args:
        hierarchy: the label tree (its leaves are the class ids).
        method: class distance name; options: its keyword options (e.g. ``reg=0.5``).
        memory_mb: the class distances' memory budget (``class_distances``).
        nodes: ``leaves`` correlates the classes present; ``all`` also every internal node
            with a descendant in the batch, the root included, each the set of its
            descendants' samples (HypStructure's CPCC over all nodes: with ``l2`` a node is
            the mean of those samples), against path lengths between nodes.
        tree_dist: the run's ``SharedTensor`` of the class tree distances, read instead of
            a copy of its own (``nodes=leaves``).

    Labels at inner nodes (``use_inner_labels``): a sample known only to lie under a node
    has no class, so with ``nodes=leaves`` it is left out of the class means (the samples
    to keep are counted in the batch's one read: no other wait); with ``nodes=all`` it
    joins its node's point and every ancestor's, as a class's sample joins its class's
    and its ancestors'.
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        method: str = "l2",
        memory_mb: float = DEFAULT_MEMORY_MB,
        nodes: str = "leaves",
        tree_dist: SharedTensor | None = None,
        **options: object,
    ) -> None:
        super().__init__()
        check_options(method, options)
        check_memory(memory_mb)
        check_nodes(nodes)
        self.method = method
        self.memory_mb = memory_mb
        self.nodes = nodes
        self.options = dict(options)
        self.labels_below: int | None = None  # all labels are classes until told otherwise
        # Derived from the hierarchy, so none of these is saved in checkpoints.
        if nodes == "all":
            attach(self, "_tree", hierarchy.node_distances())
            self.register_buffer("class_nodes", hierarchy.class_nodes(), persistent=False)
        else:
            attach(self, "_tree", hierarchy.tree_distances() if tree_dist is None else tree_dist)

    @property
    def tree_dist(self) -> torch.Tensor:
        return self._tree.value

    def points(self, z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples and point labels CPCC correlates: ``(z, y)`` itself, or with
        ``nodes=all`` every sample once more under each of its ancestors (labels are then
        node ids, ``Hierarchy.nodes`` order)."""
        if self.nodes == "leaves":
            return z, y
        ids = self.class_nodes[:, y]  # (depth + 1, B)
        keep = ids >= 0
        return z.expand(ids.shape[0], *z.shape)[keep], ids[keep]

    def use_inner_labels(self, hierarchy: Hierarchy) -> None:
        """Take labels at inner nodes too (``hierot.hierarchy.labels``); see the class."""
        if self.nodes == "all":
            self.class_nodes = label_ancestors(hierarchy).to(self.class_nodes.device)
        else:
            self.labels_below = hierarchy.num_classes

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r, valid = cpcc_with_validity(
            *self.points(z, y), self.tree_dist, self.method, self.memory_mb,
            labels_below=self.labels_below, **self.options,
        )  # fmt: skip
        return torch.where(valid, 1 - r, r * 0)

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        nodes = "" if self.nodes == "leaves" else f", nodes={self.nodes!r}"
        return f"method={self.method!r}{nodes}{opts}"


@config_check
def check_regularizer_config(cfg: DictConfig) -> None:
    """``lam``, ``dist`` (the distance and its options) and the ``cpcc`` section's own keys
    (``memory_mb``, ``nodes``, ``center``), each a one-line error naming its key."""
    from omegaconf import DictConfig, OmegaConf  # the application's (the core has no omegaconf)

    require_number(cfg.get("lam"), "lam", 0)
    method = cfg.dist.get("method")
    known = [NO_DISTANCE, *list_distances()]
    if method not in known:
        raise ConfigError(f"dist.method: unknown distance {method!r}; available: {known}")
    node = cfg.dist.get("options")
    if node is not None and not isinstance(node, DictConfig):
        raise ConfigError(f"dist.options must be a mapping, got {node!r}")
    options = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    if method != NO_DISTANCE:
        try:
            check_options(method, options)  # type: ignore[arg-type]
        except ValueError as e:
            raise ConfigError(f"dist.options: {e}") from None
    elif options:
        raise ConfigError("dist.options: dist=none takes no options")
    node = cfg.get("cpcc")
    if not isinstance(node, DictConfig):
        raise ConfigError("cpcc: missing section (memory_mb, val_every, val_classes)")
    try:
        check_memory(node.get("memory_mb"))
        check_nodes(node.get("nodes", "leaves"))
    except ValueError as e:
        raise ConfigError(f"cpcc.{e}") from None
    require_number(node.get("center"), "cpcc.center", 0)
