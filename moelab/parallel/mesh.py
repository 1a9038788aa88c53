"""Device meshes with the four named axes of moelab: ``data``, ``fsdp``, ``expert``, ``tensor``.

- ``data``: pure data parallelism (parameters replicated, gradients all-reduced).
- ``fsdp``: fully-sharded data parallelism (ZeRO-3): the batch is split over it *and* parameters, gradients
  and optimiser states are sharded over it; weights are all-gathered layer by layer.
- ``expert``: expert parallelism: routed experts are split over it; outside the MoE layers it acts as a
  further batch axis (GShard, Lepikhin et al. 2020), and dense weights are sharded over it like ``fsdp``.
- ``tensor``: Megatron tensor parallelism (Shoeybi et al. 2019): heads, feed-forward width and vocabulary
  split.

The axes are always present in this order (size 1 when unused), so every PartitionSpec in moelab can name any
of them. The order puts ``tensor`` last: ``mesh_utils.create_device_mesh`` maps the last axes to the closest
devices (the NVLink domain of a GPU host, neighbouring TPU chips), where tensor parallelism's frequent
all-reduces belong.

Example::

    >>> shape = MeshShape.parse("data=2,expert=4")
    >>> shape.size, shape.as_tuple()
    (8, (2, 1, 4, 1))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import jax
import numpy as np
from jax.experimental import mesh_utils

from moelab.errors import ConfigError, is_int

AXES: tuple[str, ...] = ("data", "fsdp", "expert", "tensor")


@dataclass(frozen=True)
class MeshShape:
    """Sizes of the four mesh axes; their product is the number of devices."""

    data: int = 1
    fsdp: int = 1
    expert: int = 1
    tensor: int = 1

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (is_int(value) and value >= 1):
                raise ConfigError(f"mesh axis {f.name} must be an integer >= 1, got {value!r}")

    @property
    def size(self) -> int:
        return math.prod(self.as_tuple())

    @property
    def batch_shards(self) -> int:
        """How many ways the batch is split: every axis but ``tensor``."""
        return self.data * self.fsdp * self.expert

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(getattr(self, a) for a in AXES)

    def as_dict(self) -> dict[str, int]:
        return {a: getattr(self, a) for a in AXES}

    def __str__(self) -> str:
        used = [f"{a}={getattr(self, a)}" for a in AXES if getattr(self, a) > 1]
        return ",".join(used) if used else "data=1"

    @classmethod
    def parse(cls, text: str) -> MeshShape:
        """``"data=2,expert=4"`` -> MeshShape(data=2, expert=4). Axes left out have size 1."""
        sizes: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in str(text).split(","))):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or name not in AXES:
                raise ConfigError(
                    f"mesh must look like 'data=2,expert=4' with axes {'|'.join(AXES)}, got {text!r}"
                )
            try:
                sizes[name] = int(value)
            except ValueError:
                msg = f"mesh axis {name} must be an integer >= 1, got {value.strip()!r}"
                raise ConfigError(msg) from None
        return cls(**sizes)


def make_mesh(shape: MeshShape | str | dict[str, int], devices: list | None = None) -> jax.sharding.Mesh:
    """A ``jax.sharding.Mesh`` with axes ``AXES`` of the given sizes.

    ``devices`` defaults to ``jax.devices()``; the mesh uses the first ``shape.size`` of them (an error names
    both numbers when there are too few). Multi-device topologies go through ``mesh_utils.create_device_mesh``
    (which knows TPU tori and GPU NVLink domains); if it cannot place the shape, devices are taken in order.
    """
    if isinstance(shape, str):
        shape = MeshShape.parse(shape)
    elif isinstance(shape, dict):
        shape = MeshShape(**shape)
    all_devices = list(jax.devices() if devices is None else devices)
    if shape.size > len(all_devices):
        raise ConfigError(f"mesh {shape} needs {shape.size} devices, only {len(all_devices)} available")
    chosen = all_devices[: shape.size]
    try:
        grid = mesh_utils.create_device_mesh(shape.as_tuple(), devices=chosen, allow_split_physical_axes=True)
    except (ValueError, AssertionError, NotImplementedError):
        grid = np.asarray(chosen, dtype=object).reshape(shape.as_tuple())
    return jax.sharding.Mesh(grid, AXES)


def mesh_shape_of(mesh: jax.sharding.Mesh) -> MeshShape:
    """The MeshShape of a mesh built by ``make_mesh`` (axes other than AXES are rejected)."""
    sizes = dict(mesh.shape)
    unknown = set(sizes) - set(AXES)
    if unknown:
        raise ConfigError(f"mesh axes must be among {'|'.join(AXES)}, got {', '.join(sorted(unknown))}")
    return MeshShape(**sizes)
