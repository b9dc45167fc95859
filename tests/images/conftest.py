"""Fixtures: tiny random FLUX.1 checkpoints (dev and schnell), built once per session, and the
diffusers FluxPipeline on each as the reference."""

from __future__ import annotations

import pytest

from images.tiny_flux import VARIANTS, TinyFlux, build_tiny_flux


@pytest.fixture(scope="session")
def tiny_flux_factory(tmp_path_factory):
    cache: dict[str, TinyFlux] = {}

    def make(variant: str) -> TinyFlux:
        if variant not in cache:
            cache[variant] = build_tiny_flux(tmp_path_factory.mktemp(f"flux-{variant}"), variant)
        return cache[variant]

    return make


@pytest.fixture(params=VARIANTS)
def variant(request) -> str:
    return request.param
