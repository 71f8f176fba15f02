"""Toy dataset generators: write the files under configs/data."""
