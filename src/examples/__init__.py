"""Runnable examples: a model small enough to train on a CPU in seconds, to see the data path work."""
