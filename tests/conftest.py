"""Shared pytest setup. Fixtures that start servers live in the test modules that need them."""
