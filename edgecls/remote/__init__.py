"""Boards over SSH: inventory (boards.py), transport (ssh.py, its file transfer in transfer.py),
verified deploys (deploy.py)."""

from edgecls.errors import RemoteError
from edgecls.remote.ssh import SshHost
from edgecls.remote.transfer import UploadResult

__all__ = ["RemoteError", "SshHost", "UploadResult"]
