"""From an accepted request to a recorded result: admission, running, retries, recovery."""
