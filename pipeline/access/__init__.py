"""Who may call the HTTP API, and what each caller may see."""
