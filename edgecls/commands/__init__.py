"""click commands that live in their own modules (registered in edgecls.cli)."""
