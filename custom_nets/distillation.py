# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Knowledge distillation of a trained SC-GAN generator (the teacher) into a smaller one (the student).

The paper (Lan et al., MRM 2021) names computational cost as SC-GAN's main limitation and knowledge distillation as
future work. The student here learns, besides the ground truth and the adversarial terms of the bundle's trainer:

- the teacher's output (Hinton, Vinyals, Dean, "Distilling the knowledge in a neural network", 2015; for
  image-to-image GANs Aguinaldo et al., arXiv:1902.00159, 2019, and Li et al., "GAN Compression", CVPR 2020): an L1
  distance between the student's and the teacher's synthesis;
- the teacher's intermediate features, by attention transfer (Zagoruyko and Komodakis, "Paying more attention to
  attention", ICLR 2017): at the output of every decoder level, the spatial map of channel-averaged squared activations,
  L2-normalised per sample, of the student is pulled towards the teacher's. The map has no channel axis, so a narrow
  student matches a wide teacher without the learned 1×1 adapters of GAN Compression (nothing to optimise, checkpoint
  or synchronise across DDP ranks besides the student itself).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from custom_nets.io import read_checkpoint

__all__ = ["GeneratorDistillation", "attention_map", "load_teacher"]


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Attention transfer's spatial map (Zagoruyko and Komodakis 2017): ``mean_c(f²)`` flattened and L2-normalised.

    Shapes: ``features`` ``(B, C, *spatial)`` → ``(B, prod(spatial))``, float32.
    """
    energy = features.float().pow(2).mean(dim=1).flatten(1)
    return F.normalize(energy, dim=1)


def load_teacher(teacher: nn.Module, path: str | Path) -> nn.Module:
    """Load a trained generator's weights into ``teacher`` (built as it was trained, with ``fold_spectral_norm=True``:
    the deployed ``models/model.pt`` and the final weights are folded state dicts) and freeze it in eval mode.

    Raises:
        FileNotFoundError, ValueError: ``path`` is missing or unreadable (``custom_nets.io.read_checkpoint``), or its
            weights do not fit ``teacher`` (the message names the file and the settings to check).
    """
    state = read_checkpoint(path)
    if isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]  # a checkpoint saver's dict with the network under "model"
    try:
        teacher.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[1:2] or str(error).strip().splitlines()[:1]
        raise ValueError(
            f"teacher_weights {path} do not fit the teacher network ({first[0].strip()[:300]}); set teacher_preset "
            "and the shared ids (input_keys, per_voxel_prior, residual_on_prior, attention, spectral_norm, "
            "local_attention_sites) to those the teacher was trained with."
        ) from None
    return teacher.eval().requires_grad_(False)


def _decoder(network: nn.Module) -> nn.ModuleList:
    """The decoder layers of an ``SCGANGenerator``, a DDP or ``SliceWise`` wrapper removed."""
    while not hasattr(network, "decoder"):
        inner = getattr(network, "module", None) or getattr(network, "network", None)
        if inner is None:
            raise ValueError(f"{type(network).__name__} is not an SCGANGenerator (no decoder layers to distil).")
        network = inner
    return network.decoder


class GeneratorDistillation(nn.Module):
    """Distillation terms for a student generator: output L1 to the frozen teacher and attention transfer at every
    decoder level (see the module docstring for the sources).

    Call it after the student's forward pass on ``inputs``: forward hooks on the student's decoder layers keep their
    latest outputs (only for the student module itself: a deep copy such as the weight average records nothing), the
    teacher runs on the same ``inputs`` without gradients, and the two terms come back as float32 scalars.

    Args:
        teacher: the trained generator, frozen (``load_teacher``); same depth and strides as the student.
        student: the generator being trained (may be DDP- or ``SliceWise``-wrapped).

    Shapes: ``inputs`` ``(B, C_in, *patch)``; ``student_output`` ``(B, C_out, *patch)``.

    Raises:
        ValueError: the two generators' decoders differ in depth (their feature maps would not align).
    """

    def __init__(self, teacher: nn.Module, student: nn.Module) -> None:
        super().__init__()
        teacher_layers, student_layers = _decoder(teacher), _decoder(student)
        if len(teacher_layers) != len(student_layers):
            raise ValueError(
                f"teacher and student must have the same depth for feature distillation, got {len(teacher_layers)} "
                f"and {len(student_layers)} levels (give the student preset the teacher's number of channels entries)."
            )
        self.teacher = teacher.eval().requires_grad_(False)
        self._student_features: dict[int, torch.Tensor] = {}
        self._teacher_features: dict[int, torch.Tensor] = {}
        for index, (t_layer, s_layer) in enumerate(zip(teacher_layers, student_layers)):
            t_layer.register_forward_hook(self._recorder(self._teacher_features, index, t_layer))
            s_layer.register_forward_hook(self._recorder(self._student_features, index, s_layer))
        self.levels = len(student_layers)

    @staticmethod
    def _recorder(store: dict[int, torch.Tensor], index: int, owner: nn.Module):
        # a closure, not a bound method: deep copies of the network (the EMA) copy the hook but not this object; the
        # identity check makes the copy's hook a no-op
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if module is owner:
                store[index] = output

        return hook

    def train(self, mode: bool = True) -> GeneratorDistillation:
        super().train(mode)
        self.teacher.eval()  # the teacher is always in inference mode (no dropout, folded weights)
        return self

    def forward(self, inputs: torch.Tensor, student_output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(output_l1, feature_loss)``: mean |student − teacher| over the output, and the mean over decoder
        levels of the squared L2 distance between the attention maps (each in [0, 4])."""
        if len(self._student_features) != self.levels:
            raise RuntimeError("run the student on the batch before calling the distillation (no student features).")
        student_features = [self._student_features[i] for i in range(self.levels)]
        self._student_features.clear()
        with torch.no_grad():
            teacher_output = self.teacher(inputs).float()
            teacher_maps = [attention_map(self._teacher_features[i]) for i in range(self.levels)]
        self._teacher_features.clear()
        output_l1 = torch.mean(torch.abs(student_output.float() - teacher_output))
        distances = [(attention_map(s) - t).pow(2).sum(dim=1).mean() for s, t in zip(student_features, teacher_maps)]
        return output_l1, torch.stack(distances).mean()
