"""Label trees: build, read, validate, and derive level maps and tree distances."""

from hierot.hierarchy.edge import Edge
from hierot.hierarchy.files import detect_format
from hierot.hierarchy.tree import Hierarchy, HierarchyError, read_hierarchy

__all__ = ["Edge", "Hierarchy", "HierarchyError", "detect_format", "read_hierarchy"]
