"""What an operator sees: traces (`telemetry`), Prometheus metrics (`metrics`), logs (`logs`)."""
