"""How the server is installed and run: scripts, CLI, compose, nginx, Redis deployments, README."""
