"""Flower FedAvg on digits in the style of Flower's quickstart-pytorch example (benchmark peer)."""
