"""The gateway's metrics: every metric declared once, and the recorders."""
