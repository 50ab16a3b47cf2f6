"""Boards over SSH: inventory (boards.py), transport (ssh.py), verified deploys (deploy.py)."""

from edgecls.remote.ssh import RemoteError, SshHost, UploadResult

__all__ = ["RemoteError", "SshHost", "UploadResult"]
