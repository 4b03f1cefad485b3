"""Reduction steps that read inputs, call the pure science core and write products."""
