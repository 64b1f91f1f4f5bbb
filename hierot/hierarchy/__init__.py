"""Label trees: build, read, validate, and derive level maps and tree distances."""

from hierot.hierarchy.files import detect_format, read_hierarchy
from hierot.hierarchy.tree import Edge, Hierarchy, HierarchyError

__all__ = ["Edge", "Hierarchy", "HierarchyError", "detect_format", "read_hierarchy"]
