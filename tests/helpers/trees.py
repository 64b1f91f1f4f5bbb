"""Label trees the tests share: balanced trees of 2, 3 and 4 levels and a tree whose leaves
sit at different depths."""

from hierot.hierarchy import Hierarchy


def balanced(branching: list[int]) -> Hierarchy:
    """A tree with ``branching[l]`` children under every node of level l."""
    paths = [[]]
    for level, n in enumerate(branching):
        paths = [[*p, f"{'/'.join(p)}>{level}.{i}"] for p in paths for i in range(n)]
    return Hierarchy.from_paths(paths)


TREES = {
    "2 levels": balanced([3, 3]),
    "3 levels": balanced([2, 2, 3]),
    "4 levels": balanced([2, 2, 2, 2]),
    # leaves at depths 2, 3 and 4, and a one-child chain
    "unbalanced": Hierarchy.from_paths(
        [
            ["a", "a1"],
            ["a", "a2"],
            ["b", "b1", "b11"],
            ["b", "b1", "b12"],
            ["b", "b2", "b21"],
            ["b", "b2", "b22", "b221"],
            ["b", "b2", "b22", "b222"],
            ["c", "c1", "c11"],
        ]
    ),
}
