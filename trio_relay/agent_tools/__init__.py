"""The relay tools agents get through MCP (``trio-relay mcp``) and the configuration that
gives them to an agent CLI. Only :mod:`.server` imports the MCP SDK."""
