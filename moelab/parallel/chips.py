"""Accelerator specifications used by the planner: HBM bytes and bf16 dense peak FLOP/s per chip.

Sources (vendor data sheets, read 2026-11):

- ``h100-80gb``: NVIDIA H100 SXM5 80 GB. "NVIDIA H100 Tensor Core GPU" datasheet: BF16 Tensor Core
  1,979 TFLOPS *with sparsity*, so 989.4 TFLOP/s dense; 80 GB HBM3.
- ``h200``: NVIDIA H200 SXM 141 GB. "NVIDIA H200 Tensor Core GPU" datasheet: same Hopper tensor cores as the
  H100 SXM (BF16 1,979 TFLOPS with sparsity -> 989.4 dense); 141 GB HBM3e.
- ``tpu-v5p``: Google Cloud TPU v5p. cloud.google.com/tpu/docs/v5p: peak compute per chip (bf16) 459 TFLOPS;
  HBM2e 95 GB.

Capacities are taken in decimal gigabytes as printed (the conservative reading). The planner keeps
``headroom`` (default 10%) of HBM free for XLA's scratch buffers, fragmentation and the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

from moelab.errors import ConfigError


@dataclass(frozen=True)
class Chip:
    name: str
    hbm_bytes: float
    peak_bf16_flops: float
    #: chips that share the fast interconnect domain (NVLink within a GPU host; ICI for TPU): the largest
    #: ``tensor`` axis the planner proposes.
    max_tensor: int
    source: str


CHIPS: dict[str, Chip] = {
    "h100-80gb": Chip("h100-80gb", 80e9, 989.4e12, 8, "NVIDIA H100 Tensor Core GPU datasheet (SXM5)"),
    "h200": Chip("h200", 141e9, 989.4e12, 8, "NVIDIA H200 Tensor Core GPU datasheet (SXM)"),
    "tpu-v5p": Chip("tpu-v5p", 95e9, 459e12, 8, "cloud.google.com/tpu/docs/v5p"),
}


def get_chip(name: str) -> Chip:
    try:
        return CHIPS[name]
    except KeyError:
        raise ConfigError(f"chip must be one of {'|'.join(CHIPS)}, got {name!r}") from None
