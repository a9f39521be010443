"""Per-tenant quotas: the service, its ledger of rolling windows, and where they persist."""
