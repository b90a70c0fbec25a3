"""Who is calling: API keys (stored hashed, compared in constant time) and upload tokens."""
