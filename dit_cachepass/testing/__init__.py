"""Tiny real diffusers models with random weights, for tests and demos."""
