"""Backbones (timm), learning-rate schedules and the training module."""

from hierot.models.backbones import create_backbone, list_stems, register_stem
from hierot.models.module import HierarchyModule

__all__ = ["HierarchyModule", "create_backbone", "list_stems", "register_stem"]
