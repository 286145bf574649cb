"""Deterministic generators of the misuse harness's inputs (bench/misuse.py): bad input files, crafted model /
index / checkpoint files and pickle payloads. Nothing here runs deepsem; nothing here holds data."""
