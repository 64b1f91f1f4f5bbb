"""Data modules: a label tree plus train/val/test splits of (image, fine label)."""

from hierot.data.module import HierarchyDataModule
from hierot.data.synthetic import SyntheticDataModule, SyntheticSpec, synthetic_hierarchy

__all__ = ["HierarchyDataModule", "SyntheticDataModule", "SyntheticSpec", "synthetic_hierarchy"]
