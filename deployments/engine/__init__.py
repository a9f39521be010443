"""The tier engine deployment: Ray Serve LLM's `LLMServer` per tier, its relay door (vLLM's
own OpenAI app on a port of the replica's node, paced), LoRA adapters and autoscaling."""
