"""Data modules: a label tree plus train/val/test splits of (image, fine label)."""

from hierot.data.aircraft import AircraftDataModule
from hierot.data.breeds import BreedsDataModule
from hierot.data.cifar import Cifar10DataModule, Cifar100DataModule
from hierot.data.cub import CubDataModule
from hierot.data.folders import ImageFolderDataModule, INatDataModule
from hierot.data.mbm import BetterMistakesDataModule
from hierot.data.module import HierarchyDataModule
from hierot.data.synthetic import SyntheticDataModule, SyntheticSpec, synthetic_hierarchy

__all__ = [
    "AircraftDataModule",
    "BetterMistakesDataModule",
    "BreedsDataModule",
    "Cifar10DataModule",
    "Cifar100DataModule",
    "CubDataModule",
    "HierarchyDataModule",
    "INatDataModule",
    "ImageFolderDataModule",
    "SyntheticDataModule",
    "SyntheticSpec",
    "synthetic_hierarchy",
]
