"""The queries behind ops monitoring and billing."""
