import itertools
import json
from collections import deque

import pytest
import torch

from hierot import Hierarchy, HierarchyError

NESTED = {
    "animal": {"dog": ["poodle", "beagle"], "cat": ["lion", "tabby"]},
    "vehicle": {"car": ["sedan", "coupe"], "boat": ["canoe"]},
}
LEAVES = ["poodle", "beagle", "lion", "tabby", "sedan", "coupe", "canoe"]
PATHS = [
    ["animal", "dog", "poodle"],
    ["animal", "dog", "beagle"],
    ["animal", "cat", "lion"],
    ["animal", "cat", "tabby"],
    ["vehicle", "car", "sedan"],
    ["vehicle", "car", "coupe"],
    ["vehicle", "boat", "canoe"],
]


def edges_of(paths):
    out = []
    for p in paths:
        for a, b in itertools.pairwise(p):
            if (a, b) not in out:
                out.append((a, b))
    return out


def bfs_distances(h: Hierarchy) -> torch.Tensor:
    """Reference: breadth-first search over the undirected tree, weighted by edge weights
    (Dijkstra-free because every path in a tree is unique)."""
    adj = {n: [] for n in h.nodes}
    for n in h.nodes:
        p = h.parent(n)
        if p is not None:
            adj[n].append((p, h.edge_weight(n)))
            adj[p].append((n, h.edge_weight(n)))
    out = torch.zeros(len(h.leaves), len(h.leaves), dtype=torch.float64)
    for i, leaf in enumerate(h.leaves):
        dist = {leaf: 0.0}
        queue = deque([leaf])
        while queue:
            cur = queue.popleft()
            for nxt, w in adj[cur]:
                if nxt not in dist:
                    dist[nxt] = dist[cur] + w
                    queue.append(nxt)
        out[i] = torch.tensor([dist[other] for other in h.leaves])
    return out


