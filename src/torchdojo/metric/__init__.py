"""Metric learning (MISSION E1-E4): triplets, miners, losses, collapse detection, separability probes,
feature maps and embedding projections, shared by the `metric-learning` experiment.
"""
