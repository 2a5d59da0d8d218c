"""MANN's LSTM-only baseline (Santoro et al. 2016, "LSTM" in Table 1 and Figure 2): the
same controller and inputs as MANN (methods/mann.py), the image and the previous step's
label, without the external memory, so the memory's contribution is measured."""

from __future__ import annotations

from typing import Any

from hypermeta.methods import register
from hypermeta.methods.base import MethodSpec
from hypermeta.methods.mann import MANN, ControllerConfig


def build(config: ControllerConfig, data_info: dict[str, Any]) -> MANN:
    return MANN(config, data_info["image_shape"], memory=False)


def describe(config: ControllerConfig) -> str:
    return (
        f"MANN's LSTM baseline: the same controller ({config.controller} units, images "
        f"downscaled to {config.image_size}×{config.image_size}) without the memory."
    )


register(
    MethodSpec(
        name="mann_lstm",
        kind="fewshot",
        model_config=ControllerConfig,
        build=build,
        summary="MANN's LSTM baseline: its controller over labelled sequences, no memory",
        describe=describe,
    )
)