def test_constructors_agree():
    a = Hierarchy.from_nested(NESTED)
    b = Hierarchy.from_paths(PATHS)
    c = Hierarchy.from_edges(edges_of(PATHS))
    for h in (a, b, c):
        assert h.leaves == LEAVES
        assert h.depth == 3 and h.levels == [1, 2, 3]
        assert torch.equal(h.tree_distances(), a.tree_distances())
    t = a.tree_distances()
    assert t[0, 1] == 2 and t[0, 2] == 4 and t[0, 4] == 6 and t.diagonal().abs().sum() == 0


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("tree.json", json.dumps(NESTED, indent=2)),
        (
            "tree.yaml",
            "animal:\n  dog: [poodle, beagle]\n  cat:\n    - lion\n    - tabby\n"
            "vehicle:\n  car: [sedan, coupe]\n  boat: [canoe]\n",
        ),
        (
            "tree.yml",
            "animal: {dog: [poodle, beagle], cat: [lion, tabby]}\n"
            "vehicle: {car: [sedan, coupe], boat: [canoe]}\n",
        ),
        ("tree.csv", "# top,mid,leaf\n" + "\n".join(",".join(p) for p in PATHS) + "\n"),
        ("tree.tsv", "\n".join("\t".join(p) for p in PATHS) + "\n\n"),
        ("class_hierarchy.txt", "\n".join(f"{a} {b}" for a, b in edges_of(PATHS))),
    ],
)
def test_every_file_format(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    h = Hierarchy.from_file(path)
    assert h.leaves == LEAVES
    assert h.source == str(path)
    assert torch.equal(h.tree_distances(), Hierarchy.from_nested(NESTED).tree_distances())


def test_breeds_style_edge_list_with_single_root(tmp_path):
    # BREEDS' class_hierarchy.txt: WordNet ids, one "parent child" per line, one root
    text = "\n".join(
        [
            "n00001740 n00021939",
            "n00021939 n00002684",
            "n00002684 n01503061",
            "n00002684 n01661091",
            "n01503061 n01530575",
            "n01503061 n01531178",
            "n01661091 n01662784",
        ]
    )
    path = tmp_path / "class_hierarchy.txt"
    path.write_text(text + "\n")
    h = Hierarchy.from_file(path)
    assert h.root == "n00001740"
    assert h.leaves == ["n01530575", "n01531178", "n01662784"]
    assert h.leaf_depths == [4, 4, 4]
    assert h.tree_distances().tolist() == [[0, 2, 4], [2, 0, 4], [4, 4, 0]]


def test_unbalanced_weighted_tree_distances_match_graph_search():
    h = Hierarchy.from_edges(
        [
            ("life", "plant", 2.0),
            ("life", "animal"),
            ("animal", "fish", 0.5),
            ("animal", "bird"),
            ("bird", "owl"),
            ("bird", "finch", 3.0),
            ("fish", "trout"),
            ("plant", "oak"),
            ("life", "virus"),
        ]
    )
    assert h.leaves == ["owl", "finch", "trout", "oak", "virus"]
    assert h.leaf_depths == [3, 3, 3, 2, 1]
    t = h.tree_distances(torch.float64)
    assert torch.allclose(t, bfs_distances(h))
    assert float(t[0, 1]) == 4.0 and float(t[2, 3]) == 1.5 + 1 + 2 + 1
    assert torch.equal(t, t.T)


def test_unbalanced_paths_and_levels(tmp_path):
    path = tmp_path / "tree.csv"
    path.write_text("a,b,x\na,b,y\na,z\nw\n")
    h = Hierarchy.from_file(path)
    assert h.leaves == ["x", "y", "z", "w"]
    assert h.depth == 3
    assert h.ancestors_at(1) == ["a", "a", "a", "w"]
    assert h.ancestors_at(2) == ["b", "b", "z", "w"]
    names, fine_to_2 = h.level_map(2)
    assert names == ["b", "z", "w"] and fine_to_2.tolist() == [0, 0, 1, 2]
    maps = h.label_maps()
    assert list(maps) == [1, 2, 3]
    assert maps[1].tolist() == [0, 0, 0, 1] and maps[3].tolist() == [0, 1, 2, 3]
    assert torch.allclose(h.tree_distances(torch.float64), bfs_distances(h))


def test_single_top_node_is_the_root_and_several_get_a_shared_one():
    one = Hierarchy.from_nested({"entity": NESTED})
    many = Hierarchy.from_nested(NESTED)
    assert one.root == "entity" and many.root == "<root>"
    assert torch.equal(one.tree_distances(), many.tree_distances())
    assert one.ancestors_at(1) == many.ancestors_at(1)


def test_class_order_can_be_imposed_and_subset():
    h = Hierarchy.from_nested(NESTED, classes=["canoe", "poodle", "sedan"])
    assert h.leaves == ["canoe", "poodle", "sedan"]
    assert h.tree_distances().tolist() == [[0, 6, 4], [6, 0, 6], [4, 6, 0]]
    assert "tabby" not in h.nodes and "cat" not in h.nodes
    full = Hierarchy.from_nested(NESTED)
    assert full.with_classes(["canoe", "poodle", "sedan"]).leaves == h.leaves
    assert full.index("lion") == 2


def test_leaf_lists_may_hold_mappings_and_null_leaves():
    h = Hierarchy.from_nested({"a": [{"b": ["x"]}, "y"], "z": None})
    assert h.leaves == ["x", "y", "z"]
    assert h.leaf_depths == [3, 2, 1]


# ---------------------------------------------------------------- validation errors
def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(HierarchyError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg  # one line
    return msg


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_two_parents_names_file_line_and_node(tmp_path):
    path = write(tmp_path, "h.txt", "root a\nroot b\n# comment\na leaf\nb leaf\n")
    msg = error_of(Hierarchy.from_file, path)
    assert msg == (f"{path}:5: node 'leaf' has two parents: 'a' (first at {path}:4) and 'b'")
    msg = error_of(Hierarchy.from_file, write(tmp_path, "h.csv", "a,b,x\nc,b,y\n"))
    assert "h.csv:2: node 'b' has two parents: 'a'" in msg
    msg = error_of(Hierarchy.from_nested, {"a": {"b": ["x"]}, "c": {"b": ["y"]}})
    assert "node 'b' has two parents: 'a' and 'c'" in msg


def test_cycle_names_the_nodes(tmp_path):
    path = write(tmp_path, "h.txt", "top a\na b\nb c\nc d\nd b\n")
    msg = error_of(Hierarchy.from_file, path)
    assert msg.startswith(f"{path}:") and "node 'b' has two parents" in msg
    path = write(tmp_path, "loop.txt", "a b\nb c\nc a\n")
    msg = error_of(Hierarchy.from_file, path)
    assert msg == f"{path}:3: cycle: 'a' -> 'b' -> 'c' -> 'a'"  # the line closing it
    assert "cycle: node 'x' is its own parent" in error_of(Hierarchy.from_edges, [("x", "x")])


def test_duplicate_leaf(tmp_path):
    path = write(tmp_path, "h.csv", "a,b,x\na,c,y\na,c,x\n")
    assert error_of(Hierarchy.from_file, path) == (
        f"{path}:3: duplicate leaf 'x' (also at {path}:1)"
    )
    assert "duplicate leaf 'x'" in error_of(Hierarchy.from_nested, {"a": ["x", "y", "x"]})
    path = write(tmp_path, "h.json", '{"a": {"x": null}, "b": {"x": []}}')
    assert error_of(Hierarchy.from_file, path) == f"{path}: duplicate leaf 'x' (at /b/x)"
    path = write(tmp_path, "dup.json", '{"a": ["x"], "a": ["y"]}')
    assert error_of(Hierarchy.from_file, path) == f"{path}: node 'a' appears twice in one mapping"
    path = write(tmp_path, "dup.yaml", "a: [x]\nb: [y]\na: [z]\n")
    assert error_of(Hierarchy.from_file, path) == (
        f"{path}:3: node 'a' appears twice in one mapping (first at line 1)"
    )


def test_leaf_that_also_has_children(tmp_path):
    path = write(tmp_path, "h.csv", "a,b\na,b,c\n")
    assert error_of(Hierarchy.from_file, path) == (
        f"{path}:2: 'b' has children here but is a leaf at {path}:1"
    )


def test_empty_trees(tmp_path):
    assert error_of(Hierarchy.from_file, write(tmp_path, "e.json", "  \n")).endswith(
        "e.json: empty hierarchy file"
    )
    assert error_of(Hierarchy.from_file, write(tmp_path, "c.txt", "# only\n\n")).endswith(
        "c.txt: empty hierarchy: no edges or leaves"
    )
    assert "empty hierarchy" in error_of(Hierarchy.from_nested, {})
    assert "empty hierarchy" in error_of(Hierarchy.from_edges, [])


def test_unreadable_files(tmp_path):
    missing = tmp_path / "nope.json"
    assert error_of(Hierarchy.from_file, missing) == f"{missing}: hierarchy file not found"
    assert error_of(Hierarchy.from_file, tmp_path) == (
        f"{tmp_path}: is a directory, not a hierarchy file"
    )
    binary = tmp_path / "h.csv"
    binary.write_bytes(b"a,b\n\xff\xfe\x00x")
    assert error_of(Hierarchy.from_file, binary).startswith(f"{binary}: not a UTF-8 text file")
    msg = error_of(Hierarchy.from_file, write(tmp_path, "h.json", "{}"), format="xml")
    assert "unknown hierarchy format 'xml'" in msg


def test_malformed_files_name_the_line(tmp_path):
    path = write(tmp_path, "h.json", '{\n  "a": ["x",\n  "b": 3\n}\n')
    assert error_of(Hierarchy.from_file, path).startswith(f"{path}:3: malformed JSON:")
    path = write(tmp_path, "h.yaml", "a:\n  - x\n b: [y\n")
    assert error_of(Hierarchy.from_file, path).startswith(f"{path}:3: malformed YAML:")
    path = write(tmp_path, "h.csv", "a,b,x\na,,y\n")
    assert error_of(Hierarchy.from_file, path).startswith(f"{path}:2: empty cell in row")
    path = write(tmp_path, "h.txt", "a b\na b c d\n")
    assert error_of(Hierarchy.from_file, path) == (
        f"{path}:2: expected 'parent child [weight]', got 4 fields: 'a b c d'"
    )
    path = write(tmp_path, "w.txt", "a b heavy\n")
    assert error_of(Hierarchy.from_file, path) == f"{path}:1: edge weight 'heavy' is not a number"
    path = write(tmp_path, "neg.txt", "a b\na c -1\n")
    assert error_of(Hierarchy.from_file, path).startswith(f"{path}:2: edge 'a' -> 'c' has weight")
    path = write(tmp_path, "list.json", '["a", "b"]')
    assert "expected a mapping of top-level nodes, got list" in error_of(Hierarchy.from_file, path)
    path = write(tmp_path, "num.yaml", "a:\n  b: 3\n")
    assert "node 'b' (at /a/b): expected a mapping, a list of leaf names or null, got int 3" in (
        error_of(Hierarchy.from_file, path)
    )


def test_dataset_classes_missing_from_the_tree():
    h = Hierarchy.from_nested(NESTED)
    h.check_classes(["lion", "canoe"])
    assert error_of(h.check_classes, ["lion", "zebra", "kayak"]) == (
        "class 'zebra', 'kayak' not found in the hierarchy"
    )
    assert error_of(h.check_classes, ["dog"]) == "'dog' is an inner node, not a leaf"
    many = [f"m{i}" for i in range(8)]
    assert error_of(h.check_classes, many).endswith("'m4' and 3 more not found in the hierarchy")
    assert "class 'zebra' not found" in error_of(Hierarchy.from_nested, NESTED, classes=["zebra"])
    assert "listed twice" in error_of(Hierarchy.from_nested, NESTED, classes=["lion", "lion"])


def test_file_errors_name_the_file_in_check_classes(tmp_path):
    path = write(tmp_path, "h.csv", "a,x\na,y\n")
    h = Hierarchy.from_file(path)
    assert error_of(h.check_classes, ["q"]) == f"{path}: class 'q' not found in the hierarchy"


def test_tree_distances_of_thousands_of_classes_are_built_in_row_blocks():
    # 2500 leaves: more than one block of rows (2**22 entries each)
    paths = [[f"g{c // 50}", f"c{c}"] for c in range(2500)]
    t = Hierarchy.from_paths(paths).tree_distances()
    group = torch.arange(2500) // 50
    expect = torch.where(group[:, None] == group[None, :], 2.0, 4.0)
    expect.fill_diagonal_(0)
    assert torch.equal(t, expect)


def test_nested_export_reads_back_as_the_same_tree():
    # leaves at different depths, a single-child chain, ids not grouped by subtree
    h = Hierarchy.from_paths(
        [["b", "b1", "x"], ["a", "a1", "y"], ["b", "b2", "z"], ["a", "w"], ["c", "c1", "c2", "v"]]
    )
    back = Hierarchy.from_nested(h.to_nested(), classes=h.leaves)
    assert back.leaves == h.leaves
    assert torch.equal(back.tree_distances(), h.tree_distances())
    assert h.to_nested() == {"b": {"b1": ["x"], "b2": ["z"]}, "a": {"a1": ["y"], "w": None},
                             "c": {"c1": {"c2": ["v"]}}}  # fmt: skip
    assert h.unit_weights
    weighted = Hierarchy.from_edges([("r", "p", 2.0), ("p", "x", 1.0), ("p", "y", 0.5)])
    assert not weighted.unit_weights
    lines = sorted(weighted.edge_list().splitlines())
    assert lines == ["p x 1", "p y 0.5", "r p 2"]


def test_rooting_returns_new_mappings_and_leaves_its_arguments_alone():
    from hierot.hierarchy.tree import VIRTUAL_ROOT, _rooted

    # two top-level nodes: a virtual root above them
    nodes = dict.fromkeys(["a", "b", "x", "y"])
    parent, weight = {"x": "a", "y": "b"}, {"x": 1.0, "y": 2.0}
    copies = (dict(nodes), dict(parent), dict(weight))
    root, new_nodes, new_parent, new_weight = _rooted(nodes, parent, weight)
    assert (nodes, parent, weight) == copies
    assert root == VIRTUAL_ROOT and list(new_nodes) == [VIRTUAL_ROOT, "a", "b", "x", "y"]
    assert new_parent == {"x": "a", "y": "b", "a": VIRTUAL_ROOT, "b": VIRTUAL_ROOT}
    assert new_weight == {"x": 1.0, "y": 2.0, "a": 1.0, "b": 1.0}
    # a virtual root above one concept with children (from paths): the concept is the root
    nodes = dict.fromkeys([VIRTUAL_ROOT, "animal", "cat", "dog"])
    parent = {"animal": VIRTUAL_ROOT, "cat": "animal", "dog": "animal"}
    weight = dict.fromkeys(parent, 1.0)
    copies = (dict(nodes), dict(parent), dict(weight))
    root, new_nodes, new_parent, new_weight = _rooted(nodes, parent, weight)
    assert (nodes, parent, weight) == copies
    assert root == "animal" and list(new_nodes) == ["animal", "cat", "dog"]
    assert new_parent == {"cat": "animal", "dog": "animal"} and set(new_weight) == {"cat", "dog"}
    # every node with a parent: a cycle, left for the depth pass to name
    assert _rooted(dict.fromkeys("ab"), {"a": "b", "b": "a"}, {"a": 1.0, "b": 1.0})[0] is None
