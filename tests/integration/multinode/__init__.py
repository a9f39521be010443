"""Simulated multi-node Ray clusters (ray.cluster_utils.Cluster) with fake GPU resources."""
