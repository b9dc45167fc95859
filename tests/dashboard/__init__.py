"""End-to-end tests of the web dashboard (a package, so its conftest does not shadow tests/conftest.py)."""
