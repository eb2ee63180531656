"""Deployment artefacts beyond one machine: Kubernetes manifests and a container image recipe.

``nercc deploy k8s`` (:mod:`nercc.deploy.k8s`) writes them; nothing here talks to a cluster.
"""
