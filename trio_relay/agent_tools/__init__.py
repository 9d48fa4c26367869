"""The relay tools agents get through MCP (``trio-relay mcp``): their definitions
(:mod:`.tools`, no MCP SDK) and the server (:mod:`.server`, the only module that imports
the SDK). How each agent CLI is given the server is :mod:`trio_relay.profiles.mcp_config`."""
