"""Faults against real servers: killed and stopped processes, hostile and idle clients, restarts."""
