"""Fixtures for real services: Mosquitto brokers, SQLite files, PostgreSQL clusters."""

pytest_plugins = ["tests.fixtures.services", "tests.fixtures.lazyfs"]
