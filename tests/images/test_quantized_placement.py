"""Placement of FLUX.1-dev with `quantize`: the blocks' projections count in the format's bytes,
the embedders, conditioning and output layers in the dtype's, so a transformer that needs two
16 GB GPUs in bfloat16 fits on one in int8 or int4; `tandem place DIR --topology` shows it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tandem.bench.image_shapes import IMAGE_SHAPES
from tandem.cluster.placement import Placement, PlacementRequest, place
from tandem.model.image_shapes import image_model_shape
from topologies import cluster, gpu, node

DIM, MLP = 3072, 12288
# every projection of FLUX.1-dev's 19 double-stream blocks (modulations of both streams, q/k/v
# and out of both, two feed-forwards) and 38 single-stream blocks (modulation, q/k/v, MLP in, out)
LINEAR = 19 * (2 * 6 * DIM * DIM + 2 * 4 * DIM * DIM + 2 * 8 * DIM * DIM) + 38 * (
    3 * DIM * DIM + 3 * DIM * DIM + DIM * MLP + (DIM + MLP) * DIM
)


def request(**options) -> PlacementRequest:
    return PlacementRequest(
        context_length=1, num_sequences=1, memory_margin=0, device_overhead_bytes=0, **options
    )


def test_flux_dev_quantized_counts_packed_blocks_and_dense_ends():
    shape = image_model_shape(IMAGE_SHAPES["flux-dev"].config()).as_model_shape()
    total = shape.total_parameter_count()
    assert 0.95 * total < LINEAR < total
    big = cluster(node("a", gpu(64)))
    held = {}
    for mode in (None, "int8", "int4"):
        result = place(shape, big, request(quantize=mode))
        assert isinstance(result, Placement), result.reason
        held[mode] = result.stages[0].weight_bytes
        if mode == "int4":
            assert result.explain()[1] == "weights: int4 (groups of 128, asymmetric), quantized at load"
    assert held[None] == pytest.approx(2 * total)
    assert held["int8"] == pytest.approx(LINEAR * (1 + 2 / DIM) + (total - LINEAR) * 2)
    assert held["int4"] == pytest.approx(LINEAR * (0.5 + 3 / 128) + (total - LINEAR) * 2)

    two_small = cluster(node("a", gpu(16)), node("b", gpu(16)))
    dense = place(shape, two_small, request())
    int4 = place(shape, two_small, request(quantize="int4"))
    assert isinstance(dense, Placement) and isinstance(int4, Placement)
    assert len(dense.stages) == 2 and len(int4.stages) == 1
    assert int4.stages[0].weight_bytes < 0.3 * sum(stage.weight_bytes for stage in dense.stages)


def write_flux_dev_configs(directory, transformer_extra=None):
    """FLUX.1-dev's configs in diffusers' layout, without weights (what placement reads)."""
    shape = IMAGE_SHAPES["flux-dev"]
    for part in (
        "transformer",
        "vae",
        "scheduler",
        "text_encoder",
        "tokenizer",
        "text_encoder_2",
        "tokenizer_2",
    ):
        (directory / part).mkdir(parents=True, exist_ok=True)
    (directory / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    transformer = {"_class_name": "FluxTransformer2DModel", **shape.transformer, "torch_dtype": "bfloat16"}
    (directory / "transformer" / "config.json").write_text(
        json.dumps({**transformer, **(transformer_extra or {})})
    )
    (directory / "vae" / "config.json").write_text(json.dumps(shape.vae))
    (directory / "scheduler" / "scheduler_config.json").write_text(json.dumps(shape.scheduler))
    return directory


def write_topology(path):
    device = {
        "kind": "cuda",
        "index": 0,
        "name": "16 GB GPU",
        "memory_total_gb": 16,
        "memory_free_gb": 15.5,
        "memory_bandwidth_gb_per_s": 700,
        "matmul_tflops": 90,
    }
    nodes = [
        {"id": name, "name": name, "address": f"127.0.0.{index + 1}:52415", "devices": [device]}
        for index, name in enumerate(("a", "b"))
    ]
    path.write_text(json.dumps({"nodes": nodes, "links": []}))
    return path


def tandem_place(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "tandem.cli.main", "place", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_tandem_place_shows_the_smaller_stages(tmp_path):
    model = write_flux_dev_configs(tmp_path / "FLUX.1-dev")
    topology = write_topology(tmp_path / "two-gpus.json")
    dense = tandem_place(str(model), "--topology", str(topology))
    int4 = tandem_place(str(model), "--topology", str(topology), "--quantize", "int4")
    assert dense.returncode == 0 and int4.returncode == 0, dense.stderr + int4.stderr
    assert dense.stdout.startswith("FLUX.1-dev: 2 stages")
    assert int4.stdout.startswith("FLUX.1-dev: 1 stage ")
    assert "weights: int4 (groups of 128, asymmetric), quantized at load\n" in int4.stdout
    assert "compute-bound steps at 1024x1024" in int4.stdout

    stored = write_flux_dev_configs(
        tmp_path / "stored", {"quantization_config": {"quant_method": "bitsandbytes"}}
    )
    refused = tandem_place(str(stored), "--topology", str(topology), "--quantize", "int8")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [
        "tandem: error: quantize int8: this checkpoint's transformer is already quantized "
        "(bitsandbytes); quantize applies to 16- and 32-bit checkpoints"
    ]
