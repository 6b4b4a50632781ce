"""Inference engines other than PyTorch eager: the exported model as deployed."""
