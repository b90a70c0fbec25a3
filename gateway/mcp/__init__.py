"""The MCP front door: the gateway's tools for AI agents over the Model Context Protocol.

``/mcp`` (streamable HTTP, mounted into the app) serves them in-process on the one invoke
path; ``jobgate mcp`` serves the same tools over stdio by forwarding to a gateway's /mcp."""
