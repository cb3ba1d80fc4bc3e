"""Realistic synthetic multimodal brain subjects (T1w, FLAIR, mask, amyloid PET, FA, MD) on real MNI152 tissue maps."""

from custom_nets.datalist import split_subjects
from custom_nets.phantom.dataset import generate_dataset
from custom_nets.phantom.subject import MODALITIES, NOISE_FREE, target_suvr

__all__ = ["generate_dataset", "split_subjects", "MODALITIES", "NOISE_FREE", "target_suvr"]
