"""Realistic synthetic multimodal brain subjects (T1w, FLAIR, mask, amyloid PET, FA, MD) on real MNI152 tissue maps."""

from custom_nets.data import split_subjects
from custom_nets.datasets.phantom.dataset import generate_dataset, synthetic_datalist
from custom_nets.datasets.phantom.subject import MODALITIES, NOISE_FREE, target_suvr

__all__ = ["generate_dataset", "synthetic_datalist", "split_subjects", "MODALITIES", "NOISE_FREE", "target_suvr"]
