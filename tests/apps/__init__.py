"""Flask apps that mount the endpoint, as the teams adopting it write them."""
