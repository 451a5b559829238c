"""Test doubles that run the real code paths: a local server speaking the Anthropic Messages API."""
