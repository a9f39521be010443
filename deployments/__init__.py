"""Ray Serve deployments: one vLLM engine deployment per tier, and the gateway ingress."""
