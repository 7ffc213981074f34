"""Triton kernels of semask, installed as ``semask.kernels``."""
