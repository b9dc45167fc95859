"""Text-to-image tests (a package, so that its conftest is `images.conftest` and does not shadow
the top-level `conftest` other tests import from)."""
