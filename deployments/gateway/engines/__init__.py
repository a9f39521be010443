"""The gateway's side of the engines: how it calls a tier (the relay to an engine replica's
own vLLM app, the Serve handle path, external endpoints), which replica, retries and
failover, and what it knows of each tier now (the board and the loops that keep it)."""
