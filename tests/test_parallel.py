"""Mesh axes, logical-axis sharding rules and the multi-host start-up (moelab.parallel)."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec

from moelab.errors import ConfigError
from moelab.model.hooks import constrain, layer_checkpoint
from moelab.parallel.distributed import resolve_args
from moelab.parallel.mesh import AXES, MeshShape, make_mesh, mesh_shape_of
from moelab.parallel.remat import use_remat
from moelab.parallel.rules import (
    ACTIVATION_RULES,
    PARAM_RULES,
    activation_sharding,
    local_shape,
    spec_entries,
)


# ---------------------------------------------------------------- mesh
def test_mesh_shape_parse_and_errors():
    m = MeshShape.parse("data=2, expert=4")
    assert m.as_tuple() == (2, 1, 4, 1) and m.size == 8 and m.batch_shards == 8
    assert str(m) == "data=2,expert=4"
    assert MeshShape.parse("fsdp=2,expert=2,tensor=2").batch_shards == 4
    for bad in ("data", "pipeline=2", "data=two", "data=0"):
        with pytest.raises(ConfigError):
            MeshShape.parse(bad)


def test_make_mesh_on_simulated_devices():
    assert len(jax.devices()) == 8, "tests/conftest.py must give 8 simulated CPU devices"
    mesh = make_mesh("fsdp=2,expert=2,tensor=2")
    assert mesh.axis_names == AXES and dict(mesh.shape) == {"data": 1, "fsdp": 2, "expert": 2, "tensor": 2}
    assert sorted(d.id for d in mesh.devices.flat) == list(range(8))
    assert mesh_shape_of(mesh) == MeshShape(fsdp=2, expert=2, tensor=2)
    assert make_mesh({"expert": 4}).devices.size == 4  # a sub-mesh of the first devices
    with pytest.raises(ConfigError, match="needs 16 devices"):
        make_mesh("data=16")


# ---------------------------------------------------------------- rules
SIZES = {"data": 2, "fsdp": 2, "expert": 4, "tensor": 2}


def test_rules_table_examples():
    # routed experts [experts, embed, mlp]: experts over expert, embed over fsdp (expert is taken), mlp tensor
    assert spec_entries((16, 64, 96), ("experts", "embed", "mlp"), SIZES, PARAM_RULES) == (
        "expert", "fsdp", "tensor")
    # a dense weight: embed over fsdp and expert (ZeRO-3 over every batch-like axis but data)
    assert spec_entries((64, 8, 16), ("embed", "heads", "head_dim"), SIZES, PARAM_RULES) == (
        ("fsdp", "expert"), "tensor", None)
    # router [embed, experts]: experts placed first even though it comes second
    assert spec_entries((64, 16), ("embed", "experts"), SIZES, PARAM_RULES) == ("fsdp", "expert")
    # divisibility: 3 KV heads cannot be split over tensor=2 -> replicated; 6 over fsdp*expert=8 -> fsdp only
    assert spec_entries((6, 3, 16), ("embed", "kv_heads", "head_dim"), SIZES, PARAM_RULES) == (
        "fsdp", None, None)
    assert spec_entries((7,), ("norm",), SIZES, PARAM_RULES) == (None,)
    # activations: the batch over data, fsdp and expert; logits' vocab over tensor
    assert spec_entries((16, 8, 32), ("batch", "seq", "vocab"), SIZES, ACTIVATION_RULES) == (
        ("data", "fsdp", "expert"), None, "tensor")
    with pytest.raises(ConfigError, match="unknown logical axis 'hidden'"):
        spec_entries((4,), ("hidden",), SIZES, PARAM_RULES)
    with pytest.raises(ConfigError, match="do not match"):
        spec_entries((4, 4), ("embed",), SIZES, PARAM_RULES)


NAMES = sorted(PARAM_RULES)


@settings(max_examples=60, deadline=None)
@given(
    dims=st.lists(st.sampled_from([1, 2, 3, 4, 6, 8, 12, 16, 80, 6400]), min_size=1, max_size=4),
    names=st.lists(st.sampled_from(NAMES), min_size=4, max_size=4),
    sizes=st.tuples(*[st.sampled_from([1, 2, 4, 8])] * 4),
)
def test_rules_give_valid_specs_matching_jax_shard_shape(dims, names, sizes):
    """Against JAX itself: the spec is accepted by NamedSharding (no axis twice, every dim divisible) and the
    local shape equals NamedSharding.shard_shape on an abstract mesh of that size."""
    names = names[: len(dims)]
    mesh_sizes = dict(zip(AXES, sizes, strict=True))
    entries = spec_entries(dims, names, mesh_sizes, PARAM_RULES)
    flat = [a for e in entries if e is not None for a in ((e,) if isinstance(e, str) else e)]
    assert len(flat) == len(set(flat))
    for e, n in zip(entries, names, strict=True):
        axes = () if e is None else (e,) if isinstance(e, str) else e
        assert set(axes) <= set(PARAM_RULES[n])
    mesh = AbstractMesh(sizes, AXES)
    expect = NamedSharding(mesh, PartitionSpec(*entries)).shard_shape(tuple(dims))
    assert local_shape(dims, names, mesh_sizes) == expect
    # nothing is left unsharded that an unused axis could divide (greedy but maximal per dimension)
    used = set(flat)
    for n, local in zip(names, expect, strict=True):
        for a in PARAM_RULES[n]:
            if a not in used and mesh_sizes[a] > 1:
                assert local % mesh_sizes[a] != 0


def test_the_model_constrain_hook_is_identity_without_mesh_and_shards_inside():
    x = np.arange(8 * 6, dtype=np.float32).reshape(8, 6)
    assert constrain(x, ("batch", "embed")) is x
    mesh = make_mesh("data=2,expert=4")

    @jax.jit
    def f(a):
        with activation_sharding(mesh):
            return constrain(a * 2, ("batch", "embed"))

    y = f(x)
    np.testing.assert_array_equal(np.asarray(y), x * 2)
    assert y.sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec(("data", "expert"), None)), 2)
    assert {s.data.shape for s in y.addressable_shards} == {(1, 6)}


# ---------------------------------------------------------------- distributed
def test_resolve_args_precedence_and_errors():
    env = {"MOELAB_COORDINATOR": "h0:1234", "MOELAB_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    a = resolve_args(env=env)
    assert (a.coordinator, a.num_processes, a.process_id) == ("h0:1234", 4, 3)
    assert resolve_args(process_id=1, env=env).process_id == 1
    assert resolve_args(env={}).kwargs() == {}  # TPU pods / SLURM: JAX discovers the cluster
    for kwargs, match in [
        ({"coordinator": "h0"}, "host:port"),
        ({"coordinator": "h0:1", "num_processes": 2}, "missing process_id"),
        ({"coordinator": "h0:1", "num_processes": 2, "process_id": 2}, "process_id"),
        ({"coordinator": "h0:1", "num_processes": 0, "process_id": 0}, "num_processes"),
    ]:
        with pytest.raises(ConfigError, match=match):
            resolve_args(env={}, **kwargs)
    with pytest.raises(ConfigError, match="MOELAB_NUM_PROCESSES must be an integer"):
        resolve_args(env={"MOELAB_NUM_PROCESSES": "x"})


WORKER = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax, jax.numpy as jnp
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from moelab.parallel.distributed import initialize_distributed
    initialize_distributed()  # coordinator, count and id from MOELAB_* variables
    from jax.experimental import multihost_utils
    from moelab.parallel.mesh import make_mesh
    mesh = make_mesh("data=2,fsdp=2")  # spans both processes
    x = jax.make_array_from_process_local_data(
        jax.sharding.NamedSharding(mesh, jax.P(("data", "fsdp"))), jnp.full((2,), jax.process_index() + 1.0))
    total = jax.jit(jnp.sum, out_shardings=jax.sharding.NamedSharding(mesh, jax.P()))(x)
    line = f"OK {jax.process_index()} {jax.process_count()} {jax.device_count()} {float(total)}"
    print(line, flush=True)
    if os.environ.get("WORKER_OUT"):
        with open(os.path.join(os.environ["WORKER_OUT"], f"{jax.process_index()}.txt"), "w") as f:
            f.write(line)
    jax.distributed.shutdown()
""")


def test_two_process_cluster_on_cpu(tmp_path):
    """A real two-process JAX cluster on this machine (gloo collectives): both join, see 4 devices, and a
    jitted reduction over a mesh spanning the two processes sums both processes' data."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = []
    for pid in range(2):
        env = dict(os.environ, MOELAB_COORDINATOR=f"localhost:{port}", MOELAB_NUM_PROCESSES="2",
                   MOELAB_PROCESS_ID=str(pid))
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-2000:]
        outs.append(next(line for line in out.splitlines() if line.startswith("OK")))
    # process 0 contributes 2 x 1.0, process 1 2 x 2.0
    assert sorted(outs) == [f"OK {i} 2 4 {math.fsum([1, 1, 2, 2])}" for i in range(2)]


# ---------------------------------------------------------------- remat
@pytest.mark.parametrize("policy", ["none", "minimal", "full"])
def test_layer_checkpoint_follows_the_context_and_keeps_gradients(policy):
    def layer(w, x):
        return jnp.tanh(x @ w) @ w.T

    def loss(w, x, wrap):
        f = wrap(layer)
        return jnp.sum(f(w, f(w, x)) ** 2)

    w = jax.random.normal(jax.random.key(0), (6, 6)) / 3
    x = jax.random.normal(jax.random.key(1), (4, 6))
    plain = jax.grad(loss)(w, x, lambda f: f)
    with use_remat(policy):
        g = jax.grad(loss)(w, x, layer_checkpoint)
        jaxpr = str(jax.make_jaxpr(jax.grad(loss), static_argnums=2)(w, x, layer_checkpoint))
    np.testing.assert_allclose(np.asarray(g), np.asarray(plain), rtol=1e-6, atol=1e-6)
    assert ("remat" in jaxpr or "checkpoint" in jaxpr) == (policy != "none")
    with pytest.raises(ConfigError, match="remat must be one of"), use_remat("sometimes"):
        pass


@pytest.mark.slow  # Ray start-up: ~8 s on an idle 2-core machine, ~30 s under load
def test_launch_on_ray_joins_one_jax_cluster(tmp_path):
    """The Ray launcher on a local Ray: two 'hosts' (SPREAD, no GPUs) each run the worker, which joins one
    JAX cluster through the MOELAB_* variables the launcher sets and reduces over both processes."""
    import ray

    from moelab.parallel.ray_launch import launch_on_ray

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING")
    try:
        codes = launch_on_ray([sys.executable, str(script)], hosts=2, gpus_per_host=0, strategy="SPREAD",
                              env={"WORKER_OUT": str(tmp_path)}, cwd=str(tmp_path), timeout_s=120)
    finally:
        ray.shutdown()
    assert codes == [0, 0]
    got = sorted((tmp_path / f"{i}.txt").read_text().split() for i in range(2))
    assert got == [["OK", str(i), "2", "4", "6.0"] for i in range(2)]
    with pytest.raises(ConfigError, match="strategy must be one of"):
        launch_on_ray(["true"], hosts=1, strategy="RANDOM")
